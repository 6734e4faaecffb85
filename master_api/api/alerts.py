"""``/alerts``: active and resolved alerts (raised by the leader's monitor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint

from master_api.api import shapes
from master_api.api.common import limit_field, offset_field
from master_api.api.routing import Reply, api_route
from master_api.api.schema import Field, Schema
from master_api.extensions import repos
from master_api.models import ALERT_NAMES

__all__ = ["bp"]

bp = Blueprint("alerts", __name__)


@dataclass(frozen=True, slots=True)
class AlertQuery:
    status: str | None = None
    name: str | None = None
    node_id: str | None = None
    limit: int = 50
    offset: int = 0


ALERT_QUERY = Schema(
    "AlertQuery",
    [
        Field(
            "status", "string", "active or resolved (default: both)", enum=("active", "resolved")
        ),
        Field("name", "string", enum=ALERT_NAMES),
        Field("node_id", "string", max_length=64),
        limit_field(),
        offset_field(),
    ],
    AlertQuery,
)


@api_route(
    bp,
    "/alerts",
    "GET",
    summary="Alerts, newest first",
    access="viewer",
    query=ALERT_QUERY,
    replies=[Reply(200, "Alerts", shapes.list_of(shapes.ALERT))],
)
def list_alerts(query: AlertQuery) -> Any:
    alerts = repos().alerts.find(
        status=query.status,
        name=query.name,
        node_id=query.node_id,
        limit=query.limit,
        offset=query.offset,
    )
    return {"items": [a.to_json() for a in alerts], "count": len(alerts)}
