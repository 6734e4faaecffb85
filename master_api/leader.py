"""Leader election among masters sharing one database, and the leader's background work.

:class:`LeaderElector` keeps a lease in ``leaders`` (the guarded pattern of ``shared/mongo.md``,
see :class:`~master_api.repos.leaders.LeadersRepo`) and this process's document in
``election_members``, renewing both every ``leader_renew_interval`` on a daemon thread. A
master counts itself leader only while its last successful renewal is younger than the TTL,
measured on its own monotonic clock: if the store becomes unreachable it stops leading before
another master can take the lease over.

:class:`BackgroundWorker` runs the leader-only periodic jobs (node liveness and alerts) on its
own thread, so a slow job never delays a lease renewal; :class:`DeploymentWorker` claims queued
deployments and runs each playbook on a thread of its own (a run takes minutes).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence

from master_api.deployment_models import Deployment
from master_api.errors import StoreUnavailable
from master_api.jobs.dispatch import DeploymentDispatcher
from master_api.jobs.executor import DeploymentExecutor
from master_api.models import Member
from master_api.repos import Repos
from master_api.settings import Settings

__all__ = ["LEASE_NAME", "BackgroundWorker", "DeploymentWorker", "LeaderElector"]

log = logging.getLogger(__name__)

LEASE_NAME = "master"


class LeaderElector:
    """Campaign for the ``master`` lease until :meth:`stop`. Thread-safe reads of
    :attr:`is_leader`."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        http_addr: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self.member_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._member = Member(
            id=self.member_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            http_addr=http_addr,
            started_at=clock(),
            last_seen=clock(),
        )
        self._valid_until = 0.0  # monotonic time until which our lease certainly holds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while this process holds a lease that cannot have expired yet."""
        with self._lock:
            return self._monotonic() < self._valid_until

    def tick(self) -> bool:
        """Refresh membership and take or renew the lease once; returns :attr:`is_leader`.

        A store outage is logged and costs the lease only once the TTL has run out.
        """
        started = self._monotonic()
        was_leader = self.is_leader
        try:
            now = self._clock()
            self._repos.election_members.heartbeat(
                Member(
                    id=self._member.id,
                    host=self._member.host,
                    pid=self._member.pid,
                    http_addr=self._member.http_addr,
                    started_at=self._member.started_at,
                    last_seen=now,
                )
            )
            held = self._repos.leaders.acquire(
                LEASE_NAME, self.member_id, self._settings.leader_ttl, now
            )
        except StoreUnavailable as exc:
            log.warning("leader election: %s", exc.message)
            return self.is_leader
        with self._lock:
            # Measured from before the request: the lease was written no earlier than that.
            self._valid_until = started + self._settings.leader_ttl if held else 0.0
        if held and not was_leader:
            log.info("this master (%s) is now the leader", self.member_id)
        elif was_leader and not held:
            log.warning("this master (%s) lost the leadership", self.member_id)
        return held

    def start(self) -> None:
        """Campaign on a daemon thread (one tick at once, then every renew interval)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; with ``release``, give the lease up so another master leads now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._settings.leader_renew_interval + 5.0)
            self._thread = None
        was_leader = self.is_leader
        with self._lock:
            self._valid_until = 0.0
        if not release:
            return
        try:
            if was_leader:
                self._repos.leaders.release(LEASE_NAME, self.member_id)
            self._repos.election_members.remove(self.member_id)
        except StoreUnavailable as exc:
            log.warning("could not release the leadership cleanly: %s", exc.message)

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # thread boundary (STYLE E6): log and keep campaigning
                log.exception("leader election tick failed")
            if self._stop.wait(self._settings.leader_renew_interval):
                return


Job = Callable[[], object]


class BackgroundWorker:
    """Runs ``jobs`` every ``interval`` seconds, but only while ``is_leader()`` is true."""

    def __init__(
        self, is_leader: Callable[[], bool], jobs: Sequence[tuple[str, Job]], interval: float
    ) -> None:
        self._is_leader = is_leader
        self._jobs = list(jobs)
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """Run every job once if leading; a failing job is logged and the others still run."""
        for name, job in self._jobs:
            if not self._is_leader():
                return
            try:
                job()
            except StoreUnavailable as exc:
                log.warning("background job %s skipped: %s", name, exc.message)
            except Exception:  # job boundary (STYLE E6): record it, keep the worker alive
                log.exception("background job %s failed", name)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="leader-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()


class DeploymentWorker:
    """The leader's deployment runner (DESIGN §6: ansible-runner in the master).

    Every ``Settings.deploy_poll_interval`` while this master leads: :meth:`run_once` reaps
    running deployments whose master is gone (they end ``interrupted``), then claims queued ones
    and runs each on its own thread, at most ``Settings.deploy_max_parallel`` at once. A master
    that stops leading finishes the runs it has but claims no more. :meth:`stop` interrupts the
    playbooks still running (their deployments end ``interrupted``) and waits for them.
    """

    def __init__(
        self,
        is_leader: Callable[[], bool],
        repos: Repos,
        settings: Settings,
        member_id: str,
    ) -> None:
        self._is_leader = is_leader
        self._settings = settings
        self.shutdown = threading.Event()
        self.dispatcher = DeploymentDispatcher(repos, settings, member_id)
        self.executor = DeploymentExecutor(repos, settings, self.shutdown)
        self._lock = threading.Lock()
        self._jobs: dict[str, threading.Thread] = {}
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> set[str]:
        """Ids of the deployments this process is running now."""
        with self._lock:
            return set(self._jobs)

    def run_once(self) -> list[str]:
        """Reap, then claim and start queued deployments if leading; returns the ids started.
        A store outage is logged and the pass skipped."""
        if not self._is_leader() or self.shutdown.is_set():
            return []
        started: list[str] = []
        try:
            self.dispatcher.reap(self.running)
            while len(self.running) < self._settings.deploy_max_parallel:
                if not self._is_leader() or self.shutdown.is_set():
                    break
                deployment = self.dispatcher.claim_next()
                if deployment is None:
                    break
                self._start_job(deployment)
                started.append(deployment.id)
        except StoreUnavailable as exc:
            log.warning("deployment worker pass skipped: %s", exc.message)
        return started

    def _start_job(self, deployment: Deployment) -> None:
        thread = threading.Thread(
            target=self._run_job,
            args=(deployment,),
            name=f"deployment-{deployment.id}",
            daemon=True,
        )
        with self._lock:
            self._jobs[deployment.id] = thread
        thread.start()

    def _run_job(self, deployment: Deployment) -> None:
        try:
            self.executor.execute(deployment, self.dispatcher.member_id)
        finally:
            with self._lock:
                self._jobs.pop(deployment.id, None)

    def start(self) -> None:
        """Poll on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="deployments", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, interrupt the running playbooks, and wait up to ``timeout`` seconds
        for their jobs to record how they ended."""
        self.shutdown.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._jobs.values())
        for thread in jobs:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self.shutdown.wait(self._settings.deploy_poll_interval):
            try:
                self.run_once()
            except Exception:  # thread boundary (STYLE E6): log and keep polling
                log.exception("deployment worker pass failed")


def housekeeping(repos: Repos, settings: Settings, clock: Callable[[], float] = time.time) -> None:
    """Forget expired revocations and login windows, and members gone for a long time."""
    now = clock()
    repos.revoked_tokens.purge_expired(now)
    repos.login_attempts.purge_expired(now)
    repos.election_members.purge(now - 10 * settings.leader_ttl)
