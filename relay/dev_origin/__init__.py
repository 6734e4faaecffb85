"""An LLM-like HTTP/1.1 origin for tests, demos and benchmarks.

It speaks just enough of the OpenAI HTTP API to stand in for a model server behind the relay, and
it is cheap enough in CPU that one process can drive ~10,000 concurrent token streams:

* ``POST /v1/chat/completions``: JSON ``{model, messages, stream, max_tokens}`` plus two test
  extensions, ``interval_ms`` (gap between tokens, default 20) and ``ttfb_ms`` (delay before the
  first response byte, default 0). With ``stream: true`` the answer is Server-Sent Events over
  chunked encoding: one ``chat.completion.chunk`` event per token, each its own HTTP chunk written
  at its own time and stamped with ``sent_at`` (``time.time()`` when written) and ``seq``; then a
  ``finish_reason: "stop"`` event, ``data: [DONE]`` and the terminating zero chunk. Otherwise a
  plain ``chat.completion`` JSON object with Content-Length (sent after ``ttfb_ms``).
  Misbehaviour on request, for fault tests: ``fault`` ``"hang"`` (accept the request, never
  answer), ``"stall"`` (stop sending after ``fault_after`` tokens, keep the connection open) or
  ``"reset"`` (reset the connection after ``fault_after`` tokens, mid-body).
* ``GET /v1/models``: a small model list. ``GET /healthz``: ``200 ok``.
* ``GET /bytes?n=N``: ``N`` body bytes with Content-Length, generated block by block and paced by
  transport flow control, so ``N`` may be several GiB. Byte ``k`` of the body is
  ``BYTES_ALPHABET[k % 64]``, so a reader can verify any slice without keeping the whole body.
* ``POST /echo``: ``{"method", "path", "query", "headers": {lowercased name: value}, "body"}``.

Connections are keep-alive, accept pipelined requests (answered strictly in order), and accept
chunked and Content-Length request bodies. Unparseable requests get ``400`` and the connection is
closed, as do bodies over ``MAX_REQUEST_BODY`` (``413``); unknown paths get a JSON ``404``; a known
path with the wrong method gets ``405``. Errors are OpenAI-style ``{"error": {"message", ...}}``.

Everything runs on asyncio ``Protocol`` callbacks with ``httptools`` parsing; there is no task per
connection or per stream. Token timing goes through ``_Ticker``, which coalesces all streams due in
the same millisecond into one loop timer (see its docstring for the CPU measurement behind that).

The package's modules, from the bottom up:

* ``wire``: the parsed request, response heads, JSON error bodies, the ``_Job`` interface;
* ``ticker``: ``_Ticker``, the shared millisecond timer of every token stream;
* ``protocol``: ``_OriginProtocol``, one connection (parsing, pipelining, dispatch by route);
* ``chat``: chat completion requests (validation) and completion documents;
* ``sse``: ``_SseStream``, a streamed completion, one Server-Sent Event per token;
* ``endpoints``: the handlers of each path and the route table;
* ``server``: ``serve_origin``, the listening server; ``cli``: ``main``, the command line.
"""

from __future__ import annotations

from relay.dev_origin.chat import DEFAULT_INTERVAL_MS as DEFAULT_INTERVAL_MS
from relay.dev_origin.chat import DEFAULT_MAX_TOKENS as DEFAULT_MAX_TOKENS
from relay.dev_origin.chat import DEFAULT_MODEL as DEFAULT_MODEL
from relay.dev_origin.cli import main
from relay.dev_origin.endpoints import BYTES_ALPHABET
from relay.dev_origin.protocol import MAX_REQUEST_BODY as MAX_REQUEST_BODY
from relay.dev_origin.server import serve_origin

__all__ = ["BYTES_ALPHABET", "main", "serve_origin"]
# Also importable from here, as before the package split (``X as X`` re-exports them for mypy):
# DEFAULT_INTERVAL_MS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL and MAX_REQUEST_BODY.
