"""Chat completion requests and documents: validating the request body into ``_ChatParams``,
completion ids, and the body of a non-streamed completion."""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

from relay.dev_origin.wire import _HttpError

DEFAULT_MAX_TOKENS = 16
DEFAULT_INTERVAL_MS = 20.0
DEFAULT_MODEL = "dev-origin"
#: Upper bounds that keep a typo in a test from tying up the origin for hours.
_MAX_TOKENS_LIMIT = 10_000_000
_MAX_DELAY_MS = 3_600_000.0

#: ``fault`` values: accept and never answer; stop mid-stream; reset mid-body.
FAULTS = ("hang", "stall", "reset")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


class _ChatParams:
    """The validated fields of a chat completion request."""

    __slots__ = (
        "fault", "fault_after", "include_usage", "interval", "max_tokens", "model",
        "prompt_tokens", "stream", "ttfb",
    )  # fmt: skip

    def __init__(self, body: bytes) -> None:
        """Parse and validate ``body``; raises ``_HttpError(400)`` on anything malformed."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HttpError(400, f"request body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _HttpError(400, "request body must be a JSON object")
        model = doc.get("model", DEFAULT_MODEL)
        if not isinstance(model, str):
            raise _HttpError(400, "'model' must be a string")
        messages = doc.get("messages", [])
        if not isinstance(messages, list):
            raise _HttpError(400, "'messages' must be a list")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise _HttpError(400, "'stream' must be a boolean")
        options = doc.get("stream_options") or {}
        include_usage = options.get("include_usage", False) if isinstance(options, dict) else None
        if not isinstance(include_usage, bool):
            raise _HttpError(400, "'stream_options' must be an object with a boolean include_usage")
        self.model = model
        self.stream = stream
        #: OpenAI's ``stream_options.include_usage``: a last chunk with ``usage`` before [DONE].
        self.include_usage = include_usage
        self.prompt_tokens = sum(_count_words(m) for m in messages)
        self.max_tokens = int(
            _number(doc, "max_tokens", DEFAULT_MAX_TOKENS, _MAX_TOKENS_LIMIT, True)
        )
        self.interval = _number(doc, "interval_ms", DEFAULT_INTERVAL_MS, _MAX_DELAY_MS) / 1000.0
        self.ttfb = _number(doc, "ttfb_ms", 0.0, _MAX_DELAY_MS) / 1000.0
        fault = doc.get("fault")
        if fault is not None and fault not in FAULTS:
            raise _HttpError(400, f"'fault' must be one of {', '.join(FAULTS)}")
        #: Misbehaviour asked for by a fault test (see the package docstring), or None.
        self.fault: str | None = fault
        self.fault_after = int(_number(doc, "fault_after", 0, _MAX_TOKENS_LIMIT, True))


def _number(
    doc: dict[str, Any], key: str, default: float, limit: float, integer: bool = False
) -> float:
    """``doc[key]`` as a number in ``[0, limit]`` (``default`` when absent or null)."""
    value = doc.get(key)
    if value is None:
        return default
    # bool is an int subclass, but ``"max_tokens": true`` is a client bug, not 1.
    numeric = isinstance(value, int) or (isinstance(value, float) and not integer)
    if isinstance(value, bool) or not numeric or not 0 <= float(value) <= limit:
        kind = "an integer" if integer else "a number"
        raise _HttpError(400, f"'{key}' must be {kind} in [0, {limit:g}]")
    return float(value)


def _count_words(message: object) -> int:
    """A stand-in token count for ``usage``: whitespace-separated words of ``content``."""
    content = message.get("content") if isinstance(message, dict) else None
    return len(content.split()) if isinstance(content, str) else 0


def _completion_id() -> str:
    return f"chatcmpl-{_ID_PREFIX}{next(_ids):x}"


def _completion_body(params: _ChatParams) -> bytes:
    content = "".join(f"tok{i} " for i in range(params.max_tokens))
    doc = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": params.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": params.prompt_tokens,
            "completion_tokens": params.max_tokens,
            "total_tokens": params.prompt_tokens + params.max_tokens,
        },
    }
    return json.dumps(doc).encode()
