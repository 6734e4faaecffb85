"""``nodes``: the fleet inventory. ``_id`` is a string id; names are unique."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from master_api.models import Node, NodeMetrics
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["NodeFilter", "NodesRepo"]

_CONFLICT = "a node with this name already exists"


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """List filters; None means "any". ``tags``: nodes carrying all of them."""

    type: str | None = None
    region: str | None = None
    status: str | None = None
    tags: tuple[str, ...] = ()

    def query(self) -> Document:
        clauses: list[Document] = []
        for name in ("type", "region", "status"):
            value = getattr(self, name)
            if value is not None:
                clauses.append({name: value})
        if self.tags:
            clauses.append({"tags": {"$all": list(self.tags)}})
        return all_of(*clauses)


class NodesRepo(BaseRepo):
    collection_name = "nodes"
    indexes = (
        IndexSpec(("name", 1), unique=True),
        IndexSpec(("type", 1), ("region", 1)),
        IndexSpec(("status", 1)),
        IndexSpec(("last_seen", 1)),
    )

    @db_call(conflict=_CONFLICT)
    def create(self, node: Node) -> None:
        """Insert ``node``; 409 when its name is taken."""
        self.collection.insert_one(
            {
                "_id": node.id,
                "name": node.name,
                "type": node.type,
                "region": node.region,
                "addr": node.addr,
                "port": node.port,
                "tags": list(node.tags),
                "metadata": dict(node.metadata),
                "status": node.status,
                "token_hash": node.token_hash,
                "created_at": node.created_at,
                "updated_at": node.updated_at,
                "last_seen": None,
                "applied_version": None,
                "metrics": None,
            }
        )

    @db_call()
    def get(self, node_id: str) -> Node | None:
        doc = self.collection.find_one({"_id": node_id})
        return _node(doc) if doc else None

    @db_call()
    def find(self, where: NodeFilter, limit: int = 0, offset: int = 0) -> list[Node]:
        """Nodes matching ``where`` by name; ``limit`` 0 means all."""
        cursor = self.collection.find(where.query()).sort("name", 1).skip(offset)
        if limit:
            cursor = cursor.limit(limit)
        return [_node(doc) for doc in cursor]

    @db_call()
    def count(self, where: NodeFilter) -> int:
        return self.collection.count_documents(where.query())

    @db_call()
    def count_by_status(self) -> dict[str, int]:
        """Number of nodes per status (computed here: aggregation is limited on nx-27017)."""
        counts: dict[str, int] = {}
        for doc in self.collection.find({}, {"status": 1}):
            status = str(doc.get("status"))
            counts[status] = counts.get(status, 0) + 1
        return counts

    @db_call(conflict=_CONFLICT)
    def update(self, node_id: str, changes: Mapping[str, Any], now: float) -> Node | None:
        """Apply field ``changes`` (already validated); the updated node, or None if missing."""
        values = {key: list(v) if isinstance(v, tuple) else v for key, v in changes.items()}
        result = self.collection.update_one(
            {"_id": node_id}, {"$set": {**values, "updated_at": now}}
        )
        if result.matched_count == 0:
            return None
        return self.get(node_id)

    @db_call()
    def delete(self, node_id: str) -> bool:
        return self.collection.delete_one({"_id": node_id}).deleted_count == 1

    @db_call()
    def record_heartbeat(
        self, node_id: str, now: float, metrics: NodeMetrics, applied_version: int | None
    ) -> bool:
        """Store a heartbeat: ``last_seen``, metrics, applied version; an offline node comes
        back online (degraded stays degraded until the leader's next check clears it)."""
        changes: Document = {"last_seen": now, "metrics": metrics.to_json()}
        if applied_version is not None:
            changes["applied_version"] = applied_version
        result = self.collection.update_one({"_id": node_id}, {"$set": changes})
        if result.matched_count == 0:
            return False
        self.collection.update_one(
            {"_id": node_id, "status": "offline"}, {"$set": {"status": "online"}}
        )
        return True

    @db_call()
    def stale(self, cutoff: float) -> list[Node]:
        """Nodes that heartbeated once, are online or degraded, and were last seen before
        ``cutoff``. Nodes that never heartbeated (no agent yet) are left alone."""
        query = all_of({"status": {"$in": ["online", "degraded"]}}, {"last_seen": {"$lt": cutoff}})
        return [_node(doc) for doc in self.collection.find(query)]

    @db_call()
    def set_status(self, node_id: str, status: str, expected: Sequence[str]) -> bool:
        """Guarded status change: only when the current status is one of ``expected``."""
        result = self.collection.update_one(
            all_of({"_id": node_id}, {"status": {"$in": list(expected)}}),
            {"$set": {"status": status}},
        )
        return result.modified_count == 1

    @db_call()
    def reporting(self) -> list[Node]:
        """Nodes with reported metrics that are not offline (inputs of the metric alerts)."""
        query = all_of({"status": {"$in": ["online", "degraded"]}}, {"last_seen": {"$gt": 0}})
        return [_node(doc) for doc in self.collection.find(query)]


def _metrics(value: object) -> NodeMetrics | None:
    if not isinstance(value, dict):
        return None
    known = {f.name: value.get(f.name) for f in fields(NodeMetrics)}
    return NodeMetrics(**known)


def _node(doc: Document) -> Node:
    return Node(
        id=str(doc["_id"]),
        name=str(doc["name"]),
        type=str(doc["type"]),
        region=str(doc["region"]),
        addr=str(doc["addr"]),
        port=int(doc["port"]),
        tags=tuple(str(tag) for tag in doc.get("tags") or ()),
        metadata=dict(doc.get("metadata") or {}),
        status=str(doc.get("status", "online")),
        token_hash=str(doc.get("token_hash", "")),
        created_at=float(doc["created_at"]),
        updated_at=float(doc.get("updated_at") or doc["created_at"]),
        last_seen=None if doc.get("last_seen") is None else float(doc["last_seen"]),
        applied_version=doc.get("applied_version"),
        metrics=_metrics(doc.get("metrics")),
    )
