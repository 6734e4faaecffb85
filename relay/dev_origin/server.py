"""``serve_origin``: start the dev origin on the running loop."""

from __future__ import annotations

import asyncio
import ssl

from relay.dev_origin.endpoints import _ROUTES
from relay.dev_origin.protocol import _OriginProtocol
from relay.dev_origin.ticker import _Ticker


async def serve_origin(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    backlog: int = 4096,
) -> asyncio.Server:
    """Start the dev origin on the running loop and return the listening server.

    ``port=0`` picks a free port: read it from ``server.sockets[0].getsockname()[1]``. The
    server is already accepting; stop it with ``server.close()`` (on Python 3.12+ a following
    ``await server.wait_closed()`` also waits for open client connections to end).
    ``ssl_context`` makes it an HTTPS origin. The large default ``backlog`` is for benchmarks that
    open thousands of connections at once (the kernel caps it at ``somaxconn``).
    """
    loop = asyncio.get_running_loop()
    ticker = _Ticker(loop)
    return await loop.create_server(
        lambda: _OriginProtocol(ticker, _ROUTES), host, port, ssl=ssl_context, backlog=backlog
    )
