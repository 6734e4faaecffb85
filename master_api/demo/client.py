"""The demo's clients: the master's REST API (JSON and the deployment events' SSE), and an
OpenAI SDK client streaming a chat completion through the edge."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ApiClient", "ApiError", "StreamResult", "stream_completion"]


class ApiError(RuntimeError):
    """The master answered with an error; the message carries its status and body."""


class ApiClient:
    """A logged-in operator of the master's ``/api/v1``."""

    def __init__(self, base: str, username: str, password: str) -> None:
        parts = urlsplit(base)
        self.base = base
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        login = self.call("POST", "/auth/login", {"username": username, "password": password})
        self.token: str = login["access_token"]

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """``method /api/v1{path}``; the decoded JSON answer, or :class:`ApiError`."""
        headers = {"Accept": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection(timeout=60)
        try:
            connection.request(method, "/api/v1" + path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError(f"{method} {path}: HTTP {response.status} {text.strip()}")
        return json.loads(text) if text else None

    def events(self, deployment_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The deployment's events as they happen: ``(event name, data)`` until ``end``."""
        connection = self._connection(timeout=900)
        try:
            connection.request(
                "GET",
                f"/api/v1/deployments/{deployment_id}/events",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"},
            )
            response = connection.getresponse()
            if response.status != 200:
                raise ApiError(f"events of {deployment_id}: HTTP {response.status}")
            name, data = "", ""
            while raw := response.readline():
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif not line and name:
                    yield name, json.loads(data) if data else {}
                    if name == "end":
                        return
                    name, data = "", ""
        finally:
            connection.close()


@dataclass
class StreamResult:
    """One streamed completion as the client saw it."""

    status: str = ""
    seqs: list[int] = field(default_factory=list)
    text: str = ""
    first_token: float | None = None  # seconds from the request
    delays_ms: list[float] = field(default_factory=list)  # origin send -> client receive
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Every token arrived, once and in order, and the stream ended normally."""
        return self.error is None and self.seqs == list(range(len(self.seqs)))

    def summary(self) -> str:
        if not self.delays_ms:
            return f"no token ({self.error})"
        delays = sorted(self.delays_ms)
        return (
            f"{len(self.seqs)} tokens, time to first token {self.first_token or 0:.3f} s, "
            f"tunnel delay per token p50 {delays[len(delays) // 2]:.2f} ms, "
            f"max {delays[-1]:.2f} ms"
        )


def stream_completion(
    edge_url: str,
    tokens: int,
    interval_ms: int,
    on_token: Callable[[int, str, float, float], None] | None = None,
) -> StreamResult:
    """Stream one chat completion through ``edge_url`` with the OpenAI SDK.

    The demo origin stamps every chunk with ``seq`` and ``sent_at`` (its clock: this machine's),
    so the delay each token spent in the tunnel is measured exactly. ``on_token(seq, text,
    elapsed s, delay ms)`` sees each token as it arrives.
    """
    import openai  # the [demo] extra; imported here so the rest of the master never needs it

    client = openai.OpenAI(base_url=f"{edge_url}/v1", api_key="sk-demo", max_retries=0)
    result = StreamResult()
    _warm_up(client)
    started = time.time()
    try:
        stream = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Say something through the tunnel."}],
            stream=True,
            max_tokens=tokens,
            extra_body={"interval_ms": interval_ms, "ttfb_ms": 200},
            timeout=120,
        )
        for chunk in stream:
            now = time.time()
            extra = chunk.model_extra or {}
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content is None:
                continue
            seq = int(extra["seq"])
            delay = (now - float(extra["sent_at"])) * 1000
            if result.first_token is None:
                result.first_token = now - started
            result.seqs.append(seq)
            result.text += content
            result.delays_ms.append(delay)
            if on_token is not None:
                on_token(seq, content, now - started, delay)
        result.status = "200"
    except Exception as exc:  # the demo reports any client failure as the stream's error
        result.error = f"{type(exc).__name__}: {exc}"
    return result


_warm: set[int] = set()


def _warm_up(client: Any) -> None:
    """The SDK's first request loads its modules and models (~2 s here): spend that on a
    ``GET /v1/models`` through the same edge, so the time to first token measures the tunnel
    and the origin, not the client's imports."""
    if id(type(client)) in _warm:
        return
    try:
        client.models.list()
    except Exception:  # the stream that follows reports any real problem
        pass
    _warm.add(id(type(client)))
