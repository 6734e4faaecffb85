"""``leaders``: one lease document per election (``_id`` = election name).

The lease is taken and renewed with the guarded ``find_one_and_update`` of ``shared/mongo.md``,
correct on both servers: the filter matches only when the lease has expired or is already
ours; otherwise real MongoDB's upsert collides with the live lease's ``_id``
(DuplicateKeyError) and nx-27017 answers None -- both mean "someone else leads".
"""

from __future__ import annotations

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from master_api.models import Lease
from master_api.repos.base import BaseRepo, all_of, db_call

__all__ = ["LeadersRepo"]


class LeadersRepo(BaseRepo):
    collection_name = "leaders"

    @db_call()
    def acquire(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl``; True if we hold it."""
        try:
            doc = self.collection.find_one_and_update(
                all_of(
                    {"_id": name},
                    {"$or": [{"expires_at": {"$lt": now}}, {"holder": holder}]},
                ),
                {"$set": {"holder": holder, "expires_at": now + ttl, "renewed_at": now}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # real MongoDB: another holder's lease is live
            doc = None
        return doc is not None and doc.get("_id") == name and doc.get("holder") == holder

    @db_call()
    def release(self, name: str, holder: str) -> bool:
        """Give the lease up at once (clean shutdown) so another master takes over now."""
        result = self.collection.update_one(
            {"_id": name, "holder": holder}, {"$set": {"expires_at": 0.0}}
        )
        return result.modified_count == 1

    @db_call()
    def get(self, name: str) -> Lease | None:
        doc = self.collection.find_one({"_id": name})
        if doc is None:
            return None
        return Lease(
            name=name, holder=str(doc.get("holder") or ""), expires_at=float(doc["expires_at"])
        )
