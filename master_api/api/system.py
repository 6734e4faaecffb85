"""Health, readiness, metrics, the OpenAPI document, the cluster view and the audit log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app

from master_api.api import shapes
from master_api.api.common import limit_field, offset_field
from master_api.api.openapi import build_document
from master_api.api.routing import Reply, api_route
from master_api.api.schema import Field, Schema
from master_api.extensions import repos, settings
from master_api.leader import LEASE_NAME
from master_api.metrics import CONTENT_TYPE, MasterMetrics
from master_api.models import iso

__all__ = ["bp"]

bp = Blueprint("system", __name__)


def _leader_state() -> tuple[bool, str | None]:
    """(is this process the leader, its member id) -- (False, None) without an elector."""
    elector = current_app.extensions.get("aicdn_elector")
    if elector is None:
        return False, None
    return bool(elector.is_leader), str(elector.member_id)


@api_route(
    bp,
    "/healthz",
    "GET",
    summary="Liveness: the process serves requests",
    access="public",
    managed=False,
    replies=[Reply(200, "Alive", shapes.HEALTH)],
)
def healthz() -> Any:
    return {"status": "ok"}


@api_route(
    bp,
    "/readyz",
    "GET",
    summary="Readiness: the database answers",
    access="public",
    managed=False,
    replies=[Reply(200, "Ready", shapes.READY)],
)
def readyz() -> Any:
    repos().ping()  # 503 with the store's message when it does not answer
    return {"status": "ready", "store": "ok", "leader": _leader_state()[0]}


@api_route(
    bp,
    "/metrics",
    "GET",
    summary="Prometheus metrics",
    access="public",
    managed=False,
    replies=[Reply(200, "Prometheus text format", {"type": "string"}, media_type=CONTENT_TYPE)],
)
def metrics() -> Any:
    return Response(
        MasterMetrics.get(current_app).render(), mimetype=None, content_type=CONTENT_TYPE
    )


@api_route(
    bp,
    "/openapi.json",
    "GET",
    summary="This API's OpenAPI 3.1 document",
    access="public",
    replies=[Reply(200, "OpenAPI document", {"type": "object"})],
)
def openapi() -> Any:
    return build_document()


@api_route(
    bp,
    "/cluster",
    "GET",
    summary="Masters taking part in the election, and the leader",
    access="viewer",
    replies=[Reply(200, "Cluster view", shapes.CLUSTER)],
)
def cluster() -> Any:
    conf = settings()
    now = time.time()
    lease = repos().leaders.get(LEASE_NAME)
    leader = lease.holder if lease is not None and lease.expires_at > now else None
    members = repos().election_members.find(now - 3 * conf.leader_ttl)
    return {
        "leader": leader,
        "lease_expires_at": iso(lease.expires_at) if leader and lease else None,
        "self": _leader_state()[1] or "",
        "members": [m.to_json(leader) for m in members],
    }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor: str | None = None
    limit: int = 50
    offset: int = 0


AUDIT_QUERY = Schema(
    "AuditQuery",
    [Field("actor", "string", max_length=64), limit_field(), offset_field()],
    AuditQuery,
)


@api_route(
    bp,
    "/audit",
    "GET",
    summary="The audit log of mutating calls, newest first",
    access="admin",
    query=AUDIT_QUERY,
    replies=[Reply(200, "Entries", shapes.list_of(shapes.AUDIT_ENTRY))],
)
def audit(query: AuditQuery) -> Any:
    entries = repos().audit_log.find(actor=query.actor, limit=query.limit, offset=query.offset)
    return {"items": [e.to_json() for e in entries], "count": len(entries)}
