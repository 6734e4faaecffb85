"""``_SseStream``: a streamed chat completion, one Server-Sent Event per token, each written at
its own ``_Ticker`` tick."""

from __future__ import annotations

import json
import socket
import struct
import time

from relay.dev_origin.chat import _ChatParams, _completion_id
from relay.dev_origin.protocol import _OriginProtocol
from relay.dev_origin.wire import _head, _Request

_SSE_TAIL_CHUNKED = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
_SSE_TAIL_RAW = b"data: [DONE]\n\n"


class _SseStream:
    """Writes one streamed chat completion, one token per ``_Ticker`` tick.

    Token ``i`` is due at ``first + i * interval``, ``first`` being when token 0 was actually
    written: absolute deadlines, so loop lateness never accumulates into drift, and no token is
    ever written earlier than ``i * interval`` after the first one. Per-token work is one
    byte-format, one ``time.time()`` and one ``transport.write``: the event text around the
    token is precomputed in ``_prefix``.

    Flow control is deliberately ignored: a model server keeps generating whatever the client's
    read speed, so a slow reader shows up as buffering here, which is what relay tests want.
    """

    __slots__ = (
        "_chunked",
        "_count",
        "_dead",
        "_fault",
        "_fault_after",
        "_first",
        "_interval",
        "_keep_alive",
        "_prefix",
        "_proto",
        "_seq",
        "_transport",
        "_usage",
    )

    def __init__(self, proto: _OriginProtocol, request: _Request, params: _ChatParams) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._chunked = request.http11
        # HTTP/1.0 has no chunked encoding: the end of the stream is the end of the connection.
        self._keep_alive = request.keep_alive and request.http11
        self._count = params.max_tokens
        self._interval = params.interval
        self._seq = 0
        self._dead = False
        self._fault = params.fault
        self._fault_after = params.fault_after
        created = int(time.time())
        head = '{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":'
        self._prefix = (
            head % (json.dumps(_completion_id()), created, json.dumps(params.model))
        ).encode()
        self._usage: bytes | None = None
        if params.include_usage:
            usage = {
                "prompt_tokens": params.prompt_tokens,
                "completion_tokens": params.max_tokens,
                "total_tokens": params.prompt_tokens + params.max_tokens,
            }
            self._usage = b'data: %s[],"usage":%s}\n\n' % (
                self._prefix,
                json.dumps(usage, separators=(",", ":")).encode(),
            )
        self._first = proto.ticker.time() + params.ttfb
        proto.start_job(self)
        proto.ticker.call_at(self._first, self)

    def cancel(self) -> None:
        self._dead = True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def tick(self) -> None:
        if self._dead:
            return
        seq = self._seq
        if self._fault is not None and seq == self._fault_after:
            self._misbehave()
            return
        if seq < self._count:
            payload = (
                b'data: %s[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],'
                b'"sent_at":%.6f,"seq":%d}\n\n' % (self._prefix, seq, time.time(), seq)
            )
            data = self._frame(payload)
            if seq == 0:
                data = self._headers() + data  # First byte of the response: at ttfb, not before.
                self._first = self._proto.ticker.time()  # Anchor on when it really went out.
            self._transport.write(data)
            self._seq = seq + 1
            self._proto.ticker.call_at(self._first + (seq + 1) * self._interval, self)
            return
        self._finish_stream()

    def _misbehave(self) -> None:
        """``stall``: write nothing more, keep the connection open. ``reset``: an RST now
        (SO_LINGER 0), mid-body, as a crashing model server would."""
        self._dead = True
        if self._fault == "reset":
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()

    def _finish_stream(self) -> None:
        payload = (
            b'data: %s[{"index":0,"delta":{},"finish_reason":"stop"}],"sent_at":%.6f,"seq":%d}\n\n'
            % (self._prefix, time.time(), self._seq)
        )
        data = self._frame(payload)
        if self._usage is not None:
            data += self._frame(self._usage)
        data += _SSE_TAIL_CHUNKED if self._chunked else _SSE_TAIL_RAW
        if self._seq == 0:
            data = self._headers() + data  # max_tokens == 0: headers go out with the stop event.
        self._dead = True
        self._transport.write(data)
        self._proto.finish(self._keep_alive)

    def _frame(self, payload: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(payload), payload)
        return payload

    def _headers(self) -> bytes:
        headers = [b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"]
        if self._chunked:
            headers.append(b"Transfer-Encoding: chunked\r\n")
        return _head(200, headers, self._keep_alive, self._chunked)
