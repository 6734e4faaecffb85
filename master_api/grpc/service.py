"""The AgentService servicer: the six RPCs of ``relay/agent/proto/agent.proto``.

Every call first authenticates the node (``aicdn-node-id`` + ``authorization: Bearer``
metadata) with :meth:`NodeService.authenticate` -- the same check the REST heartbeat uses --
and answers ``UNAUTHENTICATED`` otherwise. The services are synchronous (pymongo), so their
calls run on a bounded thread pool; the event loop only shuttles messages and keeps the
command streams.

API errors map to status codes by type: 401 ``UNAUTHENTICATED``, 404 ``NOT_FOUND``, 409
``FAILED_PRECONDITION`` (e.g. a version that cannot be rendered for the node), 400
``INVALID_ARGUMENT``, 503 ``UNAVAILABLE`` (the database), anything else ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from master_api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from master_api.grpc.hub import CommandHub, CommandStream
from master_api.models import Node, NodeMetrics
from master_api.repos.usage import COUNTER_FIELDS
from master_api.services.nodes import ConfigReport, NodeService, RenderedConfig
from master_api.services.usage import UsageService
from master_api.settings import Settings
from relay.agent.rpc import AUTHORIZATION_KEY, NODE_ID_KEY, pb

__all__ = ["AgentServicer", "metrics_from_message"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]

_CODES: tuple[tuple[type[ApiError], grpc.StatusCode], ...] = (
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)
_OUTCOMES = {pb.APPLIED: "applied", pb.REJECTED: "rejected", pb.ROLLED_BACK: "rolled_back"}
_MAX_COUNT = 2**62
#: A render is skipped when less than this is left of its caller's deadline (seconds).
_RENDER_MARGIN = 0.05
#: PushConfig calls waiting for or in a render; more are refused at once with
#: RESOURCE_EXHAUSTED (the agent asks again on its next heartbeat) instead of queueing work
#: that would outlive their deadline.
MAX_PENDING_RENDERS = 32


def _status_for(exc: ApiError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def metrics_from_message(message: pb.NodeMetrics) -> NodeMetrics:
    """The reported metrics; fields not sent, or out of their documented range (the REST
    heartbeat's), are None."""

    def count(name: str) -> int | None:
        if not message.HasField(name):
            return None
        value = int(getattr(message, name))
        return value if 0 <= value <= _MAX_COUNT else None

    def number(name: str, high: float) -> float | None:
        if not message.HasField(name):
            return None
        value = float(getattr(message, name))
        return value if math.isfinite(value) and 0 <= value <= high else None

    return NodeMetrics(
        connections=count("connections"),
        max_connections=count("max_connections"),
        requests_total=count("requests_total"),
        errors_total=count("errors_total"),
        error_rate=number("error_rate", 1.0),
        p99_latency_ms=number("p99_latency_ms", 1e9),
        cpu_percent=number("cpu_percent", 100_000.0),
        memory_bytes=count("memory_bytes"),
        config_version=count("config_version"),
    )


def _usage_record(entry: pb.KeyUsage) -> dict[str, object]:
    return {
        "key": entry.key,
        "hour": entry.hour,
        **{name: getattr(entry, name) for name in COUNTER_FIELDS},
    }


def _optional_version(message: Any, name: str) -> int | None:
    if not message.HasField(name):
        return None
    value = int(getattr(message, name))
    return value if value >= 0 else None


class AgentServicer:
    """Implements ``aicdn.agent.v1.AgentService`` on the master's :class:`NodeService`."""

    def __init__(
        self,
        nodes: NodeService,
        hub: CommandHub,
        executor: Executor,
        settings: Settings,
        render_executor: Executor | None = None,
        usage: UsageService | None = None,
    ) -> None:
        """``executor`` runs the database calls; ``render_executor`` (default: the same) the
        renders of ``PushConfig``, which are CPU-heavy: on a pool of their own, a publish that
        makes every agent ask at once does not queue the heartbeats behind them."""
        self._nodes = nodes
        self._hub = hub
        self._executor = executor
        self._render_executor = render_executor or executor
        self._heartbeat_interval = settings.heartbeat_interval
        self._snapshot_ttl = settings.agent_snapshot_ttl
        self._auth_ttl = settings.agent_auth_ttl
        self._pending_renders = 0  # only touched on the event loop
        #: Usage batches and quotas (issue 12); None: heartbeats carry no usage answer.
        self._usage = usage

    async def _call(
        self,
        context: Context,
        function: Callable[..., _T],
        *args: Any,
        executor: Executor | None = None,
    ) -> _T:
        """Run a blocking service call on a pool; an ``ApiError`` aborts the RPC."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._executor, partial(function, *args))
        except ApiError as exc:
            await self._abort(context, exc)

    @staticmethod
    async def _abort(context: Context, exc: ApiError) -> NoReturn:
        await context.abort(_status_for(exc), exc.message)

    async def _authenticate(self, context: Context) -> Node:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        node_id = metadata.get(NODE_ID_KEY)
        scheme, _, token = str(metadata.get(AUTHORIZATION_KEY, "")).partition(" ")
        if not isinstance(node_id, str) or scheme.lower() != "bearer" or not token.strip():
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"send {NODE_ID_KEY} and '{AUTHORIZATION_KEY}: Bearer <node token>' metadata",
            )
        return await self._call(
            context, self._nodes.authenticate, node_id, token.strip(), self._auth_ttl
        )

    # --- unary RPCs ---------------------------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        node = await self._authenticate(context)
        result = await self._call(
            context,
            self._nodes.register_agent,
            node,
            request.hostname,
            request.agent_version,
            _optional_version(request, "applied_version"),
        )
        log.info("agent of node %s (%s) registered from %s", node.name, node.id, context.peer())
        return pb.RegisterResponse(
            node_id=node.id,
            name=node.name,
            type=node.type,
            region=node.region,
            desired_version=result.desired_version,
            heartbeat_interval_seconds=self._heartbeat_interval,
        )

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        node = await self._authenticate(context)
        result = await self._call(
            context,
            self._nodes.heartbeat,
            node,
            metrics_from_message(request.metrics),
            _optional_version(request, "applied_version"),
            self._snapshot_ttl,
        )
        reply = pb.HeartbeatResponse(
            config_updated=result.config_updated, desired_version=result.desired_version
        )
        if self._usage is not None:
            await self._heartbeat_usage(node, request, reply, context)
        return reply

    async def _heartbeat_usage(
        self,
        node: Node,
        request: pb.HeartbeatRequest,
        reply: pb.HeartbeatResponse,
        context: Context,
    ) -> None:
        """Store the heartbeat's usage batch (acknowledged in ``reply`` once stored) and put
        the over-quota keys in ``reply``. A malformed batch is dropped without failing the
        heartbeat: logged as an error, and acknowledged so that later batches flow."""
        usage = self._usage
        assert usage is not None
        if request.HasField("usage") and request.usage.batch_id:
            batch = request.usage
            records = [_usage_record(entry) for entry in batch.entries]
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(
                    self._executor, partial(usage.record, node.id, batch.batch_id, records)
                )
                reply.usage_acked = batch.batch_id
            except BadRequest as exc:
                # Acknowledged all the same: a batch the master can never take would otherwise
                # be sent forever and hold up every later one on the relay.
                log.error(
                    "node %s: usage batch %s dropped, malformed: %s",
                    node.name, batch.batch_id[:128], exc.message,
                )  # fmt: skip
                reply.usage_acked = batch.batch_id
            except ApiError as exc:
                await self._abort(context, exc)
        over = await self._call(context, usage.over_quota)
        reply.quotas_known = True
        reply.over_quota_keys.extend(over)

    async def PushConfig(
        self, request: pb.PushConfigRequest, context: Context
    ) -> pb.PushConfigResponse:
        node = await self._authenticate(context)
        if self._pending_renders >= MAX_PENDING_RENDERS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the master is busy rendering; ask again"
            )
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def render() -> RenderedConfig | None:
            # DANGER ZONE: a publish makes every agent of a type ask within one heartbeat
            # interval, and renders are CPU-bound: they queue here. One whose caller has given
            # up meanwhile is skipped rather than delaying all the others.
            if deadline is not None and time.monotonic() > deadline - _RENDER_MARGIN:
                return None
            return self._nodes.render_for(node, self._snapshot_ttl)

        self._pending_renders += 1
        try:
            rendered = await self._call(context, render, executor=self._render_executor)
        finally:
            self._pending_renders -= 1
        if rendered is None:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the master is busy rendering; ask again"
            )
        return pb.PushConfigResponse(
            version=rendered.version_id, checksum=rendered.checksum, config_yaml=rendered.yaml
        )

    async def ReportStatus(
        self, request: pb.ReportStatusRequest, context: Context
    ) -> pb.ReportStatusResponse:
        node = await self._authenticate(context)
        outcome = _OUTCOMES.get(request.outcome)
        if outcome is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome: not set or unknown")
        report = ConfigReport(
            version=request.version,
            outcome=outcome,
            message=request.message,
            issues=tuple((issue.path, issue.message) for issue in request.issues),
            applied_version=_optional_version(request, "applied_version"),
        )
        await self._call(context, self._nodes.report_config, node, report)
        if outcome == "applied":
            log.info("node %s applied config version %d", node.name, request.version)
        else:
            log.warning(
                "node %s: config version %d %s: %s",
                node.name, request.version, outcome, request.message,
            )  # fmt: skip
        return pb.ReportStatusResponse()

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.NodeStatus:
        authenticated = await self._authenticate(context)
        node = await self._call(context, self._nodes.get, authenticated.id)  # fresh, not cached
        desired = await self._call(context, self._nodes.desired_version, node)
        error = node.config_error
        return pb.NodeStatus(
            node_id=node.id,
            name=node.name,
            status=node.status,
            desired_version=desired,
            applied_version=node.applied_version,
            last_seen=node.last_seen,
            config_error=None
            if error is None
            else pb.ConfigError(
                version=error.version,
                outcome=error.outcome,
                message=error.message,
                issues=[pb.ConfigIssue(path=p, message=m) for p, m in error.issues],
                at=error.at,
            ),
        )

    # --- the command stream -------------------------------------------------------------------

    async def ExecuteCommand(self, request_iterator: object, context: Context) -> None:
        """Hold the node's command stream: commands from the hub are written to the agent,
        results read from it resolve the waiting callers. Ends when the agent closes the
        stream, a newer stream of the node replaces it, or the server stops."""
        node = await self._authenticate(context)
        stream = self._hub.open(node.id)
        reader = asyncio.create_task(self._read_results(context, stream))
        closed = asyncio.create_task(stream.closed.wait())
        getter: asyncio.Task[pb.Command] | None = None
        log.info("command stream of node %s opened (%d open)", node.name, self._hub.count())
        try:
            while not reader.done() and not closed.done():
                getter = asyncio.create_task(stream.outbox.get())
                done, _ = await asyncio.wait(
                    {getter, reader, closed}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await context.write(getter.result())
                    getter = None
        finally:
            tasks = [task for task in (getter, closed, reader) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._hub.close(stream)
            log.info("command stream of node %s closed", node.name)

    async def _read_results(self, context: Context, stream: CommandStream) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            if message.HasField("result"):
                stream.resolve(message.result)
