"""``audit_log``: one document per mutating API call (who, what, when, from where)."""

from __future__ import annotations

from bson import ObjectId

from master_api.models import AuditEntry
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["AuditLogRepo"]


class AuditLogRepo(BaseRepo):
    collection_name = "audit_log"
    indexes = (IndexSpec(("at", -1)), IndexSpec(("actor", 1), ("at", -1)))

    @db_call()
    def record(self, entry: AuditEntry) -> None:
        self.collection.insert_one(
            {
                "_id": str(ObjectId()),
                "actor": entry.actor,
                "role": entry.role,
                "method": entry.method,
                "path": entry.path,
                "endpoint": entry.endpoint,
                "target": entry.target,
                "status": entry.status,
                "ip": entry.ip,
                "at": entry.at,
            }
        )

    @db_call()
    def find(
        self, *, actor: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[AuditEntry]:
        clauses: list[Document] = []
        if actor is not None:
            clauses.append({"actor": actor})
        cursor = (
            self.collection.find(all_of(*clauses))
            .sort([("at", -1), ("_id", -1)])
            .skip(offset)
            .limit(limit)
        )
        return [_entry(doc) for doc in cursor]


def _entry(doc: Document) -> AuditEntry:
    return AuditEntry(
        id=str(doc["_id"]),
        actor=doc.get("actor"),
        role=doc.get("role"),
        method=str(doc["method"]),
        path=str(doc["path"]),
        endpoint=doc.get("endpoint"),
        target=doc.get("target"),
        status=int(doc["status"]),
        ip=doc.get("ip"),
        at=float(doc["at"]),
    )
