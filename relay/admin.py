"""Admin API (``GET /healthz``, ``GET /config``, ``POST /reload``, and the usage endpoints of
``relay.usage_api``) and the metrics endpoint.

Low-traffic HTTP/1.1 on asyncio streams; one request per connection. When ``api.addr`` and
``metrics.addr`` are the same address one listener serves both. Either can serve TLS 1.3
(``api.tls``, ``metrics.tls``); a reload re-reads their certificates (rotation).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.config import ConfigError, redacted_mapping
from relay.config.model import Address, RelayConfig, TLSConfig
from relay.listeners import SwappableContext
from relay.transports.tls import server_context

log = logging.getLogger(__name__)


class NoReloadSource(Exception):
    """The node was started from URLs, not from a file: there is nothing to reload."""


class AdminTarget(Protocol):
    """What the admin API serves: a single relay node, or the supervisor of its workers."""

    @property
    def config(self) -> RelayConfig: ...

    async def usage_request(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, object]]:
        """Answer a ``/usage`` request (``relay.usage_api``): (status, JSON payload)."""
        ...

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition of the whole node."""
        ...

    def health(self) -> dict[str, object]:
        """The ``GET /healthz`` answer."""
        ...

    async def reload_from_source(self) -> RelayConfig:
        """Load the config source again and swap it in; returns the new config.

        Raises ``ConfigError`` (refused; the running config stays), ``OSError`` (an address
        could not be bound) or ``NoReloadSource``.
        """
        ...


READ_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """An admin answer; always closes the connection."""

    status: int
    body: bytes
    content_type: str = "application/json"


def json_response(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode() + b"\n")


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error",
            501: "Not Implemented"}  # fmt: skip


class AdminServer:
    def __init__(self, node: AdminTarget) -> None:
        self._node = node
        self._config: RelayConfig | None = None
        self._servers: dict[Address, asyncio.Server] = {}
        self._tls: dict[Address, SwappableContext] = {}
        self.api_port: int | None = None
        self.metrics_port: int | None = None
        self._reload_lock = asyncio.Lock()

    @staticmethod
    def _contexts(config: RelayConfig) -> dict[Address, ssl.SSLContext | None]:
        """Each address to listen on and its TLS context (None: plain). Reads certificate
        files: raises ``OSError``/``ssl.SSLError``/``ValueError`` for unusable ones."""
        wanted: dict[Address, TLSConfig | None] = {}
        if config.api is not None:
            wanted[config.api.addr] = config.api.tls
        if config.metrics is not None and config.metrics.addr not in wanted:
            wanted[config.metrics.addr] = config.metrics.tls
        return {
            addr: None if tls is None else server_context(tls, config.base_dir)
            for addr, tls in wanted.items()
        }

    async def start(
        self, config: RelayConfig, contexts: dict[Address, ssl.SSLContext | None] | None = None
    ) -> None:
        self._config = config
        if contexts is None:
            contexts = self._contexts(config)
        for addr, context in contexts.items():
            if context is not None:
                self._tls[addr] = SwappableContext(context)
            server = await asyncio.start_server(
                self._handle,
                host=addr.host or None,
                port=addr.port,
                reuse_address=True,
                ssl=context,
                ssl_handshake_timeout=READ_TIMEOUT if context is not None else None,
            )
            self._servers[addr] = server
        if config.api is not None:
            self.api_port = self._port(config.api.addr)
        if config.metrics is not None:
            self.metrics_port = self._port(config.metrics.addr)

    async def reconfigure(self, config: RelayConfig) -> None:
        """Follow a reload. Listeners move only when an address changed or TLS was turned on
        or off (or client certificates); otherwise TLS listeners keep their socket and serve
        certificates read anew (rotation) to new connections -- no moment where the agent's
        post-reload health check would find the port closed. Unusable certificate files are
        logged and the endpoints keep what they had."""
        old = self._config

        def shape(c: RelayConfig | None) -> tuple[object, ...]:
            if c is None:
                return ()
            return tuple(
                (section.addr, section.tls is not None,
                 section.tls is not None and section.tls.ca_file is not None)
                if section is not None else None
                for section in (c.api, c.metrics)
            )  # fmt: skip

        try:
            contexts = self._contexts(config)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("admin/metrics TLS files refused, the endpoints stay as they were: %s", exc)
            self._config = config
            return
        if shape(old) == shape(config):
            for addr, context in contexts.items():
                swappable = self._tls.get(addr)
                if context is not None and swappable is not None:
                    swappable.current = context
            self._config = config
            return
        await self.stop()
        await self.start(config, contexts)

    async def stop(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        self._tls.clear()

    def _port(self, addr: Address) -> int:
        return int(self._servers[addr].sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local_port = writer.get_extra_info("sockname")[1]

        async def route(method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
            return await self._route(method, path, headers, local_port, body)

        await serve_one(reader, writer, route)

    async def _route(
        self, method: str, path: str, headers: dict[str, str], local_port: int, body: bytes = b""
    ) -> Response:
        config = self._config
        assert config is not None
        path, _, query = path.partition("?")
        if (
            config.metrics is not None
            and path == config.metrics.path
            and local_port == self.metrics_port
        ):
            text = await self._node.metrics_text()
            return Response(200, text, "text/plain; version=0.0.4")
        if config.api is None or local_port != self.api_port:
            return json_response(404, {"error": "not_found", "message": path})
        if path == "/healthz":
            return json_response(200, self._node.health())
        token = config.api.token
        if token is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return json_response(
                    401, {"error": "unauthorized", "message": "bearer token required"}
                )
        if path == "/config" and method == "GET":
            return json_response(200, redacted_mapping(config))
        if path == "/reload" and method == "POST":
            return await self._reload()
        if path.startswith("/usage"):
            return json_response(*await self._node.usage_request(method, path, query, body))
        if path in ("/config", "/reload"):
            return json_response(405, {"error": "method_not_allowed", "message": method})
        return json_response(404, {"error": "not_found", "message": path})

    async def _reload(self) -> Response:
        async with self._reload_lock:
            try:
                new = await self._node.reload_from_source()
            except NoReloadSource as exc:
                return json_response(409, {"error": "no_source", "message": str(exc)})
            except ConfigError as exc:
                return json_response(400, {
                    "error": "invalid_config",
                    "message": "config refused; the running one stays",
                    "issues": [str(issue) for issue in exc.issues],
                })  # fmt: skip
            except OSError as exc:
                return json_response(500, {"error": "reload_failed", "message": str(exc)})
        return json_response(200, {"status": "reloaded", "version": new.version})


#: (method, path with query, headers, body) -> answer.
Route = Callable[[str, str, dict[str, str], bytes], Awaitable[Response]]
#: Largest request body (``PUT /usage/blocked`` carries up to 100,000 key hashes).
MAX_BODY = 4 * 1024 * 1024


async def serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: Route
) -> None:
    """Read one request (bounded in size and time), answer it with ``route``, close."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        if len(head) > MAX_HEAD:
            raise ValueError("head too large")
        method, path, headers = _parse_head(head)
        length = int(headers.get("content-length", "0"))
        body = b""
        if length > MAX_BODY:
            raise ValueError("body too large")
        if length:
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
        response = await route(method, path, headers, body)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        response = json_response(400, {"error": "bad_request", "message": "malformed request"})
    except (TimeoutError, ConnectionError):
        writer.close()
        return
    reason = _REASONS.get(response.status, "")
    writer.write(
        f"HTTP/1.1 {response.status} {reason}\r\ncontent-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n".encode()
        + response.body
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("bad header")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers
