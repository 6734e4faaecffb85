"""The leader's side of the deployments queue: claim the next queued deployment, and reap the
ones whose master is gone.

Claiming is one guarded update (queued -> running, with this master's member id as ``owner``
and the claim time), so of several masters that try -- two leaders for a moment during a
failover -- exactly one wins.

Reaping makes sure no deployment stays ``running`` forever. A running deployment is marked
``interrupted`` (guarded on its status and owner, its node locks given back) when

* its owner is another master whose ``election_members`` document is missing or was not
  refreshed within ``leader_ttl`` (that master died or lost the store), or
* its owner is this master but no job of this process runs it (a crash of the job's thread, or
  a store outage when the job tried to record its end).

Node locks whose deployment has ended or never got stored are given back too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from master_api.deployment_models import Deployment, DeploymentEvent
from master_api.errors import StoreUnavailable
from master_api.repos import Repos
from master_api.repos.deployment_events import DeploymentEventsRepo
from master_api.settings import Settings

__all__ = ["DeploymentDispatcher", "append_event"]

log = logging.getLogger(__name__)

#: A lock younger than this may belong to a deployment being created right now.
_ORPHAN_GRACE = 60.0


class DeploymentDispatcher:
    """Claims and reaps on behalf of master ``member_id`` (meant to run on the leader)."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        member_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self.member_id = member_id
        self._clock = clock

    def claim_next(self) -> Deployment | None:
        """Claim the oldest queued deployment for this master; None when there is none (or
        other masters took every candidate first)."""
        for candidate in self._repos.deployments.with_status("queued", limit=10):
            now = self._clock()
            if self._repos.deployments.claim(candidate.id, self.member_id, now):
                claimed = self._repos.deployments.get(candidate.id)
                log.info("deployment %s claimed by %s", candidate.id, self.member_id)
                return claimed
        return None

    def reap(self, running_here: Collection[str]) -> list[str]:
        """Mark running deployments whose master is gone ``interrupted`` (see the module doc);
        ``running_here`` are the ids this process's jobs are running. Returns the ids marked."""
        now = self._clock()
        alive = {m.id for m in self._repos.election_members.find(now - self._settings.leader_ttl)}
        alive.add(self.member_id)
        marked: list[str] = []
        for d in self._repos.deployments.with_status("running"):
            if d.external:
                self._reap_external(d, now, marked)
                continue
            owner = d.owner or ""
            if owner == self.member_id and d.id in running_here:
                continue
            if owner != self.member_id and owner in alive:
                continue
            reason = (
                f"its master {owner or '(none)'} stopped before the run ended"
                if owner != self.member_id
                else "its job in this master ended without recording a status"
            )
            if self._repos.deployments.finish(d.id, owner, "interrupted", now, reason):
                append_event(
                    self._repos.deployment_events,
                    d,
                    "deployment_finished",
                    {"status": "interrupted", "error": reason},
                    now,
                )
                self._repos.deployment_locks.release(d.id)
                marked.append(d.id)
                log.warning("deployment %s interrupted: %s", d.id, reason)
        self._release_orphan_locks(now)
        return marked

    def _reap_external(self, d: Deployment, now: float, marked: list[str]) -> None:
        """An external run is alive while it reports: silent for ``deploy_idle_timeout`` (the
        bound a master's own runs get too), it is marked ``interrupted``."""
        if now - d.updated_at < self._settings.deploy_idle_timeout:
            return
        reason = (
            f"its ansible-playbook run stopped reporting "
            f"({self._settings.deploy_idle_timeout:g} s without an event)"
        )
        if self._repos.deployments.finish_external(d.id, "interrupted", None, now, reason):
            append_event(
                self._repos.deployment_events,
                d,
                "deployment_finished",
                {"status": "interrupted", "error": reason},
                now,
            )
            marked.append(d.id)
            log.warning("external run %s interrupted: %s", d.id, reason)

    def _release_orphan_locks(self, now: float) -> None:
        for lock in self._repos.deployment_locks.all():
            if now - lock.taken_at < _ORPHAN_GRACE:
                continue
            d = self._repos.deployments.get(lock.deployment_id)
            if d is None or not d.active:
                self._repos.deployment_locks.release(lock.deployment_id)
                log.info("released the node locks of ended deployment %s", lock.deployment_id)


def append_event(
    repo: DeploymentEventsRepo,
    deployment: Deployment,
    event: str,
    data: dict[str, object],
    now: float,
) -> None:
    """Store one event after the deployment's last, outside of a run (the deployment is not
    running here, so nothing else numbers its events). A store outage is logged: the status
    change it describes is already stored."""
    try:
        counter = repo.last_counter(deployment.id) + 1
        repo.append(
            [
                DeploymentEvent(
                    deployment_id=deployment.id,
                    counter=counter,
                    event=event,
                    playbook=deployment.playbook,
                    created=now,
                    data=data,
                )
            ]
        )
    except StoreUnavailable as exc:
        log.warning("deployment %s: event %s not stored: %s", deployment.id, event, exc.message)
