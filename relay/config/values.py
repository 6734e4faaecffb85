"""Primitive parsers of config values: durations, addresses and limit lines, plus message helpers.

Each parser takes one value and returns it parsed or raises ``ValueError`` with a message fit for
a ``ConfigIssue``; none of them knows about paths or collects issues (``readers`` does that).
"""

from __future__ import annotations

import ipaddress
import math
import re

from relay.config.model import Address

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
