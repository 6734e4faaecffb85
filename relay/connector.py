"""Client side of the relay protocol: the ``relay`` connector of a chain hop.

The request header is not sent on its own: it rides in front of the first bytes written, so
opening a tunnel costs no round trip. The server's response is likewise read lazily, in front
of the first bytes it sends back; a refusal surfaces as ``RelayRefused`` through
``connection_lost`` of the protocol above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.protocols import relay_v1
from relay.protocols.relay_v1 import Status
from relay.transports.base import LayeredTransport, TransportError


class RelayRefused(TransportError):
    """The relay server answered with a non-OK status."""

    def __init__(self, status: int) -> None:
        try:
            name = Status(status).name
        except ValueError:
            name = f"0x{status:02x}"
        super().__init__(f"relay server refused the tunnel: {name}")
        self.status = status

    @property
    def reached_target(self) -> bool:
        """False: a refused tunnel never connected to its target, so a retry is safe."""
        return False


class RelayClientTransport(LayeredTransport):
    __slots__ = ("_header", "_response_buf", "confirmed", "on_response", "request", "response")

    def __init__(self, inner: asyncio.Transport, request: relay_v1.Request) -> None:
        super().__init__(inner)
        self.request = request
        self._header: bytes | None = relay_v1.encode_request(request)
        self._response_buf: bytes | None = b""
        #: Whether the server has confirmed the tunnel (its response arrived with status OK).
        self.confirmed = False
        #: The server's OK response, once it arrived.
        self.response: relay_v1.Response | None = None
        #: Called with the OK response before the data behind it is delivered.
        self.on_response: Callable[[relay_v1.Response], None] | None = None

    @property
    def header_sent(self) -> bool:
        return self._header is None

    def amend(self, request: relay_v1.Request) -> None:
        """Replace the request while its header is still unsent (a resumable stream names
        the length of its first write in it)."""
        assert self._header is not None, "the relay header was sent already"
        self.request = request
        self._header = relay_v1.encode_request(request)

    def flush_header(self) -> None:
        """Send the header now, for connections whose client has nothing to say first."""
        if self._header is not None:
            header, self._header = self._header, None
            self.inner.write(header)

    def encode(self, data: bytes) -> bytes:
        if self._header is not None:
            header, self._header = self._header, None
            return header + data
        return data

    def receive(self, data: bytes) -> None:
        buf = self._response_buf
        if buf is None:  # DANGER ZONE: per-chunk path once the tunnel is up
            self.deliver(data)
            return
        buf += data
        try:
            parsed = relay_v1.parse_response(buf)
        except relay_v1.ProtocolError as exc:
            self.fail(TransportError(f"bad relay response: {exc}"))
            return
        if parsed is None:
            self._response_buf = buf
            return
        response, rest = parsed
        self._response_buf = None
        if response.status != Status.OK:
            self.fail(RelayRefused(response.status))
            return
        self.confirmed = True
        self.response = response
        if self.on_response is not None:
            self.on_response(response)
        self.deliver(rest)

    def inner_eof(self) -> bool:
        if self._response_buf is not None:
            # The server hung up before answering: the tunnel never opened.
            self.fail(TransportError("relay server closed the connection before answering"))
            return False
        return super().inner_eof()
