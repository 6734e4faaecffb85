"""Commands to agents: the open ``ExecuteCommand`` streams of this master, by node.

An agent keeps one stream open per session. :meth:`CommandHub.execute` puts a command on the
node's stream and waits for the result with the same id; REST views (waitress threads) call
:meth:`CommandHub.execute_blocking`, which hands the work to the gRPC event loop.

The hub lives on the gRPC server's event loop: everything but ``execute_blocking`` and
``connected`` must run on it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.agent.rpc import pb

__all__ = [
    "COMMAND_TYPES",
    "HUB_KEY",
    "AgentNotConnected",
    "CommandHub",
    "CommandReply",
    "CommandStream",
    "CommandTimeout",
]

#: Where the running server puts its hub: ``app.extensions[HUB_KEY]``.
HUB_KEY = "aicdn_agent_hub"

#: REST command name -> protocol enum.
COMMAND_TYPES: Mapping[str, pb.CommandType] = {
    "reload": pb.RELOAD,
    "restart": pb.RESTART,
    "stop": pb.STOP,
    "status": pb.STATUS,
    "logs": pb.LOGS,
}


class AgentNotConnected(Exception):
    """The node has no command stream open on this master (or it closed while waiting)."""


class CommandTimeout(Exception):
    """The agent did not answer within the timeout."""


@dataclass(frozen=True, slots=True)
class CommandReply:
    """An agent's answer to one command."""

    ok: bool
    output: str
    error: str
    duration: float
    """Seconds from sending the command to receiving the answer."""


@dataclass(eq=False, slots=True)
class CommandStream:
    """One agent's open stream: commands to send, results awaited by id."""

    node_id: str
    outbox: asyncio.Queue[pb.Command] = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future[pb.CommandResult]] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the stream ends or a newer stream of the same node replaced it."""

    def resolve(self, result: pb.CommandResult) -> None:
        """Deliver a result; one for an unknown (e.g. timed out) id is dropped."""
        future = self.pending.pop(result.id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def fail_pending(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(AgentNotConnected(reason))
        self.pending.clear()


class CommandHub:
    """The command streams of this master's connected agents."""

    def __init__(self) -> None:
        self._streams: dict[str, CommandStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the hub to the gRPC server's loop (before it serves)."""
        self._loop = loop

    def connected(self, node_id: str) -> bool:
        """Whether ``node_id`` has a stream open here (a snapshot; any thread)."""
        return node_id in self._streams

    def count(self) -> int:
        return len(self._streams)

    def open(self, node_id: str) -> CommandStream:
        """Register a new stream of ``node_id``; an older one is closed (its waiting commands
        fail with :class:`AgentNotConnected`)."""
        old = self._streams.get(node_id)
        if old is not None:
            old.fail_pending("the agent opened a new command stream")
            old.closed.set()
        stream = CommandStream(node_id)
        self._streams[node_id] = stream
        return stream

    def close(self, stream: CommandStream) -> None:
        """The stream ended: forget it (unless already replaced) and fail its waiters."""
        if self._streams.get(stream.node_id) is stream:
            del self._streams[stream.node_id]
        stream.fail_pending("the agent's command stream closed")
        stream.closed.set()

    def close_all(self) -> None:
        """Close every stream (shutdown: their handlers return, agents reconnect elsewhere)."""
        for stream in list(self._streams.values()):
            self.close(stream)

    async def execute(
        self, node_id: str, command: str, args: Mapping[str, str], timeout: float
    ) -> CommandReply:
        """Send ``command`` (a key of :data:`COMMAND_TYPES`) to the node and wait for its
        answer. Raises :class:`AgentNotConnected` or :class:`CommandTimeout`; ``KeyError`` for
        an unknown command."""
        kind = COMMAND_TYPES[command]
        stream = self._streams.get(node_id)
        if stream is None:
            raise AgentNotConnected(f"node {node_id!r} has no command stream on this master")
        command_id = secrets.token_hex(8)
        future: asyncio.Future[pb.CommandResult] = asyncio.get_running_loop().create_future()
        stream.pending[command_id] = future
        started = time.monotonic()
        await stream.outbox.put(
            pb.Command(id=command_id, type=kind, args=dict(args), timeout_seconds=timeout)
        )
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CommandTimeout(
                f"node {node_id!r} did not answer {command!r} within {timeout:g}s"
            ) from None
        finally:
            stream.pending.pop(command_id, None)
        return CommandReply(result.ok, result.output, result.error, time.monotonic() - started)

    def execute_blocking(
        self, node_id: str, command: str, args: Mapping[str, str], timeout: float
    ) -> CommandReply:
        """:meth:`execute` from another thread (a REST view); same answers and errors.
        Raises ``RuntimeError`` when the hub is not bound to a running loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the agent service is not running")
        future = asyncio.run_coroutine_threadsafe(
            self.execute(node_id, command, args, timeout), loop
        )
        # The coroutine enforces ``timeout``; the margin covers the hand-over between threads.
        return future.result(timeout + 5.0)
