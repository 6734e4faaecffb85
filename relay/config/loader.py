"""Load and validate a relay config (DESIGN §3.2): gost v3 style YAML -> frozen ``RelayConfig``.

This module is the only place that maps gost's camelCase keys onto the dataclasses of
``relay.config.model`` and the only place that validates. Contract of every public loader:

* it returns a fully validated ``RelayConfig``, or
* it raises ``ConfigError`` listing *every* problem found (not just the first), each issue
  carrying the path of the bad field (``services[1].listener.type``) and a message that says
  what was expected;
* nothing else ever escapes, whatever the input (garbage types, odd YAML, deep nesting).

The validators below never raise: they report into a ``_Ctx`` and return a placeholder (the
default) so parsing can carry on and find further problems. A config with any issue is never
returned, so placeholders never reach a running relay.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, cast

import yaml

from relay.config.errors import ConfigError, ConfigIssue
from relay.config.model import (
    CONNECTOR_TYPES,
    DIALER_TYPES,
    HANDLER_TYPES,
    LISTENER_TYPES,
    LOG_FORMATS,
    LOG_LEVELS,
    STRATEGIES,
    Address,
    AdmissionConfig,
    APIConfig,
    Auth,
    CCConfig,
    ChainConfig,
    ConnectorConfig,
    DialerConfig,
    DialerType,
    ForwarderConfig,
    HandlerConfig,
    HandlerType,
    HopConfig,
    HTTPHandlerOptions,
    LimiterConfig,
    ListenerConfig,
    ListenerType,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    ProbeConfig,
    RelayConfig,
    SelectorConfig,
    ServiceConfig,
    ShieldConfig,
    Strategy,
    TLSConfig,
)

__all__ = [
    "config_from_mapping",
    "load_config_file",
    "load_config_text",
    "parse_address",
    "parse_duration",
]

# Allowed keys per section, in the order error messages list them.
TOP_KEYS = (
    "services",
    "chains",
    "log",
    "api",
    "metrics",
    "tls",
    "admissions",
    "shields",
    "ccs",
    "climiters",
    "rlimiters",
    "workers",
    "shutdownTimeout",
    "version",
)
SERVICE_KEYS = (
    "name",
    "addr",
    "listener",
    "handler",
    "forwarder",
    "admission",
    "shield",
    "cc",
    "climiter",
    "rlimiter",
    "metadata",
)
LISTENER_KEYS = ("type", "tls", "metadata")
HANDLER_KEYS = ("type", "chain", "auth", "metadata")
AUTH_KEYS = ("username", "password")
FORWARDER_KEYS = ("nodes", "selector", "probe")
TARGET_NODE_KEYS = ("name", "addr")
SELECTOR_KEYS = ("strategy", "maxFails", "failTimeout")
PROBE_KEYS = ("type", "interval", "timeout", "path")
CHAIN_KEYS = ("name", "hops")
HOP_KEYS = ("name", "selector", "probe", "nodes")
NODE_KEYS = ("name", "addr", "connector", "dialer")
CONNECTOR_KEYS = ("type", "auth")
DIALER_KEYS = ("type", "tls", "metadata")
# ``secure`` is gost's "verify the peer" switch. It is accepted so gost files load, and ignored:
# this relay always verifies unless ``insecureSkipVerify`` says otherwise.
TLS_KEYS = ("certFile", "keyFile", "caFile", "serverName", "insecureSkipVerify", "secure")
LOG_KEYS = ("level", "format")
API_KEYS = ("addr", "auth")
API_AUTH_KEYS = ("token",)
METRICS_KEYS = ("addr", "path")
ADMISSION_KEYS = ("name", "whitelist", "matchers")
SHIELD_KEYS = (
    "name",
    "window",
    "maxRequests",
    "blockDuration",
    "algorithm",
    "whitelist",
    "blacklist",
    "strict",
)
CC_KEYS = ("name", "rateLimit", "burstSize", "blockDuration", "checkInterval")
LIMITER_KEYS = ("name", "limits")
SERVICE_METADATA_KEYS = ("bufferSize",)
PROBE_TYPES = ("tcp", "http")
SHIELD_ALGORITHMS = ("sliding_window", "token_bucket")
#: Listeners that terminate TLS and therefore need a certificate.
TLS_LISTENERS = ("tls", "wss", "quic", "http3")
#: Listeners on UDP; a UDP and a TCP service may share a port number (HTTPS + HTTP/3 on 443).
UDP_LISTENERS = ("quic", "http3")
#: Service key -> top-level section its value names.
POLICY_SECTIONS = {
    "admission": "admissions",
    "shield": "shields",
    "cc": "ccs",
    "climiter": "climiters",
    "rlimiter": "rlimiters",
}

_T = TypeVar("_T")
_NamedT = TypeVar("_NamedT", bound="_Named")

# ----------------------------------------------------------------------------------------------
# Public API


def load_config_file(path: str) -> RelayConfig:
    """Read, parse and validate the YAML file at ``path``.

    Relative certificate paths resolve against the file's directory (``RelayConfig.base_dir``).
    Unreadable files and malformed YAML are reported as a ``ConfigError`` whose single issue's
    path is ``path`` itself.
    """
    try:
        with open(path, encoding="utf-8-sig") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError.single(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError.single(path, f"not UTF-8 text: {exc.reason}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError.single(path or "<file>", f"cannot read: {exc}") from None
    return _load_text(text, os.path.dirname(os.path.abspath(path)), path)


def load_config_text(text: str, base_dir: str = ".", *, check_files: bool = True) -> RelayConfig:
    """Parse and validate YAML text; relative file paths resolve against ``base_dir``.

    YAML syntax errors give one issue with path ``<yaml>`` and a 1-based line and column.
    ``check_files=False`` skips checking that certificate files exist (see
    ``config_from_mapping``).
    """
    return _load_text(text, base_dir, "<yaml>", check_files=check_files)


def config_from_mapping(
    data: Mapping[str, object], base_dir: str = ".", *, check_files: bool = True
) -> RelayConfig:
    """Validate an already parsed config (gost-style keys) and build the ``RelayConfig``.

    ``data`` is checked, not trusted: anything that is not a mapping of the documented shape
    is reported as a ``ConfigError``. ``check_files=False`` skips checking that certificate
    files exist under ``base_dir``: for configs rendered for another host (the master's
    renderer), where the files exist on the target, not here. Everything else is checked.
    """
    return _build(data, base_dir, "<config>", check_files=check_files)


_DURATION_UNITS: dict[str, tuple[float, float]] = {
    # unit: (multiplier, divisor); dividing keeps "250ms" exactly 0.25.
    "ns": (1.0, 1e9),
    "us": (1.0, 1e6),
    "µs": (1.0, 1e6),  # micro sign, as Go accepts it
    "μs": (1.0, 1e6),  # Greek mu, as Go accepts it
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION_RE = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_DURATION_PART_RE = re.compile(rf"({_NUMBER})({_UNIT})")
_NUMBER_RE = re.compile(_NUMBER)


def parse_duration(value: object) -> float:
    """Seconds from a gost/Go duration (``"5s"``, ``"250ms"``, ``"1h30m"``) or a plain number.

    Plain numbers (and numeric strings) are seconds. Raises ``ValueError`` with a message fit
    for a ``ConfigIssue`` for anything else, including negative or non-finite values.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"expected a duration like '5s' or a number of seconds, got {_kind(value)}"
        )
    if isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration {_show(value)} is not a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"duration {_show(value)} is negative")
    return seconds


def _parse_duration_text(value: str) -> float:
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration {_show(value)} is negative")
    text = text.removeprefix("+")
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    if _DURATION_RE.fullmatch(text):
        total = 0.0
        for number, unit in _DURATION_PART_RE.findall(text):
            multiplier, divisor = _DURATION_UNITS[unit]
            total += float(number) * multiplier / divisor
        return total
    raise ValueError(
        f"bad duration {_show(value)}; expected e.g. '5s', '250ms', '1h30m' or a number of seconds"
    )


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_ADDRESS_HINT = "expected host:port like ':8080', '127.0.0.1:8000', '[::1]:443'"


def parse_address(text: str, *, listen: bool = False) -> Address:
    """Parse ``host:port`` (``":8080"``, ``"127.0.0.1:8000"``, ``"[::1]:443"``, ``"h.example:1"``).

    ``listen=True`` (service, api and metrics addresses): the host may be empty, meaning all
    interfaces, and the port may be 0 (an ephemeral port, for tests). Otherwise (addresses that
    are dialled) a host and a port 1-65535 are required. Raises ``ValueError`` with a message
    fit for a ``ConfigIssue``.
    """
    try:
        host, port_text = _split_host_port(text)
    except ValueError as exc:
        raise ValueError(f"bad address {_show(text)}: {exc}; {_ADDRESS_HINT}") from None
    if not _PORT_RE.fullmatch(port_text):
        raise ValueError(f"bad port {_show(port_text)} in {_show(text)}; {_ADDRESS_HINT}")
    port = int(port_text)
    lowest = 0 if listen else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"port {port} in {_show(text)} is out of range {lowest}-65535")
    if not host and not listen:
        raise ValueError(f"address {_show(text)} has no host; a dialled address needs one")
    return Address(host, port)


def _split_host_port(text: str) -> tuple[str, str]:
    """(host, port text); the host is validated, the port is not."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError("missing ':port' after ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} is not an IPv6 address") from None
        return host, rest[1:]
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("missing ':port'")
    if ":" in host:
        raise ValueError("IPv6 hosts go in brackets, like '[::1]:443'")
    if host and not _valid_host(host):
        raise ValueError(f"bad host {_show(host)}")
    return host, port_text


def _valid_host(host: str) -> bool:
    if not _HOSTNAME_RE.fullmatch(host) or ".." in host:
        return False
    if re.fullmatch(r"[0-9.]+", host):  # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last; gost refuses)."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Checked on the composed graph, before construction: merge keys (``<<``) rewrite
        # mapping nodes in place while constructing, which would look like duplicates.
        _reject_duplicate_keys(node)
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _reject_duplicate_keys(root: yaml.Node) -> None:
    # Iterative with a visited set: aliases make the node graph a DAG (or even cyclic).
    stack: list[yaml.Node] = [root]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            _check_mapping_node(node)
            for key_node, value_node in node.value:
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _check_mapping_node(node: yaml.MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key_node.value!r}",
                key_node.start_mark,
            )
        seen.add(ident)


def _load_text(text: str, base_dir: str, source: str, *, check_files: bool = True) -> RelayConfig:
    if not isinstance(text, str):
        raise ConfigError.single(source, f"expected YAML text, got {_kind(text)}")
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError((_yaml_issue(source, text, exc),)) from None
    except RecursionError:
        raise ConfigError.single(source, "YAML nested too deeply") from None
    if data is None:  # empty document
        data = {}
    return _build(data, base_dir, source, check_files=check_files)


def _yaml_issue(source: str, text: str, exc: yaml.YAMLError) -> ConfigIssue:
    """One issue naming the 1-based line and column PyYAML stopped at."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        return ConfigIssue(
            source, f"line {mark.line + 1}, column {mark.column + 1}: {problem}{context}"
        )
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised before scanning (control characters): it knows only an offset into the text.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return ConfigIssue(
            source, f"line {line}, column {column}: character U+{ord(char):04X} is not allowed"
        )
    return ConfigIssue(source, f"invalid YAML: {exc}")


# ----------------------------------------------------------------------------------------------
# Validation context and generic readers. Readers report problems and return a placeholder.


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


def _kind(value: object) -> str:
    """YAML-ish name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _show(value: object) -> str:
    """repr() for messages, cut short so garbage input cannot flood the output."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not escape
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


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


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def _unique(ctx: _Ctx, items: Sequence[tuple[str, _Named]], what: str) -> None:
    """Report items whose name repeats an earlier one. Empty names were reported already."""
    first: dict[str, str] = {}
    for path, item in items:
        if not item.name:
            continue
        if item.name in first:
            ctx.error(
                _key(path, "name"),
                f"duplicate {what} name {_show(item.name)} (first at {first[item.name]})",
            )
        else:
            first[item.name] = path


def _nonempty(ctx: _Ctx, value: object, path: str, what: str) -> None:
    """Report a missing or empty list that must have entries."""
    if value is None or (isinstance(value, list | tuple) and not value):
        ctx.error(path, f"at least one {what} is required")


def _ref(ctx: _Ctx, value: object, path: str, section: str, what: str) -> str | None:
    """A name that must be defined in top-level ``section``."""
    name = _opt_str(ctx, value, path)
    if name is None:
        return None
    defined = ctx.names.get(section, frozenset())
    if name not in defined:
        hint = f"defined: {', '.join(sorted(defined))}" if defined else f"no {section} are defined"
        ctx.error(path, f"unknown {what} {_show(name)}; {hint}")
    return name


def _defined_names(value: object) -> frozenset[str]:
    """Names in a raw top-level section, gathered before parsing so references can be checked
    wherever they appear in the file."""
    if not isinstance(value, list | tuple):
        return frozenset()
    return frozenset(
        item["name"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    )


# ----------------------------------------------------------------------------------------------
# Shared sections


def _tls(ctx: _Ctx, value: object, path: str) -> TLSConfig | None:
    d = _section(ctx, value, path, TLS_KEYS)
    if d is None:
        return None
    files = {
        key: _opt_str(ctx, d.get(key), _key(path, key)) for key in ("certFile", "keyFile", "caFile")
    }
    for key, file_path in files.items():
        if file_path is not None:
            _check_file(ctx, file_path, _key(path, key))
    cert, key_file = files["certFile"], files["keyFile"]
    if cert and not key_file:
        ctx.error(_key(path, "keyFile"), "required when certFile is set")
    if key_file and not cert:
        ctx.error(_key(path, "certFile"), "required when keyFile is set")
    _bool(ctx, d.get("secure"), _key(path, "secure"), True)  # see TLS_KEYS: accepted, ignored
    return TLSConfig(
        cert_file=cert,
        key_file=key_file,
        ca_file=files["caFile"],
        server_name=_opt_str(ctx, d.get("serverName"), _key(path, "serverName")),
        insecure_skip_verify=_bool(
            ctx, d.get("insecureSkipVerify"), _key(path, "insecureSkipVerify"), False
        ),
    )


def _check_file(ctx: _Ctx, file_path: str, path: str) -> None:
    if not ctx.check_files:
        return
    resolved = os.path.join(ctx.base_dir, file_path)  # absolute paths stay as they are
    if not os.path.isfile(resolved):
        ctx.error(path, f"file not found: {resolved}")


def _auth(ctx: _Ctx, value: object, path: str) -> Auth | None:
    d = _section(ctx, value, path, AUTH_KEYS)
    if d is None:
        return None
    username = _required_str(ctx, d.get("username"), _key(path, "username"))
    password = _str(ctx, d.get("password"), _key(path, "password"), "")
    return Auth(username, password)


def _selector(ctx: _Ctx, value: object, path: str) -> SelectorConfig:
    default = SelectorConfig()
    d = _section(ctx, value, path, SELECTOR_KEYS)
    if d is None:
        return default
    strategy = _choice(
        ctx, d.get("strategy"), _key(path, "strategy"), STRATEGIES, default.strategy, "strategy"
    )
    return SelectorConfig(
        strategy=cast(Strategy, strategy or default.strategy),
        max_fails=_int(ctx, d.get("maxFails"), _key(path, "maxFails"), default.max_fails, 1),
        fail_timeout=_duration(
            ctx, d.get("failTimeout"), _key(path, "failTimeout"), default.fail_timeout
        ),
    )


def _probe(ctx: _Ctx, value: object, path: str) -> ProbeConfig | None:
    d = _section(ctx, value, path, PROBE_KEYS)
    if d is None:
        return None
    default = ProbeConfig()
    probe_type = _choice(ctx, d.get("type"), _key(path, "type"), PROBE_TYPES, default.type, "probe")
    return ProbeConfig(
        type="http" if probe_type == "http" else "tcp",
        interval=_duration(
            ctx, d.get("interval"), _key(path, "interval"), default.interval, positive=True
        ),
        timeout=_duration(
            ctx, d.get("timeout"), _key(path, "timeout"), default.timeout, positive=True
        ),
        path=_url_path(ctx, d.get("path"), _key(path, "path"), default.path),
    )


# ----------------------------------------------------------------------------------------------
# Services


def _service(ctx: _Ctx, raw: object, path: str, index: int) -> ServiceConfig:
    d = _mapping(ctx, raw, path, SERVICE_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    addr = _address(ctx, d.get("addr"), _key(path, "addr"), listen=True)
    listener = _listener(ctx, d.get("listener"), _key(path, "listener"))
    handler = _handler(ctx, d.get("handler"), _key(path, "handler"))
    forwarder = _forwarder(ctx, d.get("forwarder"), _key(path, "forwarder"))
    # A forwarder that is there but malformed was reported already; "needs a forwarder" would
    # only repeat it.
    if handler is not None and (forwarder is not None or d.get("forwarder") is None):
        _check_handler_targets(ctx, path, handler, forwarder)
    policies = {
        key: _ref(ctx, d.get(key), _key(path, key), section, key)
        for key, section in POLICY_SECTIONS.items()
    }
    service = ServiceConfig(
        name=name,
        addr=addr,
        listener=listener,
        handler=handler or HandlerConfig(type="http"),
        forwarder=forwarder,
        admission=policies["admission"],
        shield=policies["shield"],
        cc=policies["cc"],
        climiter=policies["climiter"],
        rlimiter=policies["rlimiter"],
    )
    buffer_size = _service_buffer_size(ctx, d.get("metadata"), _key(path, "metadata"))
    return service if buffer_size is None else replace(service, buffer_size=buffer_size)


def _service_buffer_size(ctx: _Ctx, value: object, path: str) -> int | None:
    """``metadata.bufferSize``; None when not set (the model's default applies)."""
    meta = _metadata(ctx, value, path)
    raw = _take(ctx, meta, "bufferSize", path)
    size = None if raw is None else _int(ctx, raw, _key(path, "bufferSize"), 1, 1)
    # ServiceConfig has nowhere to keep other keys: refuse them rather than drop them silently.
    for key in meta:
        ctx.error(_key(path, key), f"unknown key {_show(key)}; expected one of bufferSize")
    return size


def _listener(ctx: _Ctx, value: object, path: str) -> ListenerConfig:
    """The listener; a missing one is plain tcp, as in gost."""
    default = ListenerConfig()
    d = _section(ctx, value, path, LISTENER_KEYS)
    if d is None:
        return default
    listener_type = _choice(
        ctx, d.get("type"), _key(path, "type"), LISTENER_TYPES, "tcp", "listener"
    )
    meta_path = _key(path, "metadata")
    meta = _metadata(ctx, d.get("metadata"), meta_path)
    url_path = _url_path(
        ctx, _take(ctx, meta, "path", meta_path), _key(meta_path, "path"), default.path
    )
    keepalive = _take(ctx, meta, "keepalive", meta_path)
    if keepalive is not None:
        # Normalised to seconds so transports read a float whatever the file said.
        meta["keepalive"] = _duration(ctx, keepalive, _key(meta_path, "keepalive"), 0.0)
    return ListenerConfig(
        type=cast(ListenerType, listener_type or "tcp"),
        tls=_tls(ctx, d.get("tls"), _key(path, "tls")),
        path=url_path,
        metadata=meta,
    )


def _handler(ctx: _Ctx, value: object, path: str) -> HandlerConfig | None:
    """The handler, or None (after reporting) when it is missing or its type is bad, so the
    checks that depend on the type are skipped instead of guessing."""
    if value is None:
        ctx.error(path, f"required: a handler with a type ({', '.join(HANDLER_TYPES)})")
        return None
    d = _section(ctx, value, path, HANDLER_KEYS)
    if d is None:
        return None
    if "type" not in d or d["type"] is None:
        ctx.error(_key(path, "type"), f"required: one of {', '.join(HANDLER_TYPES)}")
        handler_type = None
    else:
        handler_type = _choice(ctx, d["type"], _key(path, "type"), HANDLER_TYPES, "http", "handler")
    chain = _ref(ctx, d.get("chain"), _key(path, "chain"), "chains", "chain")
    auth = _auth(ctx, d.get("auth"), _key(path, "auth"))
    options, meta = _http_options(ctx, d.get("metadata"), _key(path, "metadata"))
    if handler_type is None:
        return None
    return HandlerConfig(
        type=cast(HandlerType, handler_type), chain=chain, auth=auth, http=options, metadata=meta
    )


def _http_options(
    ctx: _Ctx, value: object, path: str
) -> tuple[HTTPHandlerOptions, dict[str, object]]:
    """``http`` handler options out of handler metadata, plus the metadata left over."""
    meta = _metadata(ctx, value, path)
    default = HTTPHandlerOptions()

    def duration(key: str, fallback: float, positive: bool) -> float:
        raw = _take(ctx, meta, key, path)
        return _duration(ctx, raw, _key(path, key), fallback, positive=positive)

    def integer(key: str, fallback: int, minimum: int) -> int:
        return _int(ctx, _take(ctx, meta, key, path), _key(path, key), fallback, minimum)

    options = HTTPHandlerOptions(
        ttfb_timeout=duration("ttfbTimeout", default.ttfb_timeout, True),
        idle_timeout=duration("idleTimeout", default.idle_timeout, True),
        total_timeout=duration("totalTimeout", default.total_timeout, False),  # 0 disables
        keepalive_timeout=duration("keepaliveTimeout", default.keepalive_timeout, True),
        retry_buffer=integer("retryBuffer", default.retry_buffer, 0),
        max_header_size=integer("maxHeaderSize", default.max_header_size, 1),
    )
    heartbeat = _take(ctx, meta, "sseHeartbeat", path)
    if heartbeat is not None:
        # No typed field yet: kept in metadata, normalised to seconds.
        meta["sseHeartbeat"] = _duration(ctx, heartbeat, _key(path, "sseHeartbeat"), 0.0)
    return options, meta


def _check_handler_targets(
    ctx: _Ctx, path: str, handler: HandlerConfig, forwarder: ForwarderConfig | None
) -> None:
    """Every handler must know where traffic goes; a relay handler must never be open."""
    if forwarder is not None:
        return
    target_path = _key(path, "forwarder")
    if handler.type == "relay" and handler.chain is None:
        ctx.error(
            target_path, "relay handler needs a forwarder: it never connects to arbitrary targets"
        )
    elif handler.type == "forward" and handler.chain is None:
        ctx.error(target_path, "forward handler needs a forwarder or a chain")
    elif handler.type == "http" and handler.chain is None:
        ctx.error(
            target_path,
            "http handler needs a forwarder or a chain: it has nowhere to send requests",
        )


def _forwarder(ctx: _Ctx, value: object, path: str) -> ForwarderConfig | None:
    d = _section(ctx, value, path, FORWARDER_KEYS)
    if d is None:
        return None
    nodes_path = _key(path, "nodes")
    _nonempty(ctx, d.get("nodes"), nodes_path, "node")
    nodes = _items(ctx, d.get("nodes"), nodes_path, _target_node)
    _unique(ctx, nodes, "node")
    return ForwarderConfig(
        nodes=tuple(node for _, node in nodes),
        selector=_selector(ctx, d.get("selector"), _key(path, "selector")),
        probe=_probe(ctx, d.get("probe"), _key(path, "probe")),
    )


def _target_node(ctx: _Ctx, raw: object, path: str, index: int) -> NodeConfig:
    """A forwarder node: a name (default ``target-N``) and the address it allows."""
    d = _mapping(ctx, raw, path, TARGET_NODE_KEYS)
    name = _opt_str(ctx, d.get("name"), _key(path, "name")) or f"target-{index}"
    return NodeConfig(
        name=name, addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=False)
    )


def _check_service_tls(ctx: _Ctx, path: str, service: ServiceConfig, top: TLSConfig | None) -> None:
    """TLS-terminating listeners need a certificate. A listener ``tls`` block replaces the
    top-level one as a whole (no field-by-field merge), so it must carry its own."""
    listener = service.listener
    if listener.type not in TLS_LISTENERS:
        return
    if listener.tls is not None:
        if listener.tls.cert_file is None and listener.tls.key_file is None:
            ctx.error(
                _key(path, "listener.tls"),
                f"{listener.type} listener needs certFile and keyFile "
                "(a listener tls block replaces the top-level tls)",
            )
    elif top is None or (top.cert_file is None and top.key_file is None):
        ctx.error(
            _key(path, "listener"),
            f"{listener.type} listener needs a certificate: set listener.tls or the top-level "
            "tls (certFile, keyFile)",
        )


# ----------------------------------------------------------------------------------------------
# Chains


def _chain(ctx: _Ctx, raw: object, path: str, index: int) -> ChainConfig:
    d = _mapping(ctx, raw, path, CHAIN_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    hops_path = _key(path, "hops")
    _nonempty(ctx, d.get("hops"), hops_path, "hop")
    hops = _items(ctx, d.get("hops"), hops_path, _hop)
    _unique(ctx, hops, "hop")
    return ChainConfig(name=name, hops=tuple(hop for _, hop in hops))


def _hop(ctx: _Ctx, raw: object, path: str, index: int) -> HopConfig:
    d = _mapping(ctx, raw, path, HOP_KEYS)
    nodes_path = _key(path, "nodes")
    _nonempty(ctx, d.get("nodes"), nodes_path, "node")
    nodes = _items(ctx, d.get("nodes"), nodes_path, _chain_node)
    _unique(ctx, nodes, "node")
    return HopConfig(
        name=_opt_str(ctx, d.get("name"), _key(path, "name")) or f"hop-{index}",
        nodes=tuple(node for _, node in nodes),
        selector=_selector(ctx, d.get("selector"), _key(path, "selector")),
        probe=_probe(ctx, d.get("probe"), _key(path, "probe")),
    )


def _chain_node(ctx: _Ctx, raw: object, path: str, index: int) -> NodeConfig:
    """A hop node: always has a connector (relay when omitted) and a dialer (tcp)."""
    d = _mapping(ctx, raw, path, NODE_KEYS)
    return NodeConfig(
        name=_opt_str(ctx, d.get("name"), _key(path, "name")) or f"node-{index}",
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=False),
        connector=_connector(ctx, d.get("connector"), _key(path, "connector")),
        dialer=_dialer(ctx, d.get("dialer"), _key(path, "dialer")),
    )


def _connector(ctx: _Ctx, value: object, path: str) -> ConnectorConfig:
    d = _section(ctx, value, path, CONNECTOR_KEYS)
    if d is None:
        return ConnectorConfig()
    _choice(ctx, d.get("type"), _key(path, "type"), CONNECTOR_TYPES, "relay", "connector")
    return ConnectorConfig(type="relay", auth=_auth(ctx, d.get("auth"), _key(path, "auth")))


def _dialer(ctx: _Ctx, value: object, path: str) -> DialerConfig:
    default = DialerConfig()
    d = _section(ctx, value, path, DIALER_KEYS)
    if d is None:
        return default
    dialer_type = _choice(ctx, d.get("type"), _key(path, "type"), DIALER_TYPES, "tcp", "dialer")
    meta_path = _key(path, "metadata")
    meta = _metadata(ctx, d.get("metadata"), meta_path)

    def field_path(key: str) -> str:
        return _key(meta_path, key)

    url_path = _url_path(ctx, _take(ctx, meta, "path", meta_path), field_path("path"), default.path)
    host = _opt_str(ctx, _take(ctx, meta, "host", meta_path), field_path("host"))
    keepalive = _take(ctx, meta, "keepalive", meta_path)
    timeout = _take(ctx, meta, "timeout", meta_path)
    return DialerConfig(
        type=cast(DialerType, dialer_type or "tcp"),
        tls=_tls(ctx, d.get("tls"), _key(path, "tls")),
        path=url_path,
        host=host,
        keepalive=_duration(ctx, keepalive, field_path("keepalive"), default.keepalive),
        timeout=_duration(ctx, timeout, field_path("timeout"), default.timeout, positive=True),
        metadata=meta,
    )


# ----------------------------------------------------------------------------------------------
# Policies


def _admission(ctx: _Ctx, raw: object, path: str, index: int) -> AdmissionConfig:
    d = _mapping(ctx, raw, path, ADMISSION_KEYS)
    return AdmissionConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        whitelist=_bool(ctx, d.get("whitelist"), _key(path, "whitelist"), False),
        matchers=_ip_or_cidr_list(ctx, d.get("matchers"), _key(path, "matchers")),
    )


def _shield(ctx: _Ctx, raw: object, path: str, index: int) -> ShieldConfig:
    d = _mapping(ctx, raw, path, SHIELD_KEYS)
    default = ShieldConfig(name="")
    algorithm = _choice(
        ctx,
        d.get("algorithm"),
        _key(path, "algorithm"),
        SHIELD_ALGORITHMS,
        default.algorithm,
        "algorithm",
    )
    return ShieldConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        window=_duration(ctx, d.get("window"), _key(path, "window"), default.window, positive=True),
        max_requests=_int(
            ctx, d.get("maxRequests"), _key(path, "maxRequests"), default.max_requests, 1
        ),
        block_duration=_duration(
            ctx, d.get("blockDuration"), _key(path, "blockDuration"), default.block_duration
        ),
        algorithm="token_bucket" if algorithm == "token_bucket" else "sliding_window",
        whitelist=_ip_or_cidr_list(ctx, d.get("whitelist"), _key(path, "whitelist")),
        blacklist=_ip_or_cidr_list(ctx, d.get("blacklist"), _key(path, "blacklist")),
        strict=_bool(ctx, d.get("strict"), _key(path, "strict"), default.strict),
    )


def _cc(ctx: _Ctx, raw: object, path: str, index: int) -> CCConfig:
    d = _mapping(ctx, raw, path, CC_KEYS)
    default = CCConfig(name="")
    return CCConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        rate_limit=_int(ctx, d.get("rateLimit"), _key(path, "rateLimit"), default.rate_limit, 1),
        burst_size=_int(ctx, d.get("burstSize"), _key(path, "burstSize"), default.burst_size, 1),
        block_duration=_duration(
            ctx, d.get("blockDuration"), _key(path, "blockDuration"), default.block_duration
        ),
        check_interval=_duration(
            ctx,
            d.get("checkInterval"),
            _key(path, "checkInterval"),
            default.check_interval,
            positive=True,
        ),
    )


def _limiter(ctx: _Ctx, raw: object, path: str, index: int) -> LimiterConfig:
    d = _mapping(ctx, raw, path, LIMITER_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    limits_path = _key(path, "limits")
    limits: list[str] = []
    for line_index, line in enumerate(_list(ctx, d.get("limits"), limits_path)):
        line_path = f"{limits_path}[{line_index}]"
        if not isinstance(line, str):
            ctx.error(line_path, f"expected a string like '$$ 10', got {_kind(line)}")
            continue
        try:
            limits.append(parse_limit_line(line))
        except ValueError as exc:
            ctx.error(line_path, str(exc))
    return LimiterConfig(name=name, limits=tuple(limits))


def parse_limit_line(line: str) -> str:
    """Validate a gost limit line (``"$ 100"`` service-wide, ``"$$ 10"`` per client IP,
    ``"10.0.0.0/8 5"`` per IP or CIDR) and return it with normalised spacing."""
    parts = line.split()
    if len(parts) != 2:
        raise ValueError(
            f"bad limit {_show(line)}; expected '<scope> <limit>' with scope $, $$, an IP or a CIDR"
        )
    scope, limit = parts
    if scope not in ("$", "$$"):
        try:
            ipaddress.ip_network(scope, strict=False)
        except ValueError:
            raise ValueError(
                f"bad limit scope {_show(scope)}; expected $, $$, an IP or a CIDR"
            ) from None
    if not re.fullmatch(r"[0-9]+", limit) or int(limit) < 1:
        raise ValueError(f"bad limit {_show(limit)} in {_show(line)}; expected a positive integer")
    return f"{scope} {limit}"


# ----------------------------------------------------------------------------------------------
# Top level


def _log(ctx: _Ctx, value: object, path: str) -> LogConfig:
    default = LogConfig()
    d = _section(ctx, value, path, LOG_KEYS)
    if d is None:
        return default
    level = _choice(
        ctx, d.get("level"), _key(path, "level"), LOG_LEVELS, default.level, "log level"
    )
    fmt = _choice(
        ctx, d.get("format"), _key(path, "format"), LOG_FORMATS, default.format, "log format"
    )
    return LogConfig(level=level or default.level, format=fmt or default.format)


def _api(ctx: _Ctx, value: object, path: str) -> APIConfig | None:
    d = _section(ctx, value, path, API_KEYS)
    if d is None:
        return None
    token = None
    auth_path = _key(path, "auth")
    auth = _section(ctx, d.get("auth"), auth_path, API_AUTH_KEYS)
    if auth is not None:
        token = _opt_str(ctx, auth.get("token"), _key(auth_path, "token"))
    return APIConfig(
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=True), token=token
    )


def _metrics(ctx: _Ctx, value: object, path: str) -> MetricsConfig | None:
    d = _section(ctx, value, path, METRICS_KEYS)
    if d is None:
        return None
    return MetricsConfig(
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=True),
        path=_url_path(ctx, d.get("path"), _key(path, "path"), MetricsConfig(_NO_ADDRESS).path),
    )


def _workers(ctx: _Ctx, value: object, path: str) -> int:
    default = RelayConfig().workers
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):
        ctx.error(path, f"expected an integer >= 1 or 'auto', got {_show(value)}")
        return default
    return _int(ctx, value, path, default, 1)


def _check_ports(ctx: _Ctx, sockets: list[tuple[str, str, Address]]) -> None:
    """Two listening sockets (path, protocol, address) clash on the same protocol and port
    when their hosts overlap; "" and the wildcard addresses overlap every host."""
    wildcard = ("", "0.0.0.0", "::")
    for later_index, (path, proto, addr) in enumerate(sockets):
        if addr.port == 0:  # ephemeral (or a bad address already reported)
            continue
        for earlier_path, earlier_proto, earlier in sockets[:later_index]:
            same_host = addr.host.lower() == earlier.host.lower()
            overlap = same_host or addr.host in wildcard or earlier.host in wildcard
            if proto == earlier_proto and addr.port == earlier.port and overlap:
                ctx.error(
                    path,
                    f"{proto} port {addr.port} is already used by {earlier_path} ({earlier})",
                )
                break


def _build(data: object, base_dir: str, root: str, *, check_files: bool = True) -> RelayConfig:
    ctx = _Ctx(base_dir=base_dir, root=root, check_files=check_files)
    if not isinstance(data, dict):
        ctx.error(
            root,
            f"the config must be a mapping of sections (services, chains, ...), got {_kind(data)}",
        )
        raise ConfigError(ctx.issues)
    top = _mapping(ctx, data, "", TOP_KEYS)
    ctx.names = {
        section: _defined_names(top.get(section))
        for section in ("chains", *POLICY_SECTIONS.values())
    }
    config = _build_top(ctx, top)
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return config


def _build_top(ctx: _Ctx, top: dict[str, object]) -> RelayConfig:
    default = RelayConfig()
    tls = _tls(ctx, top.get("tls"), "tls")
    api = _api(ctx, top.get("api"), "api")
    metrics = _metrics(ctx, top.get("metrics"), "metrics")
    if top.get("services") is None or top.get("services") == []:
        ctx.error("services", "no services defined; a relay needs at least one")
    services = _named(ctx, top, "services", _service, "service")
    for path, service in services:
        _check_service_tls(ctx, path, service, tls)
    _check_ports(ctx, _listening_sockets(services, api, metrics))
    return RelayConfig(
        services=tuple(service for _, service in services),
        chains=_values(_named(ctx, top, "chains", _chain, "chain")),
        log=_log(ctx, top.get("log"), "log"),
        api=api,
        metrics=metrics,
        tls=tls,
        admissions=_values(_named(ctx, top, "admissions", _admission, "admission")),
        shields=_values(_named(ctx, top, "shields", _shield, "shield")),
        ccs=_values(_named(ctx, top, "ccs", _cc, "cc")),
        climiters=_values(_named(ctx, top, "climiters", _limiter, "climiter")),
        rlimiters=_values(_named(ctx, top, "rlimiters", _limiter, "rlimiter")),
        workers=_workers(ctx, top.get("workers"), "workers"),
        shutdown_timeout=_duration(
            ctx, top.get("shutdownTimeout"), "shutdownTimeout", default.shutdown_timeout
        ),
        version=_int(ctx, top.get("version"), "version", default.version, 0),
        base_dir=ctx.base_dir,
    )


def _named(
    ctx: _Ctx,
    top: dict[str, object],
    section: str,
    parse: Callable[[_Ctx, object, str, int], _NamedT],
    what: str,
) -> list[tuple[str, _NamedT]]:
    """A top-level list of named items, parsed, with duplicate names reported."""
    items = _items(ctx, top.get(section), section, parse)
    _unique(ctx, items, what)
    return items


def _values(items: list[tuple[str, _T]]) -> tuple[_T, ...]:
    return tuple(item for _, item in items)


def _listening_sockets(
    services: list[tuple[str, ServiceConfig]], api: APIConfig | None, metrics: MetricsConfig | None
) -> list[tuple[str, str, Address]]:
    sockets = [
        (_key(path, "addr"), "udp" if s.listener.type in UDP_LISTENERS else "tcp", s.addr)
        for path, s in services
    ]
    if api is not None:
        sockets.append(("api.addr", "tcp", api.addr))
    if metrics is not None:
        sockets.append(("metrics.addr", "tcp", metrics.addr))
    return sockets
