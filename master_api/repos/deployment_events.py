"""``deployment_events``: one document per event (``shared/mongo.md`` rule 3: never a ``$push``
into the deployment). ``_id`` is ``"<deployment id>:<counter>"``, so writing a batch again after
a lost acknowledgement cannot duplicate an event: the copies already stored are refused by the
``_id`` index and the rest go in (``ordered=False``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from master_api.deployment_models import DeploymentEvent
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["DeploymentEventsRepo"]

_DUPLICATE_KEY = 11000


class DeploymentEventsRepo(BaseRepo):
    collection_name = "deployment_events"
    indexes = (IndexSpec(("deployment_id", 1), ("counter", 1)),)

    @db_call()
    def append(self, events: Sequence[DeploymentEvent]) -> None:
        """Store a batch of events (one round trip). Events already stored are skipped."""
        if not events:
            return
        try:
            self.collection.insert_many([_doc(e) for e in events], ordered=False)
        except DuplicateKeyError:
            pass  # a retried batch: the copy already stored wins
        except BulkWriteError as exc:
            errors: list[Mapping[str, Any]] = exc.details.get("writeErrors") or []
            if any(err.get("code") != _DUPLICATE_KEY for err in errors):
                raise

    @db_call()
    def since(self, deployment_id: str, after: int, limit: int = 500) -> list[DeploymentEvent]:
        """Events of ``deployment_id`` with ``counter > after``, in counter order."""
        cursor = (
            self.collection.find(
                all_of({"deployment_id": deployment_id}, {"counter": {"$gt": after}})
            )
            .sort("counter", 1)
            .limit(limit)
        )
        return [_event(doc) for doc in cursor]

    @db_call()
    def last_counter(self, deployment_id: str) -> int:
        """The highest counter stored for ``deployment_id`` (0 when none)."""
        doc = self.collection.find_one(
            {"deployment_id": deployment_id}, {"counter": 1}, sort=[("counter", -1)]
        )
        return int(doc["counter"]) if doc else 0


def _doc(event: DeploymentEvent) -> Document:
    return {
        "_id": f"{event.deployment_id}:{event.counter}",
        "deployment_id": event.deployment_id,
        "counter": event.counter,
        "event": event.event,
        "playbook": event.playbook,
        "created": event.created,
        "host": event.host,
        "task": event.task,
        "stdout": event.stdout,
        "data": dict(event.data),
    }


def _event(doc: Document) -> DeploymentEvent:
    return DeploymentEvent(
        deployment_id=str(doc["deployment_id"]),
        counter=int(doc["counter"]),
        event=str(doc["event"]),
        playbook=str(doc.get("playbook") or ""),
        created=float(doc.get("created") or 0.0),
        host=None if doc.get("host") is None else str(doc["host"]),
        task=None if doc.get("task") is None else str(doc["task"]),
        stdout=str(doc.get("stdout") or ""),
        data=dict(doc.get("data") or {}),
    )
