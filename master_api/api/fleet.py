"""``/autoscale``: the autoscaler's groups (as the store shows them now) and its decisions with
their reasons, newest first. Any master answers (decisions live in the store)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from master_api.api import shapes
from master_api.api.routing import Reply, api_route
from master_api.extensions import repos, settings
from master_api.repos import NodeFilter
from master_api.services.autoscale import bounds_for

__all__ = ["bp"]

bp = Blueprint("fleet", __name__)


@api_route(
    bp,
    "/autoscale",
    "GET",
    summary="Autoscale groups (active and standby nodes, load, bounds) and recent decisions",
    access="viewer",
    replies=[Reply(200, "Autoscale view", shapes.AUTOSCALE)],
)
def autoscale() -> Any:
    conf = settings()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for node in repos().nodes.find(NodeFilter()):
        group = groups.setdefault(
            (node.type, node.region),
            {"node_type": node.type, "region": node.region, "active": 0, "standby": 0,
             "draining": 0, "connections": 0},
        )  # fmt: skip
        if node.status in ("online", "degraded"):
            group["active"] += 1
            group["connections"] += (node.metrics.connections or 0) if node.metrics else 0
        elif node.status in ("standby", "draining"):
            group[node.status] += 1
    items = []
    for (node_type, region), group in sorted(groups.items()):
        bounds = bounds_for(conf, node_type, region)
        active = group["active"]
        items.append(
            {
                "node_type": node_type,
                "region": region,
                "active": active,
                "standby": group["standby"],
                "draining": group["draining"],
                "min_active": bounds.minimum,
                "max_active": bounds.maximum,
                "connections_per_node": group["connections"] / active if active else 0.0,
            }
        )
    decisions = repos().autoscale_decisions.find(limit=50)
    return {
        "enabled": conf.autoscale_enabled,
        "groups": items,
        "decisions": [d.to_json() for d in decisions],
    }
