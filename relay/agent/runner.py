"""The agent's life: sessions with a master, heartbeats, hot push, the command stream.

One *session* is one master: ``Register``, then a heartbeat every ``heartbeat_interval``
(metrics read from the relay) while the ``ExecuteCommand`` stream runs beside it. When a
heartbeat answers ``config_updated``, the agent fetches the version (``PushConfig``), applies
it (``relay.agent.apply``) and reports the outcome (``ReportStatus``).

When a call fails (master down, deadline, refused credentials, a malformed answer) the session
ends and the next one goes to the next master in the list, after a delay that doubles from
``reconnect_initial`` to ``reconnect_max`` (with jitter) and starts over once a session
registers. Nothing a master answers can stop the agent: only the stop event does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio

from relay import __version__
from relay.agent.apply import ApplyResult, ConfigApplier, PushedConfig
from relay.agent.commands import CommandRunner
from relay.agent.config import AgentConfig
from relay.agent.relay_api import RelayApi, RelayApiError, RelayEndpoints, relay_endpoints
from relay.agent.rpc import AgentStub, auth_metadata, channel_options, make_stub, pb
from relay.agent.sampling import MetricsSampler, RelaySample
from relay.agent.usage import UsageCarrier
from relay.config import Address

__all__ = ["Agent", "MasterUnavailable"]

log = logging.getLogger("relay.agent")

_T = TypeVar("_T")
_OUTCOMES = {"applied": pb.APPLIED, "rejected": pb.REJECTED, "rolled_back": pb.ROLLED_BACK}


class MasterUnavailable(Exception):
    """The current master cannot be used (unreachable, refused us, answered nonsense)."""

    def __init__(self, master: Address, reason: str, registered: bool = False) -> None:
        super().__init__(f"master {master}: {reason}")
        self.master = master
        self.reason = reason
        self.registered = registered
        """The session had registered before it failed (the reconnect delay starts over)."""


class Agent:
    """The agent of one relay node; :meth:`run` until the stop event is set."""

    def __init__(self, config: AgentConfig, endpoints: RelayEndpoints | None = None) -> None:
        """``endpoints`` default to :func:`relay_endpoints` (raises ``RelayApiError`` when the
        relay's admin API address cannot be found)."""
        self.config = config
        self._endpoints = endpoints or relay_endpoints(config)
        self._sampler = MetricsSampler()
        self._applier = ConfigApplier(config.relay_config, self._api, config.health_timeout)
        self._commands = CommandRunner(config, self._api, self.status, self._applier.lock)
        self._failed: dict[int, float] = {}
        """version -> when it last failed here (monotonic)."""
        self._unreported: ApplyResult | None = None
        self._metadata = auth_metadata(config.node_id, config.token)
        self.master: Address | None = None
        """The master of the current session (None between sessions)."""
        self.applied_version: int | None = None
        self.last_result: ApplyResult | None = None
        self.heartbeats = 0
        self._usage = UsageCarrier()

    def _api(self) -> RelayApi:
        return RelayApi(self._endpoints, timeout=self.config.rpc_timeout)

    def status(self) -> Mapping[str, object]:
        """The agent's part of the ``status`` command."""
        last = self.last_result
        return {
            "node_id": self.config.node_id,
            "agent_version": __version__,
            "master": str(self.master) if self.master else None,
            "applied_version": self.applied_version,
            "heartbeats": self.heartbeats,
            "last_apply": None
            if last is None
            else {"version": last.version, "outcome": last.outcome, "message": last.message},
        }

    # --- sessions -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session with one of the masters until ``stop`` is set; never raises for
        anything a master or the relay does."""
        masters = self.config.masters
        index = 0
        delay = self.config.reconnect_initial
        while not stop.is_set():
            master = masters[index % len(masters)]
            registered = False
            try:
                registered = await self._session(master, stop)
            except MasterUnavailable as exc:
                registered = exc.registered
                log.warning("%s; trying %s", exc, masters[(index + 1) % len(masters)])
            except Exception:
                # The session boundary (STYLE E6): whatever broke, log it and start over.
                log.exception("session with master %s failed", master)
            finally:
                self.master = None
            if stop.is_set():
                break
            index += 1
            if registered:
                delay = self.config.reconnect_initial
            await _wait(stop, delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.config.reconnect_max)

    def _channel(self, master: Address) -> grpc.aio.Channel:
        target = str(master)
        options: list[tuple[str, int | str]] = list(channel_options())
        tls = self.config.tls
        if tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.ca_file).read_bytes() if tls.ca_file else None,
            private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
            certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None,
        )
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _rpc(self, master: Address, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise MasterUnavailable(master, f"{exc.code().name}: {exc.details()}") from None

    async def _session(self, master: Address, stop: asyncio.Event) -> bool:
        """One master until ``stop`` (returns True) or a failure (raises MasterUnavailable)."""
        channel = self._channel(master)
        try:
            stub = make_stub(channel)
            _, running = await self._relay_health()
            reply = await self._rpc(
                master,
                stub.Register(
                    pb.RegisterRequest(
                        agent_version=__version__,
                        hostname=socket.gethostname(),
                        applied_version=running,
                    ),
                    timeout=self.config.rpc_timeout,
                    metadata=self._metadata,
                ),
            )
            self.master = master
            log.info(
                "registered with master %s as %s (%s, %s); desired version %s",
                master, reply.name, reply.type, reply.region,
                reply.desired_version if reply.HasField("desired_version") else "none",
            )  # fmt: skip
            commands = asyncio.create_task(self._command_stream(stub, master, stop))
            try:
                if self._unreported is not None:
                    await self._report(stub, master, self._unreported)
                await self._heartbeats(stub, master, stop)
            except MasterUnavailable as exc:
                raise MasterUnavailable(master, exc.reason, registered=True) from None
            finally:
                commands.cancel()
                await asyncio.gather(commands, return_exceptions=True)
            return True
        finally:
            await channel.close(grace=None)

    async def _heartbeats(self, stub: AgentStub, master: Address, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await self._heartbeat(stub, master)
            await _wait(stop, self.config.heartbeat_interval - (loop.time() - started))

    # --- heartbeat and hot push ---------------------------------------------------------------

    async def _relay_health(self) -> tuple[bool, int | None]:
        """(relay answers, the version it runs or None)."""
        try:
            version = (await self._api().health()).get("version")
        except RelayApiError:
            return False, None
        running = version if isinstance(version, int) and version > 0 else None
        self.applied_version = running
        return True, running

    async def _sample(self) -> RelaySample:
        try:
            text = await self._api().metrics_text()
            return self._sampler.sample(text, asyncio.get_running_loop().time())
        except (RelayApiError, ValueError) as exc:
            log.debug("no relay metrics: %s", exc)
            self._sampler.reset()
            return RelaySample()

    async def _heartbeat(self, stub: AgentStub, master: Address) -> None:
        up, running = await self._relay_health()
        sample = await self._sample()
        usage = await self._usage.take(self._api()) if up else None
        reply = await self._rpc(
            master,
            stub.Heartbeat(
                pb.HeartbeatRequest(
                    metrics=_metrics_message(sample),
                    applied_version=running,
                    relay_up=up,
                    usage=usage,
                ),
                timeout=self.config.rpc_timeout,
                metadata=self._metadata,
            ),
        )
        self.heartbeats += 1
        if up:
            await self._usage.settle(self._api(), usage, reply)
        if reply.config_updated and reply.HasField("desired_version"):
            if up:
                await self._update(stub, master, reply.desired_version)
            else:
                log.warning(
                    "version %d waits: the relay's admin API does not answer",
                    reply.desired_version,
                )

    async def _update(self, stub: AgentStub, master: Address, desired: int) -> None:
        """Fetch, apply and report ``desired``, unless it failed here less than
        ``retry_failed_after`` ago (a broken version must not churn the relay, nor make the
        master render it every heartbeat)."""
        failed_at = self._failed.get(desired)
        if failed_at is not None and time.monotonic() - failed_at < self.config.retry_failed_after:
            return
        try:
            reply = await stub.PushConfig(
                pb.PushConfigRequest(version=desired),
                timeout=self.config.rpc_timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                log.warning("the master has no config for this node: %s", exc.details())
                return
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                # Busy (every agent asks at once after a publish): the next heartbeat retries,
                # on the same session.
                log.info(
                    "the master is busy (%s); version %d on the next heartbeat", code.name, desired
                )
                return
            raise MasterUnavailable(master, f"PushConfig: {code.name}") from None
        pushed = PushedConfig(reply.version, reply.checksum, reply.config_yaml)
        async with self._applier.lock:
            result = await self._applier.apply(pushed)
        self.last_result = result
        if result.applied_version is not None:
            self.applied_version = result.applied_version
        if result.outcome == "applied":
            self._failed.pop(pushed.version, None)
            # The new config may move the admin API or the metrics endpoint.
            self._endpoints = relay_endpoints(self.config, fallback=self._endpoints)
        else:
            self._failed[pushed.version] = time.monotonic()
            log.error("config version %d %s: %s", result.version, result.outcome, result.message)
        await self._report(stub, master, result)

    async def _report(self, stub: AgentStub, master: Address, result: ApplyResult) -> None:
        self._unreported = result  # until the master has it
        await self._rpc(
            master,
            stub.ReportStatus(
                pb.ReportStatusRequest(
                    version=result.version,
                    outcome=_OUTCOMES[result.outcome],
                    message=result.message,
                    issues=[pb.ConfigIssue(path=i.path, message=i.message) for i in result.issues],
                    applied_version=result.applied_version,
                ),
                timeout=self.config.rpc_timeout,
                metadata=self._metadata,
            ),
        )
        self._unreported = None

    # --- commands -----------------------------------------------------------------------------

    async def _command_stream(self, stub: AgentStub, master: Address, stop: asyncio.Event) -> None:
        """Keep the ExecuteCommand stream open for the session (reopened after a delay if the
        master closes it while heartbeats still work)."""
        delay = self.config.reconnect_initial
        while not stop.is_set():
            try:
                await self._serve_commands(stub)
                log.info("master %s closed the command stream", master)
            except grpc.aio.AioRpcError as exc:
                log.info("command stream to %s ended: %s", master, exc.code().name)
            await _wait(stop, delay)
            delay = min(delay * 2, self.config.reconnect_max)

    async def _serve_commands(self, stub: AgentStub) -> None:
        outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        outbox.put_nowait(pb.AgentMessage(hello=pb.Hello(agent_version=__version__)))

        async def outgoing() -> AsyncIterator[pb.AgentMessage]:
            while True:
                yield await outbox.get()

        running: set[asyncio.Task[None]] = set()
        call = stub.ExecuteCommand(outgoing(), metadata=self._metadata)
        try:
            async for command in call:
                task = asyncio.create_task(self._execute(command, outbox))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            call.cancel()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _execute(self, command: pb.Command, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        try:
            kind = pb.CommandType.Name(command.type).lower()
        except ValueError:
            kind = f"#{command.type}"
        try:
            outcome = await self._commands.run(kind, dict(command.args))
            result = pb.CommandResult(
                id=command.id, ok=outcome.ok, output=outcome.output, error=outcome.error
            )
        except Exception as exc:
            # A command's boundary (STYLE E6): the master gets the error, the stream lives on.
            log.exception("command %s (%s) failed", command.id, kind)
            result = pb.CommandResult(id=command.id, ok=False, error=f"agent error: {exc}")
        log.info("command %s (%s): %s", command.id, kind, "ok" if result.ok else result.error)
        await outbox.put(pb.AgentMessage(result=result))


def _metrics_message(sample: RelaySample) -> pb.NodeMetrics:
    return pb.NodeMetrics(
        connections=sample.connections,
        requests_total=sample.requests_total,
        errors_total=sample.errors_total,
        error_rate=sample.error_rate,
        p99_latency_ms=sample.p99_latency_ms,
        cpu_percent=sample.cpu_percent,
        memory_bytes=sample.memory_bytes,
        config_version=sample.config_version,
    )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    if seconds <= 0 or stop.is_set():
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
