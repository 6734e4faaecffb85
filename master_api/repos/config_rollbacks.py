"""``config_rollbacks``: one document per rollback (who, why, from which version to which)."""

from __future__ import annotations

from bson import ObjectId

from master_api.models import RollbackRecord
from master_api.repos.base import BaseRepo, Document, IndexSpec, db_call

__all__ = ["ConfigRollbacksRepo"]


class ConfigRollbacksRepo(BaseRepo):
    collection_name = "config_rollbacks"
    indexes = (IndexSpec(("config_type", 1), ("node_type", 1), ("region", 1), ("at", -1)),)

    @db_call()
    def record(
        self,
        config_type: str,
        node_type: str,
        region: str,
        from_version: int,
        to_version: int,
        reason: str,
        actor: str,
        now: float,
    ) -> RollbackRecord:
        record = RollbackRecord(
            id=str(ObjectId()),
            config_type=config_type,
            node_type=node_type,
            region=region,
            from_version=from_version,
            to_version=to_version,
            reason=reason,
            actor=actor,
            at=now,
        )
        self.collection.insert_one(
            {
                "_id": record.id,
                "config_type": config_type,
                "node_type": node_type,
                "region": region,
                "from_version": from_version,
                "to_version": to_version,
                "reason": reason,
                "actor": actor,
                "at": now,
            }
        )
        return record

    @db_call()
    def find(self, limit: int = 50) -> list[RollbackRecord]:
        cursor = self.collection.find({}).sort([("at", -1), ("_id", -1)]).limit(limit)
        return [_record(doc) for doc in cursor]


def _record(doc: Document) -> RollbackRecord:
    return RollbackRecord(
        id=str(doc["_id"]),
        config_type=str(doc["config_type"]),
        node_type=str(doc["node_type"]),
        region=str(doc["region"]),
        from_version=int(doc["from_version"]),
        to_version=int(doc["to_version"]),
        reason=str(doc.get("reason") or ""),
        actor=str(doc.get("actor") or ""),
        at=float(doc["at"]),
    )
