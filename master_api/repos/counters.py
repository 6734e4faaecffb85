"""``counters``: monotonic sequences (``$inc`` on one document per sequence)."""

from __future__ import annotations

from pymongo import ReturnDocument

from master_api.errors import StoreUnavailable
from master_api.repos.base import BaseRepo, db_call

__all__ = ["CountersRepo"]


class CountersRepo(BaseRepo):
    collection_name = "counters"

    @db_call()
    def next(self, name: str) -> int:
        """The next value of sequence ``name`` (1, 2, 3, ...): never repeats, never decreases.

        Single-document atomic ``$inc``; concurrent callers each get a distinct value.
        """
        for _ in range(5):
            doc = self.collection.find_one_and_update(
                {"_id": name},
                {"$inc": {"seq": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            # None: a concurrent first upsert won the race on nx-27017 (mongo.md rule 2);
            # the document exists now and the retry increments it.
            if doc is not None:
                return int(doc["seq"])
        raise StoreUnavailable(f"could not advance sequence {name!r}; retry later")
