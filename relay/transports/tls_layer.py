"""TLS on top of another transport.

Used where the event loop's own TLS cannot be: a hop's TLS dialer over the previous hop's
tunnel (client side), and a TLS listener behind a PROXY protocol header (server side: the
header arrives in clear before the handshake). The event loop's ``start_tls`` only accepts its
own socket transports, so the session runs through ``ssl.MemoryBIO``: ciphertext in from the
inner transport, plaintext up to the protocol, and the reverse for writes.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from relay.transports.base import HandshakeError, LayeredTransport, TransportError

_READ_SIZE = 256 * 1024


class TLSLayerTransport(LayeredTransport):
    def __init__(
        self,
        inner: asyncio.Transport,
        ctx: ssl.SSLContext,
        server_name: str | None = None,
        server_side: bool = False,
    ) -> None:
        super().__init__(inner)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_name
        )
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake_step()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.inner.write(data)

    def _handshake_step(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()
            if not self.handshake.done():
                self.handshake.set_exception(HandshakeError(f"TLS over tunnel: {exc}"))
            self.inner.abort()
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def receive(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self.handshake.done():
            self._handshake_step()
            if not self.handshake.done() or self.handshake.exception() is not None:
                return
        while True:
            try:
                plain = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.deliver_eof()
                break
            except ssl.SSLError as exc:
                self.fail(TransportError(f"TLS over tunnel: {exc}"))
                return
            if not plain:
                break
            self.deliver(plain)
        self._flush()  # post-handshake messages (tickets, key updates)

    def inner_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("connection closed during TLS handshake"))
        super().inner_lost(exc)

    def encode(self, data: bytes) -> bytes:
        self._ssl.write(data)
        return self._outgoing.read()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        return super().get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closing and self.handshake.done() and self.handshake.exception() is None:
            try:
                self._ssl.unwrap()  # close_notify
            except ssl.SSLError:
                pass
            self._flush()
        super().close()


async def tls_over(
    inner: asyncio.Transport, ctx: ssl.SSLContext, server_name: str, timeout: float
) -> TLSLayerTransport:
    """Run a TLS client handshake over ``inner``; raises ``HandshakeError``/``TimeoutError``."""
    transport = TLSLayerTransport(inner, ctx, server_name)
    try:
        await asyncio.wait_for(asyncio.shield(transport.handshake), timeout)
    except BaseException:
        inner.abort()
        raise
    return transport
