"""``deployments``: one document per deployment; ``_id`` is a string id.

Every change of status is a guarded single-document update (no transactions, ``shared/mongo.md``
rule 7): the filter names the status (and for a running deployment, its owner) the change
starts from, and ``modified_count`` says whether this caller won. So a deployment is claimed by
exactly one master, and a late writer (a master that was presumed dead) cannot overwrite the
status another one already decided.

Per-host results are stored as a list of sub-documents written whole with ``$set`` (never
``$push``: rule 3); node ids, not host names, identify them (names may contain dots).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from master_api.deployment_models import (
    Deployment,
    HostResult,
    PhaseResult,
    Selector,
)
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["DeploymentsRepo"]


class DeploymentsRepo(BaseRepo):
    collection_name = "deployments"
    indexes = (
        IndexSpec(("status", 1), ("created_at", 1)),
        IndexSpec(("created_at", -1)),
        IndexSpec(("owner", 1)),
    )

    @db_call(conflict="a deployment with this id already exists")
    def create(self, deployment: Deployment) -> None:
        """Insert a new (queued) deployment."""
        self.collection.insert_one(_doc(deployment))

    @db_call()
    def get(self, deployment_id: str) -> Deployment | None:
        doc = self.collection.find_one({"_id": deployment_id})
        return _deployment(doc) if doc else None

    @db_call()
    def find(
        self,
        *,
        status: str | None = None,
        playbook: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Deployment]:
        """Deployments matching the filters, newest first."""
        cursor = (
            self.collection.find(_filter(status, playbook))
            .sort([("created_at", -1), ("_id", -1)])
            .skip(offset)
            .limit(limit)
        )
        return [_deployment(doc) for doc in cursor]

    @db_call()
    def count(self, *, status: str | None = None, playbook: str | None = None) -> int:
        return self.collection.count_documents(_filter(status, playbook))

    @db_call()
    def with_status(self, status: str, limit: int = 0) -> list[Deployment]:
        """Deployments in ``status``, oldest first (``limit`` 0: all)."""
        cursor = self.collection.find({"status": status}).sort([("created_at", 1), ("_id", 1)])
        if limit:
            cursor = cursor.limit(limit)
        return [_deployment(doc) for doc in cursor]

    @db_call()
    def claim(self, deployment_id: str, owner: str, now: float) -> bool:
        """queued -> running for ``owner``; True only for the one caller that won."""
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "queued"}),
            {
                "$set": {
                    "status": "running",
                    "owner": owner,
                    "claimed_at": now,
                    "started_at": now,
                    "updated_at": now,
                }
            },
        )
        return result.modified_count == 1

    @db_call()
    def cancel_queued(self, deployment_id: str, actor: str, now: float) -> bool:
        """queued -> canceled (nothing ran); False when it is no longer queued."""
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "queued"}),
            {
                "$set": {
                    "status": "canceled",
                    "cancel_requested": True,
                    "canceled_by": actor,
                    "finished_at": now,
                    "updated_at": now,
                }
            },
        )
        return result.modified_count == 1

    @db_call()
    def request_cancel(self, deployment_id: str, actor: str, now: float) -> bool:
        """Raise the cancel flag of a running deployment (its job polls it); False when it is
        not running."""
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "running"}),
            {"$set": {"cancel_requested": True, "canceled_by": actor, "updated_at": now}},
        )
        return result.matched_count == 1

    @db_call()
    def run_state(self, deployment_id: str) -> tuple[str, bool] | None:
        """``(status, cancel flag)`` -- what a running job polls; None when it is gone."""
        doc = self.collection.find_one({"_id": deployment_id}, {"status": 1, "cancel_requested": 1})
        if doc is None:
            return None
        return str(doc.get("status")), bool(doc.get("cancel_requested"))

    @db_call()
    def record_phase(
        self, deployment_id: str, owner: str, key: str, phase: PhaseResult, now: float
    ) -> bool:
        """Store a playbook run's outcome under ``result`` or ``rollback`` while running."""
        if key not in ("result", "rollback"):
            raise ValueError(f"unknown phase key {key!r}")
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "running"}, {"owner": owner}),
            {"$set": {key: _phase_doc(phase), "updated_at": now}},
        )
        return result.modified_count == 1

    @db_call()
    def finish(
        self,
        deployment_id: str,
        owner: str,
        status: str,
        now: float,
        error: str | None = None,
    ) -> bool:
        """running (by ``owner``) -> ``status``; False when someone else decided first."""
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "running"}, {"owner": owner}),
            {"$set": {"status": status, "error": error, "finished_at": now, "updated_at": now}},
        )
        return result.modified_count == 1

    @db_call()
    def touch_external(self, deployment_id: str, now: float) -> bool:
        """An external run reported again: it is alive (see ``DeploymentDispatcher.reap``)."""
        result = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "running"}, {"external": True}),
            {"$set": {"updated_at": now}},
        )
        return result.matched_count == 1

    @db_call()
    def finish_external(
        self,
        deployment_id: str,
        status: str,
        result: PhaseResult | None,
        now: float,
        error: str | None = None,
    ) -> bool:
        """An external run ended (or stopped reporting): running -> ``status``, with its host
        results; False when it had already ended."""
        changes: Document = {
            "status": status,
            "error": error,
            "finished_at": now,
            "updated_at": now,
        }
        if result is not None:
            changes["result"] = _phase_doc(result)
        done = self.collection.update_one(
            all_of({"_id": deployment_id}, {"status": "running"}, {"external": True}),
            {"$set": changes},
        )
        return done.modified_count == 1


def _filter(status: str | None, playbook: str | None) -> Document:
    clauses: list[Document] = []
    if status is not None:
        clauses.append({"status": status})
    if playbook is not None:
        clauses.append({"playbook": playbook})
    return all_of(*clauses)


def _doc(d: Deployment) -> Document:
    return {
        "_id": d.id,
        "playbook": d.playbook,
        "config_version": d.config_version,
        "release": d.release,
        "selector": {
            "node_type": d.selector.node_type,
            "regions": list(d.selector.regions),
            "nodes": list(d.selector.nodes),
            "tags": list(d.selector.tags),
        },
        "serial": d.serial,
        "max_fail_percentage": d.max_fail_percentage,
        "check_mode": d.check_mode,
        "auto_rollback": d.auto_rollback,
        "target_ids": list(d.target_ids),
        "target_names": list(d.target_names),
        "status": d.status,
        "created_by": d.created_by,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "owner": d.owner,
        "claimed_at": d.claimed_at,
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "cancel_requested": d.cancel_requested,
        "canceled_by": d.canceled_by,
        "error": d.error,
        "result": _phase_doc(d.result) if d.result else None,
        "rollback": _phase_doc(d.rollback) if d.rollback else None,
        "external": d.external,
    }


def _phase_doc(phase: PhaseResult) -> Document:
    return {
        "playbook": phase.playbook,
        "status": phase.status,
        "rc": phase.rc,
        "hosts": [
            {
                "node_id": h.node_id,
                "host": h.host,
                "ok": h.ok,
                "changed": h.changed,
                "failures": h.failures,
                "unreachable": h.unreachable,
                "skipped": h.skipped,
                "rescued": h.rescued,
                "ignored": h.ignored,
            }
            for h in phase.hosts
        ],
        "touched": list(phase.touched),
        "error": phase.error,
        "config_versions": dict(phase.config_versions),
    }


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _phase(value: object) -> PhaseResult | None:
    if not isinstance(value, Mapping):
        return None
    hosts = tuple(
        HostResult(
            node_id=str(h.get("node_id") or ""),
            host=str(h.get("host") or ""),
            **{
                key: _int(h.get(key))
                for key in (
                    "ok",
                    "changed",
                    "failures",
                    "unreachable",
                    "skipped",
                    "rescued",
                    "ignored",
                )
            },
        )
        for h in value.get("hosts") or ()
        if isinstance(h, Mapping)
    )
    rc = value.get("rc")
    return PhaseResult(
        playbook=str(value.get("playbook") or ""),
        status=str(value.get("status") or ""),
        rc=int(rc) if isinstance(rc, int | float) else None,
        hosts=hosts,
        touched=tuple(str(t) for t in value.get("touched") or ()),
        error=None if value.get("error") is None else str(value["error"]),
        config_versions={
            str(k): int(v)
            for k, v in (value.get("config_versions") or {}).items()
            if isinstance(v, int) and not isinstance(v, bool)
        },
    )


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _deployment(doc: Document) -> Deployment:
    selector: Mapping[str, Any] = doc.get("selector") or {}
    return Deployment(
        id=str(doc["_id"]),
        playbook=str(doc["playbook"]),
        selector=Selector(
            node_type=selector.get("node_type"),
            regions=tuple(str(r) for r in selector.get("regions") or ()),
            nodes=tuple(str(n) for n in selector.get("nodes") or ()),
            tags=tuple(str(t) for t in selector.get("tags") or ()),
        ),
        target_ids=tuple(str(t) for t in doc.get("target_ids") or ()),
        target_names=tuple(str(t) for t in doc.get("target_names") or ()),
        status=str(doc["status"]),
        created_by=str(doc.get("created_by") or ""),
        created_at=float(doc["created_at"]),
        updated_at=float(doc.get("updated_at") or doc["created_at"]),
        config_version=_opt_int(doc.get("config_version")),
        release=None if doc.get("release") is None else str(doc["release"]),
        serial=_opt_int(doc.get("serial")),
        max_fail_percentage=_opt_int(doc.get("max_fail_percentage")),
        check_mode=bool(doc.get("check_mode")),
        auto_rollback=bool(doc.get("auto_rollback")),
        owner=None if doc.get("owner") is None else str(doc["owner"]),
        claimed_at=_opt_float(doc.get("claimed_at")),
        started_at=_opt_float(doc.get("started_at")),
        finished_at=_opt_float(doc.get("finished_at")),
        cancel_requested=bool(doc.get("cancel_requested")),
        canceled_by=None if doc.get("canceled_by") is None else str(doc["canceled_by"]),
        error=None if doc.get("error") is None else str(doc["error"]),
        result=_phase(doc.get("result")),
        rollback=_phase(doc.get("rollback")),
        external=bool(doc.get("external")),
    )
