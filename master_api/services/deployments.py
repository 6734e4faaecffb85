"""Deployments as the API sees them: create (queue), read, list, cancel, and their events.

Overlap -- the choice made here: **refuse**. A deployment takes the lock of each of its target
nodes when it is created (``deployment_locks``, one ``insert_one`` per node), and a second
deployment that targets any node under a queued or running deployment is refused with 409,
naming the node and the deployment holding it. Simpler and more explicit than a wait queue: the
caller learns at once that its change cannot happen now, and nothing runs later on a fleet that
may have changed meanwhile. The locks go back when the deployment ends (any final status).

The targets are resolved when the deployment is created (the selector's nodes at that moment);
the job reads their current documents when it runs.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence

from master_api.deployment_models import (
    Deployment,
    DeploymentEvent,
    DeploymentRequest,
)
from master_api.errors import BadRequest, Conflict, NotFound
from master_api.jobs.dispatch import append_event
from master_api.models import Node
from master_api.repos import NodeFilter, Repos
from master_api.repos.deployment_locks import NodeLock
from master_api.settings import Settings

__all__ = ["DeploymentService"]

log = logging.getLogger(__name__)

#: A lock younger than this whose deployment is not stored yet belongs to a creation in flight.
_LOCK_GRACE = 60.0


class DeploymentService:
    """The deployments of one app (``services().deployments``)."""

    def __init__(
        self, repos: Repos, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._clock = clock

    # -- create ---------------------------------------------------------------------------------

    def create(self, request: DeploymentRequest, actor: str) -> Deployment:
        """Queue ``request`` for the leader's worker; returns the stored deployment.

        Raises ``BadRequest`` (400: auto_rollback on a playbook other than deploy, an unknown
        config version or node, a selector matching no node) and ``Conflict`` (409: a target
        node is under another queued or running deployment).
        """
        if request.auto_rollback and request.playbook != "deploy":
            raise BadRequest(
                "body.auto_rollback: only a deploy can roll back automatically",
                extra={"field": "body.auto_rollback"},
            )
        if (
            request.config_version is not None
            and self._repos.config_versions.get(request.config_version) is None
        ):
            raise BadRequest(
                f"body.config_version: no config version {request.config_version}",
                extra={"field": "body.config_version"},
            )
        targets = self._targets(request)
        now = self._clock()
        deployment = Deployment(
            id=secrets.token_hex(12),
            playbook=request.playbook,
            selector=request.selector,
            target_ids=tuple(n.id for n in targets),
            target_names=tuple(n.name for n in targets),
            status="queued",
            created_by=actor,
            created_at=now,
            updated_at=now,
            config_version=request.config_version,
            release=request.release,
            serial=request.serial,
            max_fail_percentage=request.max_fail_percentage,
            check_mode=request.check_mode,
            auto_rollback=request.auto_rollback,
        )
        self._lock(deployment, targets, now)
        try:
            self._repos.deployments.create(deployment)
        except BaseException:
            self._repos.deployment_locks.release(deployment.id)
            raise
        log.info(
            "deployment %s queued by %s: %s on %s",
            deployment.id,
            actor,
            deployment.playbook,
            ", ".join(deployment.target_names),
        )
        return deployment

    def _targets(self, request: DeploymentRequest) -> list[Node]:
        selector = request.selector
        nodes = self._repos.nodes.find(NodeFilter())
        known = {n.id for n in nodes} | {n.name for n in nodes}
        unknown = [name for name in selector.nodes if name not in known]
        if unknown:
            raise BadRequest(
                f"body.selector.nodes: no such node(s): {', '.join(unknown[:10])}",
                extra={"field": "body.selector.nodes"},
            )
        targets = [n for n in nodes if selector.matches(n)]
        if not targets:
            raise BadRequest(
                "body.selector: matches no node (offline and draining nodes count only when "
                "named in selector.nodes)",
                extra={"field": "body.selector"},
            )
        return targets

    def _lock(self, deployment: Deployment, targets: Sequence[Node], now: float) -> None:
        node_ids = [n.id for n in targets]
        for _ in range(2):
            held = self._repos.deployment_locks.acquire(deployment.id, node_ids, now)
            if not held:
                return
            if not self._release_stale(held, now):
                break
        names = {n.id: n.name for n in targets}
        detail = "; ".join(
            f"node {names.get(lock.node_id, lock.node_id)} is under deployment {lock.deployment_id}"
            for lock in held[:10]
        )
        raise Conflict(
            f"another queued or running deployment targets the same node(s): {detail}",
            error="deployment_overlap",
        )

    def _release_stale(self, held: Sequence[NodeLock], now: float) -> bool:
        """Give back locks whose deployment has ended (its end raced our creation, or its
        master died before giving them back). True when any was released."""
        released = False
        for lock in held:
            current = self._repos.deployments.get(lock.deployment_id)
            stale = (current is not None and not current.active) or (
                current is None and now - lock.taken_at > _LOCK_GRACE
            )
            if stale:
                self._repos.deployment_locks.release(lock.deployment_id)
                released = True
        return released

    # -- read -----------------------------------------------------------------------------------

    def get(self, deployment_id: str) -> Deployment:
        """The deployment, or ``NotFound`` (404)."""
        deployment = self._repos.deployments.get(deployment_id)
        if deployment is None:
            raise NotFound(f"deployment {deployment_id!r} does not exist")
        return deployment

    def events(self, deployment_id: str, after: int, limit: int = 500) -> list[DeploymentEvent]:
        """Events with ``counter > after``, oldest first (the deployment must exist)."""
        return self._repos.deployment_events.since(deployment_id, after, limit)

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, deployment_id: str, actor: str) -> Deployment:
        """Cancel: a queued deployment ends ``canceled`` at once; a running one gets its cancel
        flag, which its job reads within a second (it then ends ``canceled``). Raises
        ``NotFound`` and ``Conflict`` (409: it has already ended)."""
        deployment = self.get(deployment_id)
        now = self._clock()
        if deployment.status == "queued" and self._repos.deployments.cancel_queued(
            deployment_id, actor, now
        ):
            self._repos.deployment_locks.release(deployment_id)
            append_event(
                self._repos.deployment_events,
                deployment,
                "deployment_finished",
                {"status": "canceled", "error": f"canceled by {actor} before it ran"},
                now,
            )
            log.info("deployment %s canceled by %s before it ran", deployment_id, actor)
            return self.get(deployment_id)
        if self._repos.deployments.request_cancel(deployment_id, actor, now):
            log.info("deployment %s: cancel requested by %s", deployment_id, actor)
            return self.get(deployment_id)
        current = self.get(deployment_id)
        raise Conflict(f"deployment {deployment_id} has already ended ({current.status})")
