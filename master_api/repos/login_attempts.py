"""``login_attempts``: fixed-window counters for login rate limiting, shared by all masters.

One document per (key, window): ``_id`` is ``"<key>@<window start>"``, incremented atomically
with ``$inc`` (an upsert on ``_id``, correct on MongoDB and nx-27017).
"""

from __future__ import annotations

from pymongo import ReturnDocument

from master_api.repos.base import BaseRepo, IndexSpec, db_call

__all__ = ["LoginAttemptsRepo"]


class LoginAttemptsRepo(BaseRepo):
    collection_name = "login_attempts"
    indexes = (IndexSpec(("window_end", 1)),)

    @db_call()
    def hit(self, key: str, window_start: int, window_end: float) -> int:
        """Count one attempt for ``key`` in this window; returns the count including it."""
        doc_id = f"{key}@{window_start}"
        for _ in range(3):
            doc = self.collection.find_one_and_update(
                {"_id": doc_id},
                {"$inc": {"count": 1}, "$set": {"window_end": window_end}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            # nx-27017 answers None instead of raising when two upserts race on a new _id
            # (mongo.md rule 2); the document exists by then, so the retry increments it.
            if doc is not None:
                return int(doc["count"])
        return 0

    @db_call()
    def count(self, key: str, window_start: int) -> int:
        doc = self.collection.find_one({"_id": f"{key}@{window_start}"})
        return int(doc["count"]) if doc else 0

    @db_call()
    def clear(self, key: str, window_start: int) -> None:
        self.collection.delete_one({"_id": f"{key}@{window_start}"})

    @db_call()
    def purge_expired(self, now: float) -> int:
        return self.collection.delete_many({"window_end": {"$lt": now}}).deleted_count
