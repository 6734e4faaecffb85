"""``config_history``: one document per change of what is active (publish, rollback,
deprecate), never an array pushed into another document (``shared/mongo.md`` rule 3)."""

from __future__ import annotations

from bson import ObjectId

from master_api.models import HistoryEntry
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["ConfigHistoryRepo"]


class ConfigHistoryRepo(BaseRepo):
    collection_name = "config_history"
    indexes = (
        IndexSpec(("config_type", 1), ("node_type", 1), ("region", 1), ("at", -1)),
        IndexSpec(("at", -1)),
    )

    @db_call()
    def record(
        self,
        action: str,
        config_type: str,
        node_type: str,
        region: str | None,
        from_version: int | None,
        to_version: int | None,
        actor: str,
        now: float,
    ) -> HistoryEntry:
        entry = HistoryEntry(
            id=str(ObjectId()),
            action=action,
            config_type=config_type,
            node_type=node_type,
            region=region,
            from_version=from_version,
            to_version=to_version,
            actor=actor,
            at=now,
        )
        self.collection.insert_one(
            {
                "_id": entry.id,
                "action": action,
                "config_type": config_type,
                "node_type": node_type,
                "region": region,
                "from_version": from_version,
                "to_version": to_version,
                "actor": actor,
                "at": now,
            }
        )
        return entry

    @db_call()
    def find(
        self,
        *,
        config_type: str | None = None,
        node_type: str | None = None,
        region: str | None = None,
        version_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[HistoryEntry]:
        """Entries matching every given filter, newest first. ``version_id`` matches either
        end of a change."""
        clauses: list[Document] = []
        if config_type is not None:
            clauses.append({"config_type": config_type})
        if node_type is not None:
            clauses.append({"node_type": node_type})
        if region is not None:
            clauses.append({"region": region})
        if version_id is not None:
            clauses.append({"$or": [{"from_version": version_id}, {"to_version": version_id}]})
        cursor = (
            self.collection.find(all_of(*clauses))
            .sort([("at", -1), ("_id", -1)])
            .skip(offset)
            .limit(limit)
        )
        return [_entry(doc) for doc in cursor]

    @db_call()
    def last_activation(
        self, config_type: str, node_type: str, region: str, version_id: int
    ) -> HistoryEntry | None:
        """The latest publish/rollback that made ``version_id`` active in that region."""
        query = all_of(
            {"config_type": config_type},
            {"node_type": node_type},
            {"region": region},
            {"to_version": version_id},
            {"action": {"$in": ["publish", "rollback"]}},
        )
        for doc in self.collection.find(query).sort([("at", -1), ("_id", -1)]).limit(1):
            return _entry(doc)
        return None


def _entry(doc: Document) -> HistoryEntry:
    return HistoryEntry(
        id=str(doc["_id"]),
        action=str(doc["action"]),
        config_type=str(doc["config_type"]),
        node_type=str(doc["node_type"]),
        region=doc.get("region"),
        from_version=doc.get("from_version"),
        to_version=doc.get("to_version"),
        actor=str(doc.get("actor") or ""),
        at=float(doc["at"]),
    )
