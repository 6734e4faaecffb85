"""The local relay as the agent sees it: its admin API (``/healthz``, ``/reload``), its metrics
endpoint, and where those are (read from the relay's config file).

The admin API answers one request per connection and closes it, so the client here is a plain
HTTP/1.1 exchange on asyncio streams, bounded in size and time (STYLE A2).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from urllib.parse import quote

from relay.agent.config import AgentConfig
from relay.config import Address, ConfigError, load_config_file
from relay.config.model import TLSConfig
from relay.transports.tls import client_context

__all__ = ["HttpAnswer", "RelayApi", "RelayApiError", "RelayEndpoints", "relay_endpoints"]

_MAX_BODY = 8 * 1024 * 1024


class RelayApiError(Exception):
    """The relay's admin API or metrics endpoint could not be reached or answered garbage."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes

    def json(self) -> object:
        """The body as JSON; raises :class:`RelayApiError` when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise RelayApiError(f"not JSON: {self.body[:100]!r}") from exc


@dataclass(frozen=True, slots=True)
class RelayEndpoints:
    """Where the relay listens for the agent."""

    api: Address
    api_token: str | None
    metrics: Address | None
    metrics_path: str = "/metrics"
    api_tls: ssl.SSLContext | None = None
    """Set when the admin API serves TLS: verifies it (its ``caFile``), and presents the node's
    certificate in case the API asks for one."""
    metrics_tls: ssl.SSLContext | None = None


def _endpoint_client(tls: TLSConfig | None, base_dir: str) -> ssl.SSLContext | None:
    """Client context for a relay endpoint served with ``tls`` (None: plain HTTP): verifies the
    endpoint against its ``caFile`` (the fleet CA; the endpoint then also asks for a client
    certificate, and the node's own is presented). The name checked is the dialled address:
    node certificates carry 127.0.0.1."""
    if tls is None:
        return None
    return client_context(tls, base_dir)


def _dialable(addr: Address) -> Address:
    """A listen address as a local client dials it ("" and 0.0.0.0: loopback)."""
    if addr.host in ("", "0.0.0.0"):
        return Address("127.0.0.1", addr.port)
    if addr.host == "::":
        return Address("::1", addr.port)
    return addr


def relay_endpoints(config: AgentConfig, fallback: RelayEndpoints | None = None) -> RelayEndpoints:
    """The relay's endpoints: agent.yaml's ``relay_api``/``relay_api_token`` when set, the rest
    from the relay's config file.

    When the file cannot be read or is refused, ``fallback`` is returned if given; otherwise
    :class:`RelayApiError` (the agent cannot work without an admin API address).
    """
    try:
        relay = load_config_file(config.relay_config)
    except ConfigError as exc:
        if fallback is not None:
            return fallback
        if config.relay_api is not None:
            return RelayEndpoints(config.relay_api, config.relay_api_token, None)
        raise RelayApiError(f"cannot read the relay config for its api address: {exc}") from None
    api = config.relay_api or (relay.api.addr if relay.api else None)
    if api is None:
        raise RelayApiError(
            f"{config.relay_config} has no api.addr and agent.yaml sets no relay_api"
        )
    token = config.relay_api_token or (relay.api.token if relay.api else None)
    metrics = relay.metrics
    try:
        api_tls = _endpoint_client(relay.api.tls if relay.api else None, relay.base_dir)
        metrics_tls = _endpoint_client(metrics.tls if metrics else None, relay.base_dir)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise RelayApiError(f"cannot use the relay endpoints' TLS files: {exc}") from None
    if metrics is not None and relay.api is not None and metrics.addr == relay.api.addr:
        metrics_tls = api_tls
    return RelayEndpoints(
        api=_dialable(api),
        api_token=token,
        metrics=_dialable(metrics.addr) if metrics else None,
        metrics_path=metrics.path if metrics else "/metrics",
        api_tls=api_tls,
        metrics_tls=metrics_tls,
    )


async def http_request(
    addr: Address,
    method: str,
    path: str,
    token: str | None = None,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
    body: bytes | None = None,
) -> HttpAnswer:
    """One HTTP/1.1 request (over TLS with ``tls``; ``body``: sent as JSON); the whole
    exchange is bounded by
    ``timeout`` seconds.

    Raises :class:`RelayApiError` on connection failure (a certificate that does not verify
    included), timeout or a malformed answer.
    """
    try:
        exchange = _exchange(addr, method, path, token, tls, body)
        return await asyncio.wait_for(exchange, timeout)
    except TimeoutError:
        raise RelayApiError(f"{method} {path} on {addr}: no answer within {timeout:g}s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise RelayApiError(f"{method} {path} on {addr}: {exc}") from None


async def _exchange(
    addr: Address,
    method: str,
    path: str,
    token: str | None,
    tls: ssl.SSLContext | None,
    body: bytes | None = None,
) -> HttpAnswer:
    reader, writer = await asyncio.open_connection(
        addr.host, addr.port, ssl=tls, server_hostname=addr.host if tls is not None else None
    )
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {addr}", "Connection: close"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        elif method in ("POST", "PUT"):
            head.append("Content-Length: 0")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"bad status line {status_line[:80]!r}")
        headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = None
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip() == "content-length":
                length = int(value.strip())
        if length is not None:
            if length > _MAX_BODY:
                raise ValueError(f"answer too large ({length} bytes)")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(_MAX_BODY)
        return HttpAnswer(int(parts[1]), body)
    finally:
        writer.close()


class RelayApi:
    """The relay's admin API and metrics endpoint, at :attr:`endpoints`."""

    def __init__(self, endpoints: RelayEndpoints, timeout: float = 10.0) -> None:
        self.endpoints = endpoints
        self.timeout = timeout

    async def health(self) -> dict[str, object]:
        """``GET /healthz`` as a mapping; raises :class:`RelayApiError` unless 200 + JSON."""
        answer = await http_request(
            self.endpoints.api, "GET", "/healthz", timeout=self.timeout, tls=self.endpoints.api_tls
        )
        data = answer.json()
        if answer.status != 200 or not isinstance(data, dict):
            raise RelayApiError(f"/healthz answered {answer.status}: {answer.body[:200]!r}")
        return data

    async def running_version(self) -> int | None:
        """The config version the relay runs (its ``/healthz`` ``version``); None for 0 (a
        config the master did not render) or when the relay does not answer."""
        try:
            version = (await self.health()).get("version")
        except RelayApiError:
            return None
        return version if isinstance(version, int) and version > 0 else None

    async def reload(self) -> HttpAnswer:
        """``POST /reload``; the answer whatever its status (400: config refused, 409: the relay
        was not started from a file). Raises :class:`RelayApiError` when unreachable."""
        return await http_request(
            self.endpoints.api, "POST", "/reload", self.endpoints.api_token, self.timeout,
            self.endpoints.api_tls,
        )  # fmt: skip

    async def metrics_text(self) -> str:
        """The Prometheus exposition; raises :class:`RelayApiError` (also when the relay has
        no metrics endpoint)."""
        if self.endpoints.metrics is None:
            raise RelayApiError("the relay config has no metrics endpoint")
        answer = await http_request(
            self.endpoints.metrics, "GET", self.endpoints.metrics_path, timeout=self.timeout,
            tls=self.endpoints.metrics_tls,
        )  # fmt: skip
        if answer.status != 200:
            raise RelayApiError(f"metrics answered {answer.status}")
        return answer.body.decode("utf-8", "replace")

    # --- usage (issue 12; relay.usage_api) -----------------------------------------------------

    async def _usage_call(
        self, method: str, path: str, body: bytes | None = None
    ) -> dict[str, object]:
        answer = await http_request(
            self.endpoints.api, method, path, self.endpoints.api_token, self.timeout,
            tls=self.endpoints.api_tls, body=body,
        )  # fmt: skip
        data = answer.json()
        if answer.status != 200 or not isinstance(data, dict):
            raise RelayApiError(f"{method} {path} answered {answer.status}: {answer.body[:200]!r}")
        return data

    async def usage_batch(self) -> dict[str, object] | None:
        """``GET /usage``: the pending usage batch (sealed on demand), None when nothing was
        counted. Raises :class:`RelayApiError` (also when the relay does not serve usage)."""
        batch = (await self._usage_call("GET", "/usage")).get("batch")
        if batch is not None and not isinstance(batch, dict):
            raise RelayApiError(f"/usage: batch is {type(batch).__name__}")
        return batch

    async def ack_usage(self, batch_id: str) -> bool:
        """``POST /usage/ack``: whether the relay dropped that pending batch."""
        data = await self._usage_call("POST", f"/usage/ack?batch={quote(batch_id)}")
        return data.get("acked") is True

    async def set_blocked(self, keys: list[str]) -> None:
        """``PUT /usage/blocked``: the keys over quota."""
        await self._usage_call("PUT", "/usage/blocked", json.dumps({"keys": keys}).encode())
