"""The handler of each path (chat completions, ``/bytes``, ``/echo``, ``/v1/models``,
``/healthz``) and ``_ROUTES``, the table the connection dispatches on."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from relay.dev_origin.chat import DEFAULT_MODEL, _ChatParams, _completion_body
from relay.dev_origin.protocol import _Handler, _OriginProtocol
from relay.dev_origin.sse import _SseStream
from relay.dev_origin.wire import _TEXT, _head, _HttpError, _Request

# --- /v1/chat/completions ----------------------------------------------------------------------


class _DelayedResponse:
    """A complete response written after a delay (non-streamed completion with ``ttfb_ms``)."""

    __slots__ = ("_body", "_handle", "_proto", "_request")

    def __init__(
        self, proto: _OriginProtocol, request: _Request, body: bytes, delay: float
    ) -> None:
        self._proto = proto
        self._request = request
        self._body = body
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)
        proto.start_job(self)

    def cancel(self) -> None:
        self._handle.cancel()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def _fire(self) -> None:
        self._proto.send(self._request, 200, self._body)


class _Hang:
    """A response that never comes (``fault: "hang"``): the connection stays open, silent."""

    def cancel(self) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _handle_chat(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    params = _ChatParams(bytes(request.body))
    if params.fault == "hang":
        proto.start_job(_Hang())
        return
    if params.stream:
        _SseStream(proto, request, params)
        return
    body = _completion_body(params)
    if params.ttfb > 0:
        _DelayedResponse(proto, request, body, params.ttfb)
    else:
        proto.send(request, 200, body)


# --- /bytes ------------------------------------------------------------------------------------


#: ``/bytes`` body pattern: byte ``k`` of the body is ``BYTES_ALPHABET[k % len(BYTES_ALPHABET)]``.
BYTES_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
#: One shared, immutable block reused for every ``/bytes`` write; its length is a multiple of the
#: alphabet length so that consecutive full blocks continue the pattern seamlessly.
_BYTES_BLOCK = BYTES_ALPHABET * (256 * 1024 // len(BYTES_ALPHABET))
#: Bytes one ``/bytes`` producer may write per loop iteration before yielding; without a budget a
#: fast reader would let one multi-GiB response monopolise the event loop.
_BYTES_BUDGET_PER_ITERATION = 4 * len(_BYTES_BLOCK)


class _BytesBody:
    """Writes ``n`` pattern bytes, only while the transport is below its high-water mark.

    ``transport.write`` calls ``pause_writing`` synchronously once the buffer fills, which ends
    the write loop; ``resume_writing`` restarts it. A per-iteration budget yields to the loop
    when the reader keeps up, so other connections are not starved.
    """

    __slots__ = (
        "_dead",
        "_keep_alive",
        "_loop",
        "_paused",
        "_proto",
        "_remaining",
        "_scheduled",
        "_transport",
    )

    def __init__(self, proto: _OriginProtocol, request: _Request, n: int) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._loop = asyncio.get_running_loop()
        self._keep_alive = request.keep_alive
        self._remaining = n
        self._paused = False
        self._scheduled = False
        self._dead = False
        head = _head(
            200,
            [b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n" % n],
            request.keep_alive,
            request.http11,
        )
        proto.start_job(self)
        self._transport.write(head)
        self._write_some()

    def cancel(self) -> None:
        self._dead = True

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._scheduled:
            self._write_some()

    def _continue(self) -> None:
        self._scheduled = False
        self._write_some()

    def _write_some(self) -> None:
        if self._dead:
            return
        budget = _BYTES_BUDGET_PER_ITERATION
        block = len(_BYTES_BLOCK)
        while self._remaining and not self._paused and budget > 0:
            n = min(self._remaining, block)
            self._transport.write(_BYTES_BLOCK if n == block else _BYTES_BLOCK[:n])
            self._remaining -= n
            budget -= n
        if not self._remaining:
            self._dead = True
            self._proto.finish(self._keep_alive)
        elif not self._paused:
            self._scheduled = True
            self._loop.call_soon(self._continue)


def _handle_bytes(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    values = parse_qs(query).get("n")
    if not values or not (values[0].isascii() and values[0].isdigit()):
        raise _HttpError(400, "'n' must be a non-negative integer")
    _BytesBody(proto, request, int(values[0]))


# --- small endpoints ---------------------------------------------------------------------------


def _handle_echo(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # Repeated headers fold into one comma-separated value, as RFC 9110 §5.3 allows.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    doc = {
        "method": request.method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": request.body.decode("utf-8", "replace"),
    }
    proto.send(request, 200, json.dumps(doc).encode())


_MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "aicdn"}],
    }
).encode()


def _handle_models(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    proto.send(request, 200, _MODELS_BODY)


def _handle_healthz(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    proto.send(request, 200, b"ok", _TEXT)


#: path -> (method, handler). A handler either answers synchronously via ``proto.send`` or
#: registers a ``_Job`` that calls ``proto.finish`` later; raising ``_HttpError`` answers with it.
_ROUTES: dict[str, tuple[str, _Handler]] = {
    "/v1/chat/completions": ("POST", _handle_chat),
    "/v1/models": ("GET", _handle_models),
    "/healthz": ("GET", _handle_healthz),
    "/bytes": ("GET", _handle_bytes),
    "/echo": ("POST", _handle_echo),
}
