"""``election_members``: the master processes taking part, each refreshing its own document."""

from __future__ import annotations

from master_api.models import Member
from master_api.repos.base import BaseRepo, Document, IndexSpec, db_call

__all__ = ["ElectionMembersRepo"]


class ElectionMembersRepo(BaseRepo):
    collection_name = "election_members"
    indexes = (IndexSpec(("last_seen", 1)),)

    @db_call()
    def heartbeat(self, member: Member) -> None:
        """Create or refresh ``member``'s document (``last_seen`` = ``member.last_seen``)."""
        self.collection.update_one(
            {"_id": member.id},
            {
                "$set": {
                    "host": member.host,
                    "pid": member.pid,
                    "http_addr": member.http_addr,
                    "started_at": member.started_at,
                    "last_seen": member.last_seen,
                }
            },
            upsert=True,
        )

    @db_call()
    def find(self, seen_after: float) -> list[Member]:
        """Members seen after ``seen_after`` (the live ones), oldest first."""
        docs = self.collection.find({"last_seen": {"$gt": seen_after}}).sort("started_at", 1)
        return [_member(doc) for doc in docs]

    @db_call()
    def remove(self, member_id: str) -> None:
        self.collection.delete_one({"_id": member_id})

    @db_call()
    def purge(self, seen_before: float) -> int:
        return self.collection.delete_many({"last_seen": {"$lt": seen_before}}).deleted_count


def _member(doc: Document) -> Member:
    return Member(
        id=str(doc["_id"]),
        host=str(doc.get("host") or ""),
        pid=int(doc.get("pid") or 0),
        http_addr=str(doc.get("http_addr") or ""),
        started_at=float(doc.get("started_at") or 0.0),
        last_seen=float(doc.get("last_seen") or 0.0),
    )
