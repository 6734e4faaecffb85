"""A claimed deployment from start to end: its playbook, the automatic rollback of a failed
deploy, the nodes' recorded versions, the final status, and giving its node locks back.

Final status (``PhaseResult.status`` is runner's):

=====================  ===========================================================================
run ended              deployment
=====================  ===========================================================================
successful             ``successful``
canceled               ``canceled`` (``POST /cancel``), or ``interrupted`` (the master shut down)
failed, timeout,       ``failed``; but for a ``deploy`` with ``auto_rollback`` (not in check mode)
error                  ``rollback.yml`` then runs on the hosts the deploy touched, and the
                       deployment is ``rolled_back`` when that succeeds
=====================  ===========================================================================

Nodes (never in check mode), for every host that ended ``ok`` in a successful run: ``deploy``
records ``release`` (the one before becomes ``previous_release``) and the config version its
host was given (``PhaseResult.config_versions``) as the node's ``applied_version``;
``rollback`` records the ``release`` it returned to (or the node's ``previous_release``);
``reload`` records ``applied_version``. A failed run records nothing:
its failing batch went back to its previous release, and the agents' heartbeats report what
actually runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from master_api.deployment_models import Deployment, PhaseResult
from master_api.errors import StoreUnavailable
from master_api.jobs.events import EventSink
from master_api.jobs.job import CancelCheck, DeploymentJob, RollbackJob
from master_api.repos import Repos
from master_api.settings import Settings

__all__ = ["DeploymentExecutor", "Outcome"]

log = logging.getLogger(__name__)

_FINISH_TRIES = 5


@dataclass(frozen=True, slots=True)
class Outcome:
    """The status a deployment ends with, and why (``error``: None when all went well)."""

    status: str
    error: str | None = None


class DeploymentExecutor:
    """Runs claimed deployments (one :meth:`execute` call per deployment, on any thread).

    ``shutdown`` stops every running playbook (the deployments end ``interrupted``).
    ``job_class`` and ``rollback_class`` are the job types (overridable, e.g. in tests).
    """

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        shutdown: threading.Event,
        clock: Callable[[], float] = time.time,
        job_class: type[DeploymentJob] = DeploymentJob,
        rollback_class: type[RollbackJob] = RollbackJob,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._shutdown = shutdown
        self._clock = clock
        self._job_class = job_class
        self._rollback_class = rollback_class

    def execute(self, deployment: Deployment, owner: str) -> Outcome:
        """Run ``deployment`` (already claimed by ``owner``) to its end; returns its outcome.

        Never raises: an unexpected error ends the deployment ``failed`` with the error recorded
        (STYLE E6). The node locks are given back in every case.
        """
        d = deployment
        sink = EventSink(
            self._repos.deployment_events,
            d.id,
            self._last_counter(d.id),
            self._settings.deploy_event_batch,
            self._settings.deploy_event_flush,
        )
        cancel = CancelCheck(self._repos, d.id, self._shutdown)
        outcome = Outcome("failed", "the run did not complete")
        try:
            sink.emit(
                "deployment_started",
                d.playbook,
                data={"owner": owner, "targets": list(d.target_names)},
            )
            sink.flush()
            outcome = self._run(d, owner, sink, cancel)
        except Exception as exc:  # task boundary (STYLE E6): log, record, never lose the status
            log.exception("deployment %s crashed", d.id)
            outcome = Outcome("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._finish(d, owner, sink, outcome)
        return outcome

    def _run(self, d: Deployment, owner: str, sink: EventSink, cancel: CancelCheck) -> Outcome:
        result = self._job_class(d, self._repos, self._settings, sink, cancel).run()
        self._store_phase(d, owner, "result", result)
        outcome = _outcome(result, cancel)
        if outcome.status != "failed" or not self._wants_rollback(d, result):
            if outcome.status == "successful" and not d.check_mode:
                self._record_nodes(d, result)
            return outcome
        sink.emit("rollback_started", "rollback", data={"hosts": list(result.touched)})
        rollback = self._rollback_class(
            d, self._repos, self._settings, sink, cancel, hosts=result.touched
        ).run()
        self._store_phase(d, owner, "rollback", rollback)
        after = _outcome(rollback, cancel)
        if after.status == "successful":
            return Outcome("rolled_back", f"{outcome.error}; rolled back on the touched hosts")
        if after.status in ("canceled", "interrupted"):
            return Outcome(after.status, f"{outcome.error}; rollback stopped: {after.error}")
        return Outcome("failed", f"{outcome.error}; rollback failed too: {after.error}")

    @staticmethod
    def _wants_rollback(d: Deployment, result: PhaseResult) -> bool:
        return (
            d.playbook == "deploy" and d.auto_rollback and not d.check_mode and bool(result.touched)
        )

    def _store_phase(self, d: Deployment, owner: str, key: str, phase: PhaseResult) -> None:
        # A store outage loses the per-host detail, not the run: the status is stored later.
        try:
            self._repos.deployments.record_phase(d.id, owner, key, phase, self._clock())
        except StoreUnavailable as exc:
            log.error("deployment %s: %s of %s not stored: %s", d.id, key, phase.playbook, exc)

    def _record_nodes(self, d: Deployment, result: PhaseResult) -> None:
        now = self._clock()
        for host in result.hosts:
            if host.status != "ok" or not host.node_id:
                continue
            try:
                version = result.config_versions.get(host.node_id)
                if d.playbook == "deploy":
                    self._repos.nodes.record_release(host.node_id, d.release, version, now)
                elif d.playbook == "rollback":
                    self._repos.nodes.record_rollback(host.node_id, d.release, now)
                elif version is not None:
                    self._repos.nodes.record_release(host.node_id, None, version, now)
            except StoreUnavailable as exc:
                log.error("deployment %s: node %s not updated: %s", d.id, host.host, exc)

    def _last_counter(self, deployment_id: str) -> int:
        # A freshly claimed deployment has no events yet; read anyway (cheap) in case one does.
        try:
            return self._repos.deployment_events.last_counter(deployment_id)
        except StoreUnavailable:
            return 0

    def _finish(self, d: Deployment, owner: str, sink: EventSink, outcome: Outcome) -> None:
        """Store the final status (retried through a short store outage), then give the node
        locks back. If the store stays away, the deployment stays ``running`` under this
        master, and the leader's reaper marks it ``interrupted`` once it sees no job for it."""
        sink.emit(
            "deployment_finished",
            d.playbook,
            data={"status": outcome.status, "error": outcome.error},
        )
        delay = 0.5
        for attempt in range(_FINISH_TRIES):
            try:
                sink.flush()
                if not self._repos.deployments.finish(
                    d.id, owner, outcome.status, self._clock(), outcome.error
                ):
                    log.warning("deployment %s was finished by another master", d.id)
                self._repos.deployment_locks.release(d.id)
                log.info("deployment %s ended %s", d.id, outcome.status)
                return
            except StoreUnavailable as exc:
                if attempt + 1 == _FINISH_TRIES or self._shutdown.wait(delay):
                    log.error("deployment %s: cannot store its end: %s", d.id, exc.message)
                    return
                delay *= 2


def _outcome(result: PhaseResult, cancel: CancelCheck) -> Outcome:
    if result.status == "successful":
        return Outcome("successful")
    if result.status == "canceled":
        if cancel.reason == "shutdown":
            return Outcome("interrupted", "the master shut down during the run")
        if cancel.reason == "lost":
            return Outcome("interrupted", "stopped: the deployment was taken for interrupted")
        return Outcome("canceled", f"{result.playbook} was canceled")
    if result.status == "timeout":
        return Outcome("failed", f"{result.playbook} timed out (idle or job timeout)")
    if result.status == "error":
        return Outcome("failed", f"{result.playbook} could not run: {result.error}")
    failing = [h.host for h in result.hosts if h.status != "ok"]
    where = f" on {', '.join(failing)}" if failing else ""
    if result.rc is None and result.error:
        return Outcome("failed", f"{result.playbook} failed{where}: {result.error}")
    return Outcome("failed", f"{result.playbook} failed{where} (rc {result.rc})")
