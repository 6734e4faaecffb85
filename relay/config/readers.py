"""The issue collector (``_Ctx``) and the typed readers that report into it.

A reader takes a raw value and the path it was found at, and returns it typed. It never raises:
a problem is reported into the ``_Ctx`` and a placeholder (the default) is returned, so parsing
carries on and finds further problems. A config with any issue is never returned, so
placeholders never reach a running relay.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from relay.config.errors import ConfigIssue
from relay.config.model import Address
from relay.config.values import _kind, _show, parse_address, parse_duration

_T = TypeVar("_T")


@dataclass
class _Ctx:
    base_dir: str
    #: Path used for problems of the document as a whole ("<yaml>", the file name, ...).
    root: str
    #: False: certificate paths are not checked against this machine's files.
    check_files: bool = True
    issues: list[ConfigIssue] = field(default_factory=list)
    #: Names defined in each top-level named section, for reference checks.
    names: dict[str, frozenset[str]] = field(default_factory=dict)

    def error(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path or self.root, message))


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(ctx: _Ctx, value: object, path: str, allowed: Sequence[str]) -> dict[str, object]:
    """The known keys of a mapping; reports non-mappings, non-string and unknown keys."""
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping, got {_kind(value)}")
        return {}
    known: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            ctx.error(path, f"key {_show(key)} is not a string")
        elif key not in allowed:
            ctx.error(
                _key(path, key), f"unknown key {_show(key)}; expected one of {', '.join(allowed)}"
            )
        else:
            known[key] = item
    return known


def _section(
    ctx: _Ctx, value: object, path: str, allowed: Sequence[str]
) -> dict[str, object] | None:
    """Like ``_mapping`` for an optional section: None when it is absent (null) or not a
    mapping (reported), so the caller skips it rather than report its fields as missing."""
    if value is None:
        return None
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping, got {_kind(value)}")
        return None
    return _mapping(ctx, value, path, allowed)


def _list(ctx: _Ctx, value: object, path: str) -> list[object]:
    """``value`` as a list; null is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        ctx.error(path, f"expected a list, got {_kind(value)}")
        return []
    return list(value)


def _str(ctx: _Ctx, value: object, path: str, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        ctx.error(path, f"expected a string, got {_kind(value)} (quote it)")
        return default
    return value


def _opt_str(ctx: _Ctx, value: object, path: str) -> str | None:
    """An optional, non-empty string."""
    if value is None:
        return None
    text = _str(ctx, value, path, "")
    if isinstance(value, str) and not text:
        ctx.error(path, "must not be empty")
    return text or None


def _required_str(ctx: _Ctx, value: object, path: str) -> str:
    if value is None:
        ctx.error(path, "required")
        return ""
    return _opt_str(ctx, value, path) or ""


def _url_path(ctx: _Ctx, value: object, path: str, default: str) -> str:
    text = _str(ctx, value, path, default)
    if not text.startswith("/"):
        ctx.error(path, f"{_show(text)} must start with '/'")
        return default
    return text


def _bool(ctx: _Ctx, value: object, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        ctx.error(path, f"expected true or false, got {_kind(value)} {_show(value)}")
        return default
    return value


def _int(ctx: _Ctx, value: object, path: str, default: int, minimum: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.error(path, f"expected an integer, got {_kind(value)} {_show(value)}")
        return default
    if value < minimum:
        ctx.error(path, f"must be at least {minimum}, got {value}")
        return default
    return value


def _duration(
    ctx: _Ctx, value: object, path: str, default: float, *, positive: bool = False
) -> float:
    """Seconds from a duration; ``positive`` refuses zero too (intervals, timeouts)."""
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        ctx.error(path, str(exc))
        return default
    if positive and seconds == 0:
        ctx.error(path, "must be greater than zero")
        return default
    return seconds


def _choice(
    ctx: _Ctx, value: object, path: str, choices: Sequence[str], default: str, what: str
) -> str | None:
    """One of ``choices``; None (after reporting) for anything else. null means ``default``."""
    if value is None:
        return default
    expected = ", ".join(choices)
    if not isinstance(value, str):
        ctx.error(path, f"expected one of {expected}, got {_kind(value)} {_show(value)}")
        return None
    if value not in choices:
        ctx.error(path, f"unknown {what} {_show(value)}; expected one of {expected}")
        return None
    return value


_NO_ADDRESS = Address("", 0)


def _address(ctx: _Ctx, value: object, path: str, *, listen: bool) -> Address:
    """A required address; a placeholder with port 0 when bad (skipped by port checks)."""
    if value is None:
        ctx.error(path, "required")
        return _NO_ADDRESS
    if not isinstance(value, str):
        # YAML reads an unquoted 10:20 as a base-60 integer; quoting fixes that as well.
        ctx.error(path, f"expected a string like ':8080', got {_kind(value)} (quote it)")
        return _NO_ADDRESS
    try:
        return parse_address(value, listen=listen)
    except ValueError as exc:
        ctx.error(path, str(exc))
        return _NO_ADDRESS


def _ip_or_cidr_list(ctx: _Ctx, value: object, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(_list(ctx, value, path)):
        item_path = f"{path}[{index}]"
        if not isinstance(item, str):
            ctx.error(item_path, f"expected an IP or CIDR string, got {_kind(item)}")
            continue
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            ctx.error(item_path, f"{_show(item)} is not an IP address or CIDR")
            continue
        out.append(item.strip())
    return tuple(out)


_MAX_METADATA_DEPTH = 32


def _metadata(ctx: _Ctx, value: object, path: str) -> dict[str, object]:
    """A free-form metadata mapping. Values must be plain data (the admin API serves them as
    JSON): strings, numbers, booleans, null, lists and string-keyed mappings, not cyclic."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping, got {_kind(value)}")
        return {}
    out: dict[str, object] = {}
    done: set[int] = set()
    for key, item in value.items():
        if not isinstance(key, str):
            ctx.error(path, f"key {_show(key)} is not a string")
        elif _plain(ctx, item, _key(path, key), [], done):
            out[key] = item
    return out


def _plain(ctx: _Ctx, value: object, path: str, stack: list[int], done: set[int]) -> bool:
    """True if ``value`` is plain data; reports the first problem only (one per key)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        if math.isfinite(value):
            return True
        ctx.error(path, f"{value} is not a finite number")
        return False
    if not isinstance(value, list | dict):
        ctx.error(path, f"unsupported value of type {_kind(value)}")
        return False
    # ``done`` makes shared sub-trees (YAML aliases) cost once, so alias bombs stay cheap.
    if id(value) in done:
        return True
    if id(value) in stack or len(stack) >= _MAX_METADATA_DEPTH:
        ctx.error(path, "nested too deeply (or contains itself)")
        return False
    stack.append(id(value))
    try:
        if isinstance(value, list):
            return all(_plain(ctx, v, f"{path}[{i}]", stack, done) for i, v in enumerate(value))
        for key, item in value.items():
            if not isinstance(key, str):
                ctx.error(path, f"key {_show(key)} is not a string")
                return False
            if not _plain(ctx, item, _key(path, key), stack, done):
                return False
        return True
    finally:
        stack.pop()
        done.add(id(value))


def _take(ctx: _Ctx, meta: dict[str, object], name: str, path: str) -> object:
    """Remove and return metadata key ``name`` matched case-insensitively, as gost does
    (``keepAlive`` and ``keepalive`` are the same key). Two spellings at once are an error."""
    found = [key for key in meta if key.lower() == name.lower()]
    if len(found) > 1:
        ctx.error(_key(path, name), f"given more than once: {', '.join(found)}")
    values = [meta.pop(key) for key in found]
    return values[-1] if values else None


def _items(
    ctx: _Ctx,
    value: object,
    path: str,
    parse: Callable[[_Ctx, object, str, int], _T],
) -> list[tuple[str, _T]]:
    """Parse each mapping of a list with ``parse(ctx, raw, path, index)``; non-mappings are
    reported and skipped. Returns (path, parsed) pairs."""
    out: list[tuple[str, _T]] = []
    for index, raw in enumerate(_list(ctx, value, path)):
        item_path = f"{path}[{index}]"
        if not isinstance(raw, dict):
            ctx.error(item_path, f"expected a mapping, got {_kind(raw)}")
            continue
        out.append((item_path, parse(ctx, raw, item_path, index)))
    return out


def _nonempty(ctx: _Ctx, value: object, path: str, what: str) -> None:
    """Report a missing or empty list that must have entries."""
    if value is None or (isinstance(value, list | tuple) and not value):
        ctx.error(path, f"at least one {what} is required")
