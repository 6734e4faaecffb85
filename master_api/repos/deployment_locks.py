"""``deployment_locks``: which active deployment holds each node (``_id`` = node id).

This is how two deployments never run on the same node at once: a deployment takes the lock of
every target node when it is created, by ``insert_one`` -- atomic on its own, a duplicate ``_id``
means another deployment holds that node -- and gives them back when it ends. No transaction is
needed (``shared/mongo.md`` rule 7): a creation that loses on one node deletes the locks it did
take and is refused. Locks left behind by a master that died between taking them and storing its
deployment are removed by the leader (``DeploymentReaper``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymongo.errors import DuplicateKeyError

from master_api.repos.base import BaseRepo, Document, IndexSpec, db_call

__all__ = ["DeploymentLocksRepo", "NodeLock"]


@dataclass(frozen=True, slots=True)
class NodeLock:
    node_id: str
    deployment_id: str
    taken_at: float


class DeploymentLocksRepo(BaseRepo):
    collection_name = "deployment_locks"
    indexes = (IndexSpec(("deployment_id", 1)),)

    @db_call()
    def acquire(self, deployment_id: str, node_ids: Sequence[str], now: float) -> list[NodeLock]:
        """Take every node's lock for ``deployment_id``, or none of them.

        Returns ``[]`` on success; otherwise the locks that stood in the way (the ones taken
        here are given back first).
        """
        taken: list[str] = []
        for node_id in node_ids:
            try:
                self.collection.insert_one(
                    {"_id": node_id, "deployment_id": deployment_id, "taken_at": now}
                )
            except DuplicateKeyError:
                if taken:
                    self.collection.delete_many(
                        {"_id": {"$in": taken}, "deployment_id": deployment_id}
                    )
                return self.held(node_ids, excluding=deployment_id)
            taken.append(node_id)
        return []

    @db_call()
    def held(self, node_ids: Sequence[str], excluding: str | None = None) -> list[NodeLock]:
        """The locks on ``node_ids`` (other than ``excluding``'s)."""
        docs = self.collection.find({"_id": {"$in": list(node_ids)}})
        return [_lock(doc) for doc in docs if doc.get("deployment_id") != excluding]

    @db_call()
    def release(self, deployment_id: str) -> int:
        """Give back every lock ``deployment_id`` holds; returns how many."""
        return self.collection.delete_many({"deployment_id": deployment_id}).deleted_count

    @db_call()
    def all(self) -> list[NodeLock]:
        """Every lock (few: one per node under an active deployment)."""
        return [_lock(doc) for doc in self.collection.find({})]


def _lock(doc: Document) -> NodeLock:
    return NodeLock(
        node_id=str(doc["_id"]),
        deployment_id=str(doc.get("deployment_id") or ""),
        taken_at=float(doc.get("taken_at") or 0.0),
    )
