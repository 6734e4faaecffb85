"""Per-API-key usage accounting of the ``http`` handler (issue 12), as pure bookkeeping.

A request is attributed to an API *key*: a hash of its bearer token (``Authorization: Bearer``,
else ``x-api-key``), never the token itself. :class:`UsageMeter` (one per relay process, kept
across reloads) adds up, per key and per UTC hour, the requests, body bytes both ways, time to
first byte, response duration and the LLM tokens of OpenAI-style ``usage`` objects.

The agent drains it through the admin API with an acknowledgement, so that nothing counted is
lost when the agent or the master restarts:

1. ``GET /usage`` seals what was counted since the last batch into a *pending batch* with a
   unique id (``<boot id>-<sequence>``) and returns it. Until it is acknowledged every
   ``GET /usage`` returns the same batch, unchanged; new counts go to the next one.
2. The agent sends the batch in a heartbeat; the master applies it idempotently (per batch id)
   and names it in its answer.
3. ``POST /usage/ack?batch=<id>`` drops the pending batch.

Only a relay restart loses counts: those not yet acknowledged (the meter lives in memory).

Bounds: at most ``max_entries`` (key, hour) entries between two batches; requests beyond that
fold into the :data:`OVERFLOW_KEY` entry, so a flood of distinct tokens cannot grow memory or
a heartbeat without limit.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ANONYMOUS_KEY",
    "KEY_HEX_CHARS",
    "OVERFLOW_KEY",
    "KeyUsage",
    "TokenUsage",
    "UsageBatch",
    "UsageMeter",
    "find_usage",
    "key_of",
]

#: Hex characters of a key hash (128 bits of SHA-256): collisions are out of reach, and the
#: token cannot be recovered from it.
KEY_HEX_CHARS = 32
#: The key of requests without a bearer token or ``x-api-key``.
ANONYMOUS_KEY = "-"
#: Where requests go once an interval holds ``max_entries`` entries.
OVERFLOW_KEY = "~overflow"
DEFAULT_MAX_ENTRIES = 10_000
#: Over-quota keys the meter accepts (the master's list is bounded by the same figure).
MAX_BLOCKED_KEYS = 100_000


def key_of(authorization: bytes, api_key: bytes = b"") -> str:
    """The key of a request: the hash of its ``Authorization: Bearer`` token, else of its
    ``x-api-key`` header; :data:`ANONYMOUS_KEY` when it carries neither."""
    token = b""
    if authorization:
        scheme, _, rest = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            token = rest.strip()
    if not token:
        token = api_key.strip()
    if not token:
        return ANONYMOUS_KEY
    return hashlib.sha256(token).hexdigest()[:KEY_HEX_CHARS]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The ``usage`` object of an OpenAI-style response (zeros for fields it lacks)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


#: Bytes of a response's tail searched for its ``usage`` object.
TAIL_BYTES = 64 * 1024
_USAGE = b'"usage"'


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _token_usage(obj: object) -> TokenUsage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    # OpenAI names; Anthropic-style input/output tokens are taken when those are absent.
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _count(usage.get("total_tokens")) or prompt + completion
    return TokenUsage(prompt, completion, total)


#: ``"usage": {`` or ``"usage": null`` in an SSE ``data:`` line.
_USAGE_START = re.compile(rb'"usage"\s*:\s*(\{|null)')
#: A token count inside the usage object. JSON escapes quotes inside strings, so a quoted key
#: can only be a key; nested objects (``completion_tokens_details``) use other names.
_TOKEN_FIELD = re.compile(
    rb'"(prompt_tokens|completion_tokens|total_tokens|input_tokens|output_tokens)"\s*:\s*(\d{1,18})'
)


def _sse_usage(line: bytes) -> TokenUsage | None:
    """The usage of one ``data:`` line, read with two regular expressions instead of a JSON
    parse of the whole event (a third of the cost, measured with ``bench.token_path``)."""
    start = _USAGE_START.search(line)
    if start is None or start.group(1) == b"null":
        return None
    counts: dict[bytes, int] = {}
    for name, digits in _TOKEN_FIELD.findall(line, start.end()):
        counts.setdefault(name, int(digits))
    if not counts:
        return None
    prompt = counts.get(b"prompt_tokens", counts.get(b"input_tokens", 0))
    completion = counts.get(b"completion_tokens", counts.get(b"output_tokens", 0))
    return TokenUsage(prompt, completion, counts.get(b"total_tokens") or prompt + completion)


def find_usage(tail: bytes, sse: bool, whole: bool) -> TokenUsage | None:
    """The last ``usage`` object in the end of a response body, or None.

    ``tail`` is the end of the body (at most :data:`TAIL_BYTES` are searched). For an SSE
    stream (``sse``) it is the ``data:`` line holding the last ``"usage"``; the final chunk of
    an OpenAI stream with ``stream_options.include_usage`` carries it (earlier chunks carry
    ``"usage": null``, which gives None when it is the last). For a JSON body, only when
    ``whole`` says ``tail`` is the complete body: it is then parsed as a whole.

    Never raises: a body that is not what it claims just has no usage.
    """
    if len(tail) > TAIL_BYTES:
        tail = tail[-TAIL_BYTES:]
    at = tail.rfind(_USAGE)
    if at < 0:
        return None
    try:
        if not sse:
            return _token_usage(json.loads(tail)) if whole else None
        start = tail.rfind(b"\n", 0, at) + 1
        end = tail.find(b"\n", at)
        line = tail[start:] if end < 0 else tail[start:end]
        line = line.strip()
        if not line.startswith(b"data:"):
            return None
        return _sse_usage(line)
    except (ValueError, RecursionError):
        return None


class KeyUsage:
    """The counters of one (key, hour) in one interval; mutated per finished request."""

    __slots__ = (
        "blocked",
        "bytes_in",
        "bytes_out",
        "completion_tokens",
        "duration_sum",
        "errors",
        "hour",
        "key",
        "prompt_tokens",
        "requests",
        "streams",
        "total_tokens",
        "ttfb_count",
        "ttfb_sum",
    )

    def __init__(self, key: str, hour: int) -> None:
        self.key = key
        self.hour = hour
        self.requests = 0
        #: Answers with a 5xx status (the relay's or the origin's).
        self.errors = 0
        #: Requests refused by a policy or a quota (answered 429 by the relay).
        self.blocked = 0
        #: Request body bytes from the client; response body bytes back to it.
        self.bytes_in = 0
        self.bytes_out = 0
        #: Responses that were SSE streams.
        self.streams = 0
        self.ttfb_sum = 0.0
        self.ttfb_count = 0
        #: Request start to response end, summed (seconds).
        self.duration_sum = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in KeyUsage.__slots__}


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """What was counted between two seals; ``id`` is unique across relay restarts."""

    id: str
    start: float
    end: float
    entries: tuple[KeyUsage, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "batch_id": self.id,
            "start": self.start,
            "end": self.end,
            "entries": [entry.to_json() for entry in self.entries],
        }


class UsageMeter:
    """Usage of one relay process; see the module docstring for the drain protocol."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._boot = secrets.token_hex(6)
        self._seq = 0
        self._current: dict[tuple[str, int], KeyUsage] = {}
        #: The entry returned last and until when it holds (its hour's end): consecutive
        #: requests of one key (a client's keep-alive connection) skip the lookup.
        self._last: KeyUsage | None = None
        self._last_until = 0.0
        self._since = time.time()
        self._pending: UsageBatch | None = None
        #: Keys over their quota (set by the agent from the master's answer): refused with 429.
        self.blocked: frozenset[str] = frozenset()
        #: Requests folded into OVERFLOW_KEY because an interval was full.
        self.overflowed = 0

    def entry(self, key: str, now: float) -> KeyUsage:
        """The counters of ``key`` for the hour of ``now`` (epoch seconds) in this interval."""
        last = self._last
        if last is not None and now < self._last_until and last.key == key:
            return last
        hour = int(now // 3600) * 3600
        slot = (key, hour)
        entry = self._current.get(slot)
        if entry is None:
            if len(self._current) >= self.max_entries:
                self.overflowed += 1
                slot = (OVERFLOW_KEY, hour)
                entry = self._current.get(slot)
                if entry is not None:
                    return entry
                key = OVERFLOW_KEY
            entry = self._current[slot] = KeyUsage(key, hour)
        if entry.key == key:  # (not the overflow entry, which stands for many keys)
            self._last, self._last_until = entry, hour + 3600.0
        return entry

    def take_batch(self, now: float | None = None) -> UsageBatch | None:
        """The pending batch; when there is none, seal the counts since the last one into a new
        pending batch. None when nothing was counted."""
        if self._pending is not None:
            return self._pending
        if not self._current:
            return None
        now = time.time() if now is None else now
        self._seq += 1
        batch = UsageBatch(
            f"{self._boot}-{self._seq}", self._since, now, tuple(self._current.values())
        )
        self._current = {}
        self._last = None
        self._since = now
        self._pending = batch
        return batch

    def ack(self, batch_id: str) -> bool:
        """Drop the pending batch when its id is ``batch_id``; returns whether it was."""
        if self._pending is not None and self._pending.id == batch_id:
            self._pending = None
            return True
        return False

    def set_blocked(self, keys: Iterable[str]) -> int:
        """Replace the over-quota set; returns its size. Raises ValueError for a key that is
        not a key hash, or for more than MAX_BLOCKED_KEYS keys."""
        chosen = frozenset(keys)
        if len(chosen) > MAX_BLOCKED_KEYS:
            raise ValueError(f"at most {MAX_BLOCKED_KEYS} keys, got {len(chosen)}")
        for key in chosen:
            if not isinstance(key, str) or len(key) != KEY_HEX_CHARS or not _is_hex(key):
                raise ValueError(f"not a key hash ({KEY_HEX_CHARS} hex digits): {key!r:.60}")
        self.blocked = chosen
        return len(chosen)

    def pending_entries(self) -> int:
        return len(self._current) + (len(self._pending.entries) if self._pending else 0)


_HEX = frozenset("0123456789abcdef")


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)
