"""``usage_records`` and ``usage_quotas``: per-key usage reported by the edges (issue 12).

A usage record is what one node counted for one key in one UTC hour, in one batch:
``_id = "<node_id>|<batch_id>|<hour>|<key>"``. Records are written with an upsert that
replaces the whole document, so a batch sent again (the agent never heard the master's
answer, the master restarted mid-write) writes the same documents again: applying a batch is
idempotent with single-document operations only. An ``$inc`` into one hourly document guarded
by the batch ids it holds would be the MongoDB way, but ``$ne`` against an array matches
wrongly on the embedded store (``shared/mongo.md`` rule 8 family; measured here), so usage
is summed at read time instead: per (key, node, hour) there are at most as many records as
heartbeats in an hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import ReplaceOne

from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["COUNTER_FIELDS", "QuotasRepo", "UsageFilter", "UsageRecordsRepo"]

#: The summed fields of a record (proto ``KeyUsage`` minus key and hour).
COUNTER_FIELDS = (
    "requests", "errors", "blocked", "bytes_in", "bytes_out", "streams",
    "ttfb_seconds_sum", "ttfb_count", "duration_seconds_sum",
    "prompt_tokens", "completion_tokens", "total_tokens",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """None means "any". ``start``/``end``: epoch seconds, hours starting in [start, end)."""

    key: str | None = None
    node_id: str | None = None
    start: int | None = None
    end: int | None = None

    def query(self) -> Document:
        clauses: list[Document] = []
        if self.key is not None:
            clauses.append({"key": self.key})
        if self.node_id is not None:
            clauses.append({"node_id": self.node_id})
        if self.start is not None:
            clauses.append({"hour": {"$gte": self.start}})
        if self.end is not None:
            clauses.append({"hour": {"$lt": self.end}})
        return all_of(*clauses)


class UsageRecordsRepo(BaseRepo):
    collection_name = "usage_records"
    indexes = (
        IndexSpec(("key", 1), ("hour", 1)),
        IndexSpec(("node_id", 1), ("hour", 1)),
        IndexSpec(("hour", 1)),
    )

    @db_call()
    def store(self, node_id: str, batch_id: str, records: Sequence[Document]) -> None:
        """Write one batch's records (each with ``key``, ``hour`` and the counter fields);
        writing the same batch again changes nothing."""
        if not records:
            return
        ops = []
        for record in records:
            doc = {
                "node_id": node_id,
                "batch_id": batch_id,
                "key": record["key"],
                "hour": int(record["hour"]),
                **{name: record[name] for name in COUNTER_FIELDS},
            }
            _id = f"{node_id}|{batch_id}|{doc['hour']}|{doc['key']}"
            # _id in the document too: the embedded store does not take it from the filter
            # on an upsert, and would insert a copy each time (measured here).
            ops.append(ReplaceOne({"_id": _id}, {"_id": _id, **doc}, upsert=True))
        self.collection.bulk_write(ops, ordered=False)

    @db_call()
    def find(self, where: UsageFilter, limit: int = 0) -> list[Document]:
        """Matching records (unordered); ``limit`` 0: all."""
        projection = {"_id": 0, "batch_id": 0}
        return list(self.collection.find(where.query(), projection, limit=limit))


class QuotasRepo(BaseRepo):
    """One document per key: ``_id`` is the key hash."""

    collection_name = "usage_quotas"

    @db_call()
    def put(self, key: str, quota: Document) -> None:
        self.collection.replace_one({"_id": key}, {"_id": key, **quota}, upsert=True)

    @db_call()
    def delete(self, key: str) -> bool:
        return self.collection.delete_one({"_id": key}).deleted_count == 1

    @db_call()
    def all(self) -> list[Document]:
        return list(self.collection.find({}).sort("_id", 1))
