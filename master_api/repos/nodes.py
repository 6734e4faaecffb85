"""``nodes``: the fleet inventory. ``_id`` is a string id; names are unique."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from master_api.models import (
    NODE_STATUSES,
    AgentInfo,
    ConfigApplyError,
    FailoverState,
    Node,
    NodeMetrics,
)
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["NodeFilter", "NodesRepo"]

_CONFLICT = "a node with this name already exists"
# $in of the other statuses rather than $ne: the embedded store's tested subset (mongo.md).
_NOT_OFFLINE = [status for status in NODE_STATUSES if status != "offline"]


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
                "config_error": None,
                "agent": None,
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

    @db_call()
    def count_by_failover(self) -> dict[str, int]:
        """Number of nodes per failover state (nodes never judged are not counted)."""
        counts: dict[str, int] = {}
        for doc in self.collection.find({}, {"failover": 1}):
            record = doc.get("failover")
            if isinstance(record, dict) and record.get("state"):
                state = str(record["state"])
                counts[state] = counts.get(state, 0) + 1
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
        back online (degraded stays degraded until the leader's next check clears it).
        False when the node does not exist."""
        changes: Document = {"last_seen": now, "metrics": metrics.to_json()}
        if applied_version is not None:
            changes["applied_version"] = applied_version
        return self._seen(node_id, changes)

    def _seen(self, node_id: str, changes: Document) -> bool:
        """``$set`` ``changes`` and bring an offline node back online. One write in the common
        case (the node is not offline), a second only for an offline node: heartbeats are
        the store's main load."""
        # Flat, not all_of(): nx-27017 looks an ``$and`` up by scanning the collection (15 ms
        # at 1,000 nodes) but a flat ``_id`` filter by its key (under 1 ms). No ``$or`` here,
        # so mongo.md rule 1 does not apply.
        result = self.collection.update_one(
            {"_id": node_id, "status": {"$in": _NOT_OFFLINE}}, {"$set": changes}
        )
        if result.matched_count == 1:
            return True
        result = self.collection.update_one(
            {"_id": node_id}, {"$set": {**changes, "status": "online"}}
        )
        return result.matched_count == 1

    @db_call()
    def record_agent(self, node_id: str, agent: AgentInfo, applied_version: int | None) -> bool:
        """Store what a registering agent said (it counts as a heartbeat for ``last_seen``);
        False when the node does not exist. An offline node comes back online."""
        changes: Document = {
            "agent": {
                "hostname": agent.hostname,
                "version": agent.version,
                "registered_at": agent.registered_at,
            },
            "last_seen": agent.registered_at,
        }
        if applied_version is not None:
            changes["applied_version"] = applied_version
        return self._seen(node_id, changes)

    @db_call()
    def record_config_report(
        self, node_id: str, applied_version: int | None, error: ConfigApplyError | None
    ) -> bool:
        """Store an agent's apply report: the version the relay runs now (when known) and the
        failure (None clears the last one). False when the node does not exist."""
        changes: Document = {"config_error": None if error is None else _error_doc(error)}
        if applied_version is not None:
            changes["applied_version"] = applied_version
        return self.collection.update_one({"_id": node_id}, {"$set": changes}).matched_count == 1

    @db_call()
    def record_release(
        self, node_id: str, release: str | None, applied_version: int | None, now: float
    ) -> bool:
        """After a successful deployment on the node: the relay ``release`` it installed (the
        release before is kept as ``previous_release``, what a rollback returns to) and the
        config version it installed (``applied_version``). None leaves a field as it is."""
        changes: Document = {"deployed_at": now}
        if applied_version is not None:
            changes["applied_version"] = applied_version
        if release is not None:
            doc = self.collection.find_one({"_id": node_id}, {"release": 1})
            if doc is None:
                return False
            if doc.get("release") != release:
                changes["previous_release"] = doc.get("release")
            changes["release"] = release
        return self.collection.update_one({"_id": node_id}, {"$set": changes}).matched_count == 1

    @db_call()
    def record_rollback(self, node_id: str, release: str | None, now: float) -> bool:
        """After a successful rollback on the node: it runs ``release``, or when None the
        ``previous_release`` it had (unknown: the recorded release is cleared)."""
        doc = self.collection.find_one({"_id": node_id}, {"release": 1, "previous_release": 1})
        if doc is None:
            return False
        target = release if release is not None else doc.get("previous_release")
        changes: Document = {"release": target, "previous_release": None, "deployed_at": now}
        return self.collection.update_one({"_id": node_id}, {"$set": changes}).matched_count == 1

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
            {"_id": node_id, "status": {"$in": list(expected)}},  # flat: see _seen
            {"$set": {"status": status}},
        )
        return result.modified_count == 1

    @db_call()
    def set_failover(self, node_id: str, failover: FailoverState) -> bool:
        """Store the failover controller's record of the node; False when it does not exist."""
        doc: Document = {
            "state": failover.state,
            "reason": failover.reason,
            "changed_at": failover.changed_at,
            "healthy_since": failover.healthy_since,
            "versions": list(failover.versions),
        }
        result = self.collection.update_one({"_id": node_id}, {"$set": {"failover": doc}})
        return result.matched_count == 1

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


def _error_doc(error: ConfigApplyError) -> Document:
    # Issues are stored as "path\tmessage" strings: arrays of sub-documents are where the
    # embedded store is least trustworthy (shared/mongo.md rule 3).
    return {
        "version": error.version,
        "outcome": error.outcome,
        "message": error.message,
        "issues": [f"{path}\t{message}" for path, message in error.issues],
        "at": error.at,
    }


def _config_error(value: object) -> ConfigApplyError | None:
    if not isinstance(value, dict):
        return None
    issues = []
    for item in value.get("issues") or ():
        path, _, message = str(item).partition("\t")
        issues.append((path, message))
    return ConfigApplyError(
        version=int(value.get("version") or 0),
        outcome=str(value.get("outcome", "")),
        message=str(value.get("message", "")),
        issues=tuple(issues),
        at=float(value.get("at") or 0.0),
    )


def _agent(value: object) -> AgentInfo | None:
    if not isinstance(value, dict):
        return None
    return AgentInfo(
        hostname=str(value.get("hostname", "")),
        version=str(value.get("version", "")),
        registered_at=float(value.get("registered_at") or 0.0),
    )


def _failover(value: object) -> FailoverState | None:
    if not isinstance(value, dict) or value.get("state") is None:
        return None
    healthy = value.get("healthy_since")
    return FailoverState(
        state=str(value["state"]),
        reason=str(value.get("reason", "")),
        changed_at=float(value.get("changed_at") or 0.0),
        healthy_since=None if healthy is None else float(healthy),
        versions=tuple(int(v) for v in value.get("versions") or ()),
    )


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
        config_error=_config_error(doc.get("config_error")),
        agent=_agent(doc.get("agent")),
        release=None if doc.get("release") is None else str(doc["release"]),
        failover=_failover(doc.get("failover")),
    )
