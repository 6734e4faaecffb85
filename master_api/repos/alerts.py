"""``alerts``: one document per alert occurrence.

At most one *active* alert per (name, node): an active alert's ``key`` is ``"<name>/<node>"``
under a unique index; resolving it moves the key to ``"<name>/<node>/<id>"``. (A partial unique
index would say this more directly, but nx-27017 lacks them -- ``shared/mongo.md`` rule 8.)
"""

from __future__ import annotations

from bson import ObjectId

from master_api.models import Alert
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["AlertsRepo"]


def _active_key(name: str, node_id: str) -> str:
    return f"{name}/{node_id}"


class AlertsRepo(BaseRepo):
    collection_name = "alerts"
    indexes = (
        IndexSpec(("key", 1), unique=True),
        IndexSpec(("status", 1), ("started_at", -1)),
        IndexSpec(("node_id", 1)),
    )

    @db_call()
    def get_active(self, name: str, node_id: str) -> Alert | None:
        doc = self.collection.find_one({"key": _active_key(name, node_id)})
        return _alert(doc) if doc else None

    @db_call()
    def active(self) -> list[Alert]:
        return [_alert(doc) for doc in self.collection.find({"status": "active"})]

    @db_call(conflict="this alert is already active")
    def fire(
        self,
        name: str,
        node_id: str,
        node_name: str,
        severity: str,
        message: str,
        value: float | None,
        threshold: float | None,
        now: float,
    ) -> Alert:
        """Open a new active alert; 409 if one is already active for (name, node)."""
        alert = Alert(
            id=str(ObjectId()),
            name=name,
            node_id=node_id,
            node_name=node_name,
            severity=severity,
            status="active",
            message=message,
            value=value,
            threshold=threshold,
            started_at=now,
            updated_at=now,
        )
        self.collection.insert_one(
            {
                "_id": alert.id,
                "key": _active_key(name, node_id),
                "name": name,
                "node_id": node_id,
                "node_name": node_name,
                "severity": severity,
                "status": "active",
                "message": message,
                "value": value,
                "threshold": threshold,
                "started_at": now,
                "updated_at": now,
                "resolved_at": None,
            }
        )
        return alert

    @db_call()
    def touch(self, alert_id: str, value: float | None, message: str, now: float) -> None:
        """Refresh an active alert's current value."""
        self.collection.update_one(
            {"_id": alert_id, "status": "active"},
            {"$set": {"value": value, "message": message, "updated_at": now}},
        )

    @db_call()
    def resolve(self, alert: Alert, now: float) -> bool:
        """Mark ``alert`` resolved (frees its key for the next occurrence)."""
        result = self.collection.update_one(
            {"_id": alert.id, "status": "active"},
            {
                "$set": {
                    "status": "resolved",
                    "key": f"{_active_key(alert.name, alert.node_id)}/{alert.id}",
                    "resolved_at": now,
                    "updated_at": now,
                }
            },
        )
        return result.modified_count == 1

    @db_call()
    def find(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        node_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Alert]:
        """Alerts matching the filters, newest first."""
        clauses: list[Document] = []
        if status is not None:
            clauses.append({"status": status})
        if name is not None:
            clauses.append({"name": name})
        if node_id is not None:
            clauses.append({"node_id": node_id})
        cursor = (
            self.collection.find(all_of(*clauses))
            .sort([("started_at", -1), ("_id", -1)])
            .skip(offset)
            .limit(limit)
        )
        return [_alert(doc) for doc in cursor]


def _alert(doc: Document) -> Alert:
    return Alert(
        id=str(doc["_id"]),
        name=str(doc["name"]),
        node_id=str(doc["node_id"]),
        node_name=str(doc.get("node_name") or ""),
        severity=str(doc.get("severity") or "warning"),
        status=str(doc["status"]),
        message=str(doc.get("message") or ""),
        value=doc.get("value"),
        threshold=doc.get("threshold"),
        started_at=float(doc["started_at"]),
        updated_at=float(doc.get("updated_at") or doc["started_at"]),
        resolved_at=doc.get("resolved_at"),
    )
