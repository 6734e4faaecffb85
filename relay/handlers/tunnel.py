"""L4 handlers: ``forward`` (port forwarding through the chain) and ``relay`` (tunnel server).

Both read a little (``relay``: the header), connect upstream, then splice the two transports.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Coroutine
from typing import Any, cast

from relay.chain import Dialed, DialError
from relay.config.model import Address
from relay.protocols import relay_v1
from relay.protocols.relay_v1 import Status
from relay.protocols.resume import OpenRequest, ResumeError, decode_request, encode_accept
from relay.resume.core import CoreStream, SessionTable
from relay.service import ServiceRuntime
from relay.splice import splice

log = logging.getLogger(__name__)

_OK = relay_v1.encode_response(Status.OK)

#: The relay header must arrive within this many seconds of the connection.
HEADER_TIMEOUT = 10.0


class _TunnelConnection(asyncio.Protocol):
    """Common part: bookkeeping, early-data buffering, connecting, splicing."""

    # Slots: one per tunnel, held for as long as it stays open.
    __slots__ = (
        "_admitted", "_connecting", "_early", "_lost", "_started", "_task", "_upstream", "peer_ip",
        "refused", "service", "transport",
    )  # fmt: skip

    def __init__(self, service: ServiceRuntime) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self._early: list[bytes] = []
        self._started = 0.0
        self._lost = False
        #: The dial in progress (a strong reference while it runs; dropped when done, so a
        #: long tunnel does not hold a finished task).
        self._task: asyncio.Task[None] | None = None
        #: The dial was started: what arrives now is early data for the target.
        self._connecting = False
        self._upstream: asyncio.Transport | None = None
        #: Admitted by the connection policies: owes them one release at the end.
        self._admitted = False
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self._started = asyncio.get_running_loop().time()
        self.service.opened(self)
        self._apply_policies(self._started)

    def _apply_policies(self, now: float) -> None:
        """An L4 connection is judged once, as its own one request; a refused one is closed."""
        verdict = self.service.admit_stream(self.peer_ip, now)
        if verdict.allowed:
            self._admitted = True
        else:
            self.refused = True
            assert self.transport is not None
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        if sum(map(len, self._early)) > self.service.config.buffer_size:
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # Keep the connection (where the transport can) so the EOF is forwarded once spliced.
        assert self.transport is not None
        return self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._admitted:
            self._admitted = False
            self.service.release_connection(self.peer_ip)
        # A dial in progress is not cancelled: its connection would be lost with it. It is
        # bounded by the dialer's timeout, and closed when it completes (see _splice).
        if self._upstream is None:
            self._finished()

    def close(self) -> None:
        """Tunnels carry opaque bytes: closing now could cut a stream, so a drain waits for
        them to end on their own (up to shutdownTimeout) and only ``abort`` ends them."""
        if self._upstream is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self._upstream is not None:
            self._upstream.abort()
        if self.transport is not None:
            self.transport.abort()

    def _finished(self) -> None:
        loop = asyncio.get_running_loop()
        self.service.closed(self, loop.time() - self._started)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = asyncio.get_running_loop()
        self._connecting = True
        task = loop.create_task(coro)
        self._task = task
        task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[None]) -> None:
        self._task = None

    def _splice(self, dialed: Dialed, first: bytes, answer: bytes = b"") -> None:
        """Send ``first`` upstream (behind the relay header, if any), then forward both ways;
        ``answer`` goes to the client in front of the first bytes from upstream."""
        client = self.transport
        assert client is not None
        if self._lost or client.is_closing():
            dialed.transport.close()
            self._finished()
            return
        self._upstream = dialed.transport
        if first:
            dialed.transport.write(first)
            self.service.stats.bytes_in += len(first)
        elif dialed.tunnel is not None:
            dialed.tunnel.flush_header()
        splice(
            client,
            dialed.transport,
            dialed.pending,
            self.service.stats,
            self.service.config.buffer_size,
            self._finished,
            answer,
        )
        client.resume_reading()

    def _take_early(self) -> bytes:
        data = b"".join(self._early)
        self._early.clear()
        return data


class ForwardConnection(_TunnelConnection):
    """``forward``: every connection goes to the forwarder's target, through the chain."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.refused:
            self._spawn(self._connect())

    async def _connect(self) -> None:
        try:
            dialed = await self.service.connect_upstream(key=self.peer_ip)
        except DialError as exc:
            log.warning("service %s: %s", self.service.name, exc)
            self.close()
            return
        self._splice(dialed, self._take_early())


class RelayServerConnection(_TunnelConnection):
    """``relay``: reads the relay header, authenticates, connects only to allowed targets."""

    __slots__ = ("_buf", "_header_timer", "_resumable", "_stream", "_user")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._header_timer: asyncio.TimerHandle | None = None
        self._buf = b""
        #: A resumable stream was asked for (``relay.resume.core``); None: a plain tunnel.
        self._resumable: OpenRequest | None = None
        self._user = ""
        #: The resumable stream this connection carries (its tunnel attachment), if any.
        self._stream: CoreStream | None = None
        super().connection_made(transport)
        if not self.refused:
            self._header_timer = asyncio.get_running_loop().call_later(
                HEADER_TIMEOUT, self._header_timeout
            )

    def _header_timeout(self) -> None:
        self._header_timer = None
        self.service.block("header_timeout")
        self.close()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._connecting:
            super().data_received(data)  # header done; buffer until the target is connected
            return
        self._buf += data
        try:
            parsed = relay_v1.parse_request(self._buf)
        except relay_v1.ProtocolError as exc:
            log.info(
                "service %s: bad relay header from %s: %s", self.service.name, self.peer_ip, exc
            )
            self._refuse(Status.BAD_REQUEST, "bad_request")
            return
        if parsed is None:
            return
        request, rest = parsed
        self._buf = b""
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if rest:
            self._early.append(rest)
        self._admit(request)

    def _admit(self, request: relay_v1.Request) -> None:
        auth = self.service.config.handler.auth
        if auth is not None and not (
            hmac.compare_digest((request.username or "").encode(), auth.username.encode())
            and hmac.compare_digest((request.password or "").encode(), auth.password.encode())
        ):
            self._refuse(Status.UNAUTHORIZED, "unauthorized")
            return
        if request.cmd != relay_v1.Cmd.CONNECT:
            self._refuse(Status.BAD_REQUEST, "bad_request")
            return
        target = Address(*request.target) if request.target is not None else None
        if target is not None and not self.service.allows_target(target):
            self._refuse(Status.FORBIDDEN, "forbidden_target")
            return
        if target is None and self.service.forwarder is None and self.service.chain is None:
            self._refuse(Status.FORBIDDEN, "forbidden_target")
            return
        resumable = request.resume is not None and self.service.resume_sessions is not None
        if resumable and not self._resume_feature(request):
            return
        self._spawn(self._connect(target))

    def _resume_feature(self, request: relay_v1.Request) -> bool:
        """Handle the resume feature; False when the connection was dealt with here (a resume
        of a parked stream, or a refusal) and nothing must be dialed."""
        sessions = self.service.resume_sessions
        assert sessions is not None and request.resume is not None
        self._user = request.username or ""
        try:
            feature = decode_request(request.resume)
        except ResumeError:
            self._refuse(Status.BAD_REQUEST, "bad_request")
            return False
        if isinstance(feature, OpenRequest):
            self._resumable = feature
            return True
        assert self.transport is not None
        status, self._stream = sessions.resume(
            feature, self._user, self.transport, self._take_early(), self.connection_lost
        )
        if status != Status.OK:
            self._refuse(status, "resume_refused")
        return False

    async def _connect(self, target: Address | None) -> None:
        try:
            dialed = await self.service.connect_upstream(target, key=self.peer_ip)
        except DialError as exc:
            log.warning("service %s: %s", self.service.name, exc)
            self._refuse(Status.SERVICE_UNAVAILABLE, None)
            return
        assert self.transport is not None
        if self._resumable is not None and self.service.resume_sessions is not None:
            self._open_resumable(dialed, self._resumable, self.service.resume_sessions)
            return
        if self.service.answer_at_once:
            if not self._lost and not self.transport.is_closing():
                self.transport.write(_OK)
            self._splice(dialed, self._take_early())  # closes the upstream if the client left
            return
        # The OK rides in front of the target's first bytes, as gost's handler sends it (our
        # connector reads it lazily, see ``relay.connector``): one write and one wake-up fewer
        # per tunnel on both nodes. A refusal is still sent at once.
        self._splice(dialed, self._take_early(), _OK)

    def _open_resumable(self, dialed: Dialed, feature: OpenRequest, sessions: SessionTable) -> None:
        """Carry the tunnel as a resumable stream: its protocol owns both transports, and
        calls ``connection_lost`` here when a tunnel attachment ends."""
        client = self.transport
        assert client is not None
        if self._lost or client.is_closing():
            dialed.transport.close()
            self._finished()
            return
        stream, accept = sessions.open(
            self._user, self.service.config.handler.resume, dialed.transport, dialed.pending,
            self.service.stats,
        )  # fmt: skip
        client.write(relay_v1.encode_response(Status.OK, encode_accept(accept)))
        self._stream = stream
        stream.attach(client, feature.early, self._take_early(), self.connection_lost)

    def close(self) -> None:
        if self._stream is not None:
            return  # like a splice, a resumable stream is left to end on its own (draining)
        super().close()

    def abort(self) -> None:
        stream = self._stream
        attached = stream.attached if stream is not None else None
        if stream is not None and attached is not None and attached.transport is self.transport:
            stream.lose(count=False)  # (not when it was resumed over another tunnel since)
        super().abort()

    def _refuse(self, status: Status, blocked_reason: str | None) -> None:
        if blocked_reason is not None:
            self.service.block(blocked_reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(relay_v1.encode_response(status))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)
