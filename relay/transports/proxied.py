"""Accepted connections that start with a PROXY protocol header (edges behind a balancer).

``ProxyHeaderReader`` is the first protocol of such a connection: it reads the header (bounded
in size by the parser and in time here), then wraps the socket in a ``ProxiedTransport`` that
reports the client address from the header as its ``peername``, and hands it on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from relay.policy.proxy_protocol import ProxyProtocolError, parse_proxy_header
from relay.transports.base import LayeredTransport

log = logging.getLogger(__name__)

#: The balancer sends the header first thing; a connection silent for longer is dropped.
HEADER_TIMEOUT = 5.0


class ProxiedTransport(LayeredTransport):
    """A pass-through layer whose ``peername`` is the client the PROXY header named."""

    def __init__(self, inner: asyncio.Transport, client: tuple[str, int] | None) -> None:
        super().__init__(inner)
        self._client = client

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername" and self._client is not None:
            return self._client
        return super().get_extra_info(name, default)


class ProxyHeaderReader(asyncio.Protocol):
    """Reads the PROXY header, then calls ``on_ready`` with the wrapped transport.

    ``on_ready`` must set the transport's protocol and call ``start()`` on it, which delivers
    the bytes that followed the header. Malformed or late headers close the connection.
    """

    def __init__(self, version: int, on_ready: Callable[[LayeredTransport], None]) -> None:
        self._version = version
        self._on_ready = on_ready
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._buf += data
        try:
            parsed = parse_proxy_header(self._buf, self._version)
        except ProxyProtocolError as exc:
            log.info("dropping connection with a bad PROXY header: %s", exc)
            transport.abort()
            return
        if parsed is None:
            return
        info, consumed = parsed
        if self._timer is not None:
            self._timer.cancel()
        proxied = ProxiedTransport(transport, info.source)
        rest, self._buf = self._buf[consumed:], b""
        if rest:
            proxied.receive(rest)  # queued until the next protocol is set and started
        self._on_ready(proxied)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
