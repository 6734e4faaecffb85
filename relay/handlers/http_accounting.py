"""The end of an HTTP exchange, as usage and the access log see it (issue 12).

Called once per exchange, when it ends (``Exchange._record``): adds the request to its key's
usage (``relay.usage``) and writes its access log line (``relay.access_log``). Once per
request, never per chunk: the only per-chunk cost of accounting is the tail the exchange
keeps for the ``usage`` search.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from relay.usage import TAIL_BYTES, TokenUsage, find_usage

if TYPE_CHECKING:
    from relay.handlers.http_exchange import Exchange


def _tokens(exchange: Exchange) -> TokenUsage | None:
    tail = exchange.tail
    if not tail:
        return None
    data = b"".join(tail)
    whole = len(data) == exchange.response_bytes and len(data) <= TAIL_BYTES
    return find_usage(data, exchange.sse, whole)


def account(exchange: Exchange, status: int, now: float) -> None:
    """Count ``exchange`` (answered ``status``; ``now`` is the loop's clock)."""
    service = exchange.conn.service
    wall = time.time()
    ttfb = exchange.first_byte_at - exchange.sent_at if exchange.first_byte_at else None
    duration = now - exchange.started_at
    tokens = _tokens(exchange) if 200 <= status < 300 else None
    block = exchange.refusal.reason if exchange.refusal is not None else ""
    meter = service.usage
    if meter is not None:
        entry = meter.entry(exchange.key, wall)
        entry.requests += 1
        if status >= 500:
            entry.errors += 1
        if block:
            entry.blocked += 1
        entry.bytes_in += exchange.body_bytes
        entry.bytes_out += exchange.response_bytes
        if exchange.sse:
            entry.streams += 1
        if ttfb is not None:
            entry.ttfb_sum += ttfb
            entry.ttfb_count += 1
        entry.duration_sum += duration
        if tokens is not None:
            entry.prompt_tokens += tokens.prompt_tokens
            entry.completion_tokens += tokens.completion_tokens
            entry.total_tokens += tokens.total_tokens
    access_log = service.access_log
    if access_log is not None:
        upstream = exchange.upstream
        access_log.write(
            {
                "ts": round(wall, 3),
                "request_id": exchange.request_id.decode("latin-1"),
                "service": service.name,
                "client": exchange.client,
                "key": exchange.key,
                "method": exchange.method.decode("latin-1"),
                "status": status,
                "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 3),
                "duration_ms": round(duration * 1000, 3),
                "bytes_in": exchange.body_bytes,
                "bytes_out": exchange.response_bytes,
                "upstream": upstream.node if upstream is not None else "",
                "stream": exchange.sse,
                "tokens": tokens.total_tokens if tokens is not None else None,
                "block": block,
            }
        )
