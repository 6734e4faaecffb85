"""Plain ``ansible-playbook`` runs that report themselves to the master (DESIGN §6: the
``aicdn_events`` callback), so a deploy started by hand shows up beside those the master runs.

The callback registers the run (``POST /deployments/external``), which becomes an *external*
deployment: ``running`` at once, never claimed or run by a master, holding no node locks (the
master cannot stop a run it does not own, so refusing its own deployments because of it would
only block the operator). Events arrive in batches (``POST /deployments/{id}/events``) numbered
by the run itself, so a batch the callback retries is stored once. The run's
``playbook_on_stats`` event ends it, with per-host results; a run that stops reporting is marked
``interrupted`` by the leader's reaper (``DeploymentDispatcher.reap``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from master_api.deployment_models import (
    Deployment,
    DeploymentEvent,
    HostResult,
    PhaseResult,
    Selector,
)
from master_api.errors import Conflict, NotFound
from master_api.repos import NodeFilter, Repos

__all__ = ["ExternalEvent", "ExternalRun", "ExternalRuns"]

log = logging.getLogger(__name__)

_STAT_FIELDS = ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")


@dataclass(frozen=True, slots=True)
class ExternalRun:
    """``POST /deployments/external``: the playbook's file name and what runs it."""

    playbook: str
    source: str = "ansible-playbook"


@dataclass(frozen=True, slots=True)
class ExternalEvent:
    """One event as the callback reports it (validated by the API's schema)."""

    event: str
    counter: int
    host: str | None = None
    task: str | None = None
    data: Mapping[str, Any] | None = None


class ExternalRuns:
    """Registers external runs and stores what they report."""

    def __init__(self, repos: Repos, clock: Callable[[], float] = time.time) -> None:
        self._repos = repos
        self._clock = clock

    def register(self, run: ExternalRun, actor: str) -> Deployment:
        now = self._clock()
        deployment = Deployment(
            id=secrets.token_hex(12),
            playbook=run.playbook,
            selector=Selector(),
            target_ids=(),
            target_names=(),
            status="running",
            created_by=actor,
            created_at=now,
            updated_at=now,
            started_at=now,
            external=True,
        )
        self._repos.deployments.create(deployment)
        log.info("external run %s of %s registered by %s (%s)", deployment.id, run.playbook,
                 actor, run.source)  # fmt: skip
        return deployment

    def report(self, deployment_id: str, events: Sequence[ExternalEvent]) -> Deployment:
        """Store ``events`` of the run; its ``playbook_on_stats`` event ends it. 404: no such
        deployment; 409: not an external run, or it has ended."""
        deployment = self._repos.deployments.get(deployment_id)
        if deployment is None:
            raise NotFound(f"deployment {deployment_id!r} does not exist")
        if not deployment.external:
            raise Conflict(
                f"deployment {deployment_id} is run by the master: only runs registered with "
                "POST /deployments/external report events",
                error="not_external",
            )
        if deployment.status != "running":
            raise Conflict(
                f"deployment {deployment_id} has ended ({deployment.status})", error="ended"
            )
        now = self._clock()
        self._repos.deployment_events.append([_stored(deployment, event, now) for event in events])
        stats = next((e for e in events if e.event == "playbook_on_stats"), None)
        if stats is None:
            self._repos.deployments.touch_external(deployment_id, now)
        else:
            status, result = self._outcome(deployment, stats)
            error = None if status == "successful" else "a host failed or was unreachable"
            self._repos.deployments.finish_external(deployment_id, status, result, now, error)
        return self._repos.deployments.get(deployment_id) or deployment

    def _outcome(self, deployment: Deployment, stats: ExternalEvent) -> tuple[str, PhaseResult]:
        data = stats.data or {}
        by_name = {n.name: n.id for n in self._repos.nodes.find(NodeFilter())}
        hosts = tuple(
            HostResult(
                node_id=by_name.get(str(entry.get("host")), ""),
                host=str(entry.get("host")),
                **{key: _count(entry.get(key)) for key in _STAT_FIELDS},
            )
            for entry in data.get("stats") or ()
            if isinstance(entry, Mapping) and entry.get("host")
        )
        failed = data.get("status") == "failed" or any(h.status != "ok" for h in hosts)
        status = "failed" if failed else "successful"
        phase = PhaseResult(playbook=deployment.playbook, status=status, rc=None, hosts=hosts)
        return status, phase


def _count(value: object) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _stored(deployment: Deployment, event: ExternalEvent, now: float) -> DeploymentEvent:
    return DeploymentEvent(
        deployment_id=deployment.id,
        counter=event.counter,
        event=event.event,
        playbook=deployment.playbook,
        created=now,
        host=event.host,
        task=event.task,
        data=dict(event.data or {}),
    )
