"""Secrets hidden from callers who may read configs but not hold credentials (viewers).

Config YAML is redacted line by line rather than parsed and re-dumped, so what a viewer sees
keeps the author's layout and comments, drafts that do not parse are covered too, and a diff
of two versions can be redacted the same way. A value is secret when its key names one
(``password``, ``token``, ``secret``, ``apiKey``, ... in any case, as part of a longer key too).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "is_secret_key", "redact_data", "redact_yaml", "viewer_only"]

MASK = "***"

_SECRET_WORDS = ("password", "passwd", "token", "secret", "apikey", "api_key", "privatekey")

# ``key: value`` in block or flow style (``auth: {username: u, password: "p"}``), also inside
# a unified diff line. The value ends at a flow separator, a comment or the end of the line.
_SECRET_PAIR = re.compile(
    r"(?i)(?P<key>[\w.-]*(?:" + "|".join(_SECRET_WORDS) + r")[\w.-]*)"
    r"(?P<sep>[\"']?\s*:[ \t]+)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[^,}\]#\s][^,}\]#\n]*?)"
    r"(?=[ \t]*(?:[,}\]]|#|$))",
    re.MULTILINE,
)


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(word in key.lower() for word in _SECRET_WORDS)


def redact_data(value: Any) -> Any:
    """A copy of JSON-like ``value`` with every secret-named key's value replaced by MASK."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) else redact_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_data(v) for v in value]
    return value


def viewer_only(role: str) -> bool:
    """Whether a caller of ``role`` gets configs redacted: viewers read, they hold no
    credentials; operators deploy with them and see them."""
    return role == "viewer"


def redact_yaml(text: str) -> str:
    """``text`` (YAML, or a unified diff of YAML) with secret values replaced by MASK."""
    # Quoted: a bare ``***`` would read as a YAML alias.
    return _SECRET_PAIR.sub(lambda m: f'{m["key"]}{m["sep"]}"{MASK}"', text)
