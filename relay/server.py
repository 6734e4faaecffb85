"""Lifecycle of a relay node: start services from a config, reload it, drain and stop.

Each service has a ``_Slot``: its listening server plus the current ``ServiceRuntime``. The
protocol factory reads the slot's runtime at accept time, so swapping the runtime on reload
sends new connections to the new config while open ones keep theirs, and the listening socket
is never closed when the service's address did not change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.access_log import AccessLog
from relay.admin import AdminServer, NoReloadSource
from relay.chain import Chain
from relay.config import ConfigError
from relay.config.model import RelayConfig, ServiceConfig
from relay.handlers.http import HttpConnection
from relay.handlers.tunnel import ForwardConnection, RelayServerConnection
from relay.listeners import Listening, listen, prepare_certificates
from relay.metrics import RelayMetrics
from relay.policy import ServicePolicies
from relay.resume.core import SessionTable
from relay.service import ServiceRuntime
from relay.usage import UsageMeter
from relay.usage_api import usage_route
from relay.workers import serve_worker_control

log = logging.getLogger(__name__)

HANDLERS: dict[str, Callable[[ServiceRuntime], asyncio.Protocol]] = {
    "http": HttpConnection,
    "forward": ForwardConnection,
    "relay": RelayServerConnection,
}


@dataclass
class _Slot:
    config: ServiceConfig
    runtime: ServiceRuntime
    server: Listening | None = None
    retired: list[ServiceRuntime] = field(default_factory=list)

    def make_protocol(self) -> asyncio.Protocol:
        runtime = self.runtime
        return HANDLERS[runtime.config.handler.type](runtime)


def _policy_configs(service: ServiceConfig, config: RelayConfig) -> tuple[object, ...]:
    def named(items: tuple[Any, ...], name: str | None) -> object:
        return next((item for item in items if item.name == name), None)

    return (
        named(config.admissions, service.admission),
        named(config.shields, service.shield),
        named(config.ccs, service.cc),
        named(config.climiters, service.climiter),
        named(config.rlimiters, service.rlimiter),
    )


def _alt_svc(service: ServiceConfig, config: RelayConfig) -> bytes | None:
    """``Alt-Svc`` for an http service on TLS when an http3 service with the same handler
    listens on the same port number (UDP), so clients learn they can switch to HTTP/3."""
    port = service.addr.port
    if service.listener.type != "tls" or service.handler.type != "http" or not port:
        return None
    for other in config.services:
        if (
            other.listener.type == "http3"
            and other.handler.type == service.handler.type
            and other.addr.port == port
        ):
            return b'h3=":%d"; ma=86400' % port
    return None


def _listener_key(service: ServiceConfig) -> tuple[object, ...]:
    """What must be equal for a service to keep its listening socket across a reload."""
    return (service.addr, service.listener)


class RelayNode:
    """A running relay node. ``start``, then ``reload`` any number of times, then ``stop``."""

    def __init__(
        self,
        config: RelayConfig,
        metrics: RelayMetrics | None = None,
        reload_source: Callable[[], RelayConfig] | None = None,
        worker_socket: str | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or RelayMetrics()
        #: Produces a freshly loaded config for ``POST /reload`` and SIGHUP (raises ConfigError).
        self.reload_source = reload_source
        #: Set in a worker process: listeners share ports (SO_REUSEPORT) and the admin API is
        #: the supervisor's; this node answers on a control socket at this path instead.
        self.worker_socket = worker_socket
        self._control: asyncio.AbstractServer | None = None
        self._slots: dict[str, _Slot] = {}
        self._chains: dict[str, Chain] = {}
        self._admin: AdminServer | None = None
        #: Runtimes whose connections are draining (removed services, shutdown).
        self._draining: list[ServiceRuntime] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._policies: dict[tuple[object, ...], ServicePolicies] = {}
        #: Resumable streams of this node's relay services; they outlive reloads.
        self.resume_sessions = SessionTable(self.metrics.resume["core"])
        #: Per-key usage of the http services; one per process, kept across reloads.
        self.usage = UsageMeter()
        self.metrics.usage_meter = self.usage
        #: The access log (``accessLog``), opened at start and when a reload changes it.
        self.access_log: AccessLog | None = None

    # --- introspection ----------------------------------------------------------------------

    def bound_port(self, service: str) -> int:
        """The port a service listens on (useful with ``addr: ":0"`` in tests)."""
        server = self._slots[service].server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    def listener(self, service: str) -> Listening:
        """A service's listening server (a ``QuicListener`` for quic services)."""
        server = self._slots[service].server
        assert server is not None
        return server

    @property
    def admin_port(self) -> int | None:
        return self._admin.api_port if self._admin else None

    @property
    def metrics_port(self) -> int | None:
        return self._admin.metrics_port if self._admin else None

    def runtime(self, service: str) -> ServiceRuntime:
        return self._slots[service].runtime

    async def metrics_text(self) -> bytes:
        return self.metrics.exposition()

    async def usage_request(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, object]]:
        return usage_route(self.usage, method, path, query, body)

    def health(self) -> dict[str, object]:
        services = [
            {"name": name, "connections": slot.runtime.stats.connections_active}
            for name, slot in self._slots.items()
        ]
        # ``tasks``: asyncio tasks alive in this process, so leak checks (bench/soak.py) can see
        # a handler task left behind without attaching a debugger.
        tasks = len(asyncio.all_tasks())
        return {
            "status": "ok",
            "version": self.config.version,
            "services": services,
            "tasks": tasks,
        }

    async def reload_from_source(self) -> RelayConfig:
        """Reload from ``reload_source`` (see ``AdminTarget``), counting success and failure."""
        if self.reload_source is None:
            raise NoReloadSource("this node was not started from a config file")
        try:
            new = self.reload_source()
            await self.reload(new)
        except (ConfigError, OSError) as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error("reload refused, the running config stays: %s", exc)
            raise
        self.metrics.reloads.labels("success").inc()
        return new

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.metrics.config_version.set(self.config.version)
        self._open_access_log(self.config)
        warn_insecure_dialers(self.config)
        self._chains = self._build_chains(self.config)
        try:
            for service in self.config.services:
                slot = _Slot(service, self._runtime(service, self.config, self._chains))
                slot.server = await self._listen(service, self.config, slot)
                slot.runtime.start()
                self._slots[service.name] = slot
                log.info("service %s listening on %s (%s/%s)", service.name, service.addr,
                         service.handler.type, service.listener.type)  # fmt: skip
            if self.worker_socket is not None:
                self._control = await serve_worker_control(self, self.worker_socket)
            else:
                self._admin = AdminServer(self)
                await self._admin.start(self.config)
        except BaseException:
            await self.stop(0)
            raise

    async def reload(self, new: RelayConfig) -> None:
        """Swap in ``new`` (already validated).

        Services whose address and listener are unchanged keep their listening socket; the
        others get a new one, bound before anything is swapped. Kept TLS listeners read their
        certificate files again, so a reload after replacing them (rotation) serves the new
        certificates to new connections while open streams go on. Raises ``OSError`` when an
        address cannot be bound and ``ssl.SSLError``/``ValueError`` for unusable certificate
        files, and the node then keeps running what it had.
        """
        chains = self._build_chains(new)
        previous_log = self.access_log
        self._open_access_log(new)
        warn_insecure_dialers(new)
        runtimes = {s.name: self._runtime(s, new, chains) for s in new.services}
        fresh: dict[str, _Slot] = {}
        rotations: list[Callable[[], None]] = []
        try:
            for service in new.services:
                old = self._slots.get(service.name)
                if old is not None and _listener_key(old.config) == _listener_key(service):
                    assert old.server is not None
                    rotate = prepare_certificates(
                        old.server, service.listener.tls or new.tls, new.base_dir
                    )
                    if rotate is not None:
                        rotations.append(rotate)
                    continue
                slot = _Slot(service, runtimes[service.name])
                slot.server = await self._listen(service, new, slot)
                fresh[service.name] = slot
        except BaseException:
            for slot in fresh.values():
                assert slot.server is not None
                slot.server.close()
            raise
        for rotate in rotations:
            rotate()
        slots: dict[str, _Slot] = {}
        for service in new.services:
            if service.name in fresh:
                slot = fresh[service.name]
            else:  # keep the socket; new connections get the new runtime
                slot = self._slots[service.name]
                slot.retired.append(slot.runtime)
                slot.runtime, slot.config = runtimes[service.name], service
            slot.runtime.start()
            slots[service.name] = slot
        loop = asyncio.get_running_loop()
        for name, old in self._slots.items():
            if slots.get(name) is not old:
                if old.server is not None:
                    old.server.close()
                task = loop.create_task(
                    self._drain([*old.retired, old.runtime], new.shutdown_timeout)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for slot in slots.values():
            # Old runtimes keep serving their open connections but stop their probes now.
            for runtime in slot.retired:
                await runtime.stop()
            for runtime in slot.retired:
                if not runtime.connections:
                    runtime.upstream_pool.close_all()  # idle tunnels its last clients left
            slot.retired = [r for r in slot.retired if r.connections]
        self._slots = slots
        self._chains = chains
        if previous_log is not None and previous_log is not self.access_log:
            previous_log.close()
        self.config = new
        self.metrics.config_version.set(new.version)
        if self._admin is not None:
            await self._admin.reconfigure(new)
        log.info("config reloaded (version %s)", new.version)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let open connections finish for ``timeout`` seconds, then close."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        if self._control is not None:
            self._control.close()
            self._control = None
        runtimes: list[ServiceRuntime] = []
        for slot in self._slots.values():
            if slot.server is not None:
                slot.server.close()
            runtimes.extend(slot.retired)
            runtimes.append(slot.runtime)
        self._slots = {}
        for task in list(self._tasks):
            task.cancel()
        await self._drain(runtimes, timeout)
        self.resume_sessions.close_all()
        if self.access_log is not None:
            self.access_log.close()

    def abort_all(self) -> None:
        """Close every connection at once (a second SIGTERM during a drain)."""
        for slot in self._slots.values():
            for runtime in [*slot.retired, slot.runtime]:
                for conn in list(runtime.connections):
                    conn.abort()
        for runtime in self._draining:
            for conn in list(runtime.connections):
                conn.abort()

    async def _drain(self, runtimes: list[ServiceRuntime], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._draining.extend(runtimes)
        for runtime in runtimes:
            runtime.draining = True
            runtime.upstream_pool.close_all()  # idle tunnels carry nothing; let peers drain
            for conn in list(runtime.connections):
                conn.close()  # idle ones close now; busy ones after their exchange
        deadline = loop.time() + timeout
        while any(r.connections for r in runtimes) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for runtime in runtimes:
            for conn in list(runtime.connections):
                conn.abort()
            await runtime.stop()
            self._draining.remove(runtime)

    # --- building ---------------------------------------------------------------------------

    async def _listen(self, service: ServiceConfig, config: RelayConfig, slot: _Slot) -> Listening:
        return await listen(
            service, config.tls, config.base_dir, slot.make_protocol,
            reuse_port=self.worker_socket is not None,
        )  # fmt: skip

    def _build_chains(self, config: RelayConfig) -> dict[str, Chain]:
        chains = {chain.name: Chain(chain, config.base_dir) for chain in config.chains}
        for chain in chains.values():
            chain.resume_stats = self.metrics.resume["edge"]
        return chains

    def _runtime(
        self, service: ServiceConfig, config: RelayConfig, chains: dict[str, Chain]
    ) -> ServiceRuntime:
        chain = chains[service.handler.chain] if service.handler.chain else None
        policies = self._service_policies(service, config)
        runtime = ServiceRuntime(service, chain, self.metrics, config.base_dir, policies)
        runtime.alt_svc = _alt_svc(service, config)
        if service.handler.type == "relay" and service.handler.resume.enabled:
            runtime.resume_sessions = self.resume_sessions
        if service.handler.type == "http":
            runtime.usage = self.usage
            runtime.access_log = self.access_log
        return runtime

    def _open_access_log(self, config: RelayConfig) -> None:
        """Open ``config``'s access log unless the one open already is the same (a reload that
        does not touch ``accessLog`` keeps the file and its counters)."""
        wanted = config.access_log
        current = self.access_log
        if current is not None and current.config == wanted and current.base_dir == config.base_dir:
            return
        # A worker's control socket is ``worker-<i>.sock``: its log is ``<file>-worker-<i>``.
        worker = os.path.splitext(os.path.basename(self.worker_socket or ""))[0]
        self.access_log = AccessLog(wanted, config.base_dir, worker) if wanted is not None else None
        self.metrics.access_log = self.access_log

    def _service_policies(
        self, service: ServiceConfig, config: RelayConfig
    ) -> ServicePolicies | None:
        """The service's policies, the same instance across reloads while their configs stay
        the same: a reload must not lift blocks, forget rates or lose connection counts."""
        policies = ServicePolicies.for_service(service, config)
        if not policies.enabled:
            return None
        key = (service.name, *_policy_configs(service, config))
        kept = self._policies.get(key)
        if kept is None:
            self._policies = {k: v for k, v in self._policies.items() if k[0] != service.name}
            self._policies[key] = kept = policies
        return kept


def warn_insecure_dialers(config: RelayConfig) -> None:
    """Log a warning for every dialer told not to verify its peer's certificate: dialers
    verify by default, and turning that off must never go unnoticed."""
    for chain in config.chains:
        for hop in chain.hops:
            for node in hop.nodes:
                tls = node.dialer.tls
                secure = node.dialer.type in ("tls", "wss", "mtls", "quic")
                if secure and tls and tls.insecure_skip_verify:
                    log.warning(
                        "chain %s node %s (%s %s): insecureSkipVerify is set, the peer's "
                        "certificate is NOT verified; anyone on the path can impersonate it",
                        chain.name, node.name, node.dialer.type, node.addr,
                    )  # fmt: skip
