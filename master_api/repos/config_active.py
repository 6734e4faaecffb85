"""``config_active``: the active-version pointers, one document per
(config_type, node_type, region), ``_id`` = ``"<config_type>/<node_type>/<region>"``.

A pointer is the single source of truth for "which version is active there", so there can
never be two. It changes only by compare-and-set on its ``seq`` field: a single-document
atomic update that is correct on MongoDB and on nx-27017 alike (no transactions needed).
"""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from master_api.models import ActivePointer
from master_api.repos.base import BaseRepo, Document, IndexSpec, db_call

__all__ = ["ActivePointersRepo", "pointer_key"]


def pointer_key(config_type: str, node_type: str, region: str) -> str:
    return f"{config_type}/{node_type}/{region}"


class ActivePointersRepo(BaseRepo):
    collection_name = "config_active"
    indexes = (IndexSpec(("version_id", 1)),)

    @db_call()
    def get(self, config_type: str, node_type: str, region: str) -> ActivePointer | None:
        doc = self.collection.find_one({"_id": pointer_key(config_type, node_type, region)})
        return _pointer(doc) if doc else None

    @db_call()
    def all(self) -> list[ActivePointer]:
        return [_pointer(doc) for doc in self.collection.find({}).sort("_id", 1)]

    @db_call()
    def naming(self, version_id: int) -> list[ActivePointer]:
        """Pointers that name ``version_id`` (the regions where it is active)."""
        return [_pointer(doc) for doc in self.collection.find({"version_id": version_id})]

    @db_call()
    def compare_and_set(
        self,
        config_type: str,
        node_type: str,
        region: str,
        expected: ActivePointer | None,
        version_id: int,
        actor: str,
        now: float,
    ) -> bool:
        """Point (config_type, node_type, region) at ``version_id`` if the pointer is still
        ``expected`` (None: there is no pointer yet). True when this call made the change;
        False when another writer got there first (re-read and decide again)."""
        key = pointer_key(config_type, node_type, region)
        if expected is None:
            try:
                self.collection.insert_one(
                    {
                        "_id": key,
                        "config_type": config_type,
                        "node_type": node_type,
                        "region": region,
                        "version_id": version_id,
                        "seq": 1,
                        "updated_at": now,
                        "updated_by": actor,
                    }
                )
            except DuplicateKeyError:  # another writer created it first: lost the race
                return False
            return True
        result = self.collection.update_one(
            {"_id": key, "seq": expected.seq},
            {
                "$set": {
                    "version_id": version_id,
                    "seq": expected.seq + 1,
                    "updated_at": now,
                    "updated_by": actor,
                }
            },
        )
        return result.modified_count == 1


def _pointer(doc: Document) -> ActivePointer:
    return ActivePointer(
        config_type=str(doc["config_type"]),
        node_type=str(doc["node_type"]),
        region=str(doc["region"]),
        version_id=int(doc["version_id"]),
        seq=int(doc["seq"]),
        updated_at=float(doc["updated_at"]),
        updated_by=str(doc.get("updated_by") or ""),
    )
