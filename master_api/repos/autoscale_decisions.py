"""``autoscale_decisions``: one document per autoscale decision (activate a standby node, or
drain one back), updated as it progresses. The newest of a (type, region) group also gives
its cooldown."""

from __future__ import annotations

from dataclasses import fields, replace

from bson import ObjectId

from master_api.models import ScaleDecision
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["OPEN_STATUSES", "AutoscaleDecisionsRepo"]

#: Decisions still in progress: the autoscaler follows them up and makes no other for the group.
OPEN_STATUSES = ("deploying", "draining")


class AutoscaleDecisionsRepo(BaseRepo):
    collection_name = "autoscale_decisions"
    indexes = (
        IndexSpec(("at", -1)),
        IndexSpec(("node_type", 1), ("region", 1), ("at", -1)),
        IndexSpec(("status", 1)),
    )

    @db_call()
    def record(self, decision: ScaleDecision) -> ScaleDecision:
        """Store a new decision (its ``id`` is assigned here)."""
        stored = replace(decision, id=str(ObjectId()))
        self.collection.insert_one({"_id": stored.id, **_doc(stored)})
        return stored

    @db_call()
    def set_status(self, decision_id: str, status: str, now: float) -> None:
        self.collection.update_one(
            {"_id": decision_id}, {"$set": {"status": status, "updated_at": now}}
        )

    @db_call()
    def open(self) -> list[ScaleDecision]:
        query = {"status": {"$in": list(OPEN_STATUSES)}}
        return [_decision(doc) for doc in self.collection.find(query).sort("at", 1)]

    @db_call()
    def last(self, node_type: str, region: str) -> ScaleDecision | None:
        cursor = (
            self.collection.find(all_of({"node_type": node_type}, {"region": region}))
            .sort("at", -1)
            .limit(1)
        )
        docs = list(cursor)
        return _decision(docs[0]) if docs else None

    @db_call()
    def find(self, limit: int = 50, offset: int = 0) -> list[ScaleDecision]:
        cursor = self.collection.find({}).sort([("at", -1), ("_id", -1)]).skip(offset).limit(limit)
        return [_decision(doc) for doc in cursor]

    @db_call()
    def count_by_action(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for doc in self.collection.find({}, {"action": 1}):
            action = str(doc.get("action"))
            counts[action] = counts.get(action, 0) + 1
        return counts


def _doc(decision: ScaleDecision) -> Document:
    doc: Document = {f.name: getattr(decision, f.name) for f in fields(decision)}
    doc.pop("id")
    doc["versions"] = list(decision.versions)
    return doc


def _decision(doc: Document) -> ScaleDecision:
    return ScaleDecision(
        id=str(doc["_id"]),
        node_type=str(doc["node_type"]),
        region=str(doc["region"]),
        action=str(doc["action"]),
        node_id=str(doc["node_id"]),
        node_name=str(doc["node_name"]),
        reason=str(doc.get("reason", "")),
        status=str(doc["status"]),
        active_before=int(doc.get("active_before") or 0),
        load=float(doc.get("load") or 0.0),
        at=float(doc["at"]),
        updated_at=float(doc.get("updated_at") or doc["at"]),
        deployment_id=doc.get("deployment_id"),
        versions=tuple(int(v) for v in doc.get("versions") or ()),
    )
