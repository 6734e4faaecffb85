"""IP address and CIDR matching for the policies (admission, shield lists, limiter overrides).

Lookups run per request, so they avoid :mod:`ipaddress` (about 5 µs per parse on this kind of
machine) and instead convert the address once with ``socket.inet_pton`` (about 0.3 µs) to an
integer, then probe one hash set per distinct prefix length, most specific first. The cost is
O(number of distinct prefix lengths) set lookups, at most 33 for IPv4 and 129 for IPv6, and in
practice a handful. ``inet_pton`` is a pure libc text→bytes conversion: no socket is created
and nothing is read or written (STYLE B1 is about I/O, not about this helper).

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack listener reports for IPv4
clients) are normalised to IPv4 on both sides, in entries and in looked-up addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from socket import AF_INET, AF_INET6, inet_pton

__all__ = ["IPMatcher", "normalize_ip", "parse_ip"]

_V4_MAPPED_PREFIX = 0xFFFF << 32
_V4_MAPPED_MASK = ((1 << 128) - 1) ^ ((1 << 32) - 1)


def parse_ip(ip: str) -> tuple[int, int] | None:
    """Parse ``ip`` to ``(version, integer)``, version 4 or 6.

    IPv4-mapped IPv6 comes back as version 4. An IPv6 zone (``fe80::1%eth0``) is ignored.
    Returns None for anything that is not an IP address (never raises), so callers can treat
    a non-IP peer (a UNIX socket, an empty string) as "matches nothing".
    """
    try:
        if ":" in ip:
            zone = ip.find("%")
            if zone >= 0:
                ip = ip[:zone]
            value = int.from_bytes(inet_pton(AF_INET6, ip), "big")
            if value & _V4_MAPPED_MASK == _V4_MAPPED_PREFIX:
                return 4, value & 0xFFFFFFFF
            return 6, value
        return 4, int.from_bytes(inet_pton(AF_INET, ip), "big")
    except (OSError, ValueError):
        # OSError: not an address; ValueError: embedded NUL or non-ASCII text.
        return None


def normalize_ip(ip: str) -> str | None:
    """The canonical text of ``ip`` (IPv4-mapped IPv6 as IPv4, IPv6 compressed lowercase), or
    None when it is not an IP address. Use it where one client must map to one key whatever
    form its address arrived in (policy tables key on the string as given)."""
    parsed = parse_ip(ip)
    if parsed is None:
        return None
    version, value = parsed
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


class _PrefixIndex:
    """All networks of one IP version: ``[(mask, {network_int: entry})]``, longest prefix
    first, so the first hit is the most specific entry."""

    __slots__ = ("levels",)

    def __init__(self, by_prefix: dict[int, dict[int, str]], bits: int) -> None:
        full = (1 << bits) - 1
        self.levels: tuple[tuple[int, dict[int, str]], ...] = tuple(
            (full ^ ((1 << (bits - prefix)) - 1), by_prefix[prefix])
            for prefix in sorted(by_prefix, reverse=True)
        )

    def match(self, value: int) -> str | None:
        for mask, networks in self.levels:
            entry = networks.get(value & mask)
            if entry is not None:
                return entry
        return None


class IPMatcher:
    """A set of IP addresses and CIDR networks (IPv4 and IPv6) with fast membership tests.

    ``entries`` are strings as the config loader validated them (``"10.0.0.1"``,
    ``"10.0.0.0/8"``, ``"2001:db8::/32"``; host bits in a CIDR are ignored). Raises ValueError
    for an entry that is not an IP or CIDR. When two entries denote the same network, the later
    one is the one :meth:`match_cidr` reports.

    ``ip in matcher`` is True when the address is in any entry; a string that is not an IP
    address is in nothing. Immutable after construction; safe to share.
    """

    __slots__ = ("_exact", "_size", "_v4", "_v6")

    def __init__(self, entries: Iterable[str]) -> None:
        by_version: dict[int, dict[int, dict[int, str]]] = {4: {}, 6: {}}
        exact: set[str] = set()
        size = 0
        for raw in entries:
            entry = raw.strip()
            network = ipaddress.ip_network(entry, strict=False)
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:
                    network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
            version = network.version
            by_version[version].setdefault(network.prefixlen, {})[int(network.network_address)] = (
                entry
            )
            if network.prefixlen == network.max_prefixlen:
                # Fast path: the common text forms of an exact address hit a plain set and
                # skip parsing altogether.
                exact.add(str(network.network_address))
                if version == 4:
                    exact.add(f"::ffff:{network.network_address}")
            size += 1
        self._exact = frozenset(exact)
        self._v4 = _PrefixIndex(by_version[4], 32)
        self._v6 = _PrefixIndex(by_version[6], 128)
        self._size = size

    def __len__(self) -> int:
        """Number of entries given (duplicates included)."""
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __contains__(self, ip: object) -> bool:
        if not self._size or not isinstance(ip, str):
            return False
        if ip in self._exact:
            return True
        return self.match_cidr(ip) is not None

    def match_cidr(self, ip: str) -> str | None:
        """The most specific entry (longest prefix) containing ``ip``, as written in the
        config, or None when no entry contains it or ``ip`` is not an IP address."""
        parsed = parse_ip(ip)
        if parsed is None:
            return None
        version, value = parsed
        return (self._v4 if version == 4 else self._v6).match(value)
