"""IP address and CIDR matching for the policies (admission, shield lists, limiter overrides).

Lookups run per request, so they avoid :mod:`ipaddress` (about 5 µs per parse on this kind of
machine) and instead convert the address once with ``socket.inet_pton`` (about 0.3 µs) to an
integer key, then probe one hash table per distinct prefix length, most specific first:
O(number of distinct prefix lengths), at most 33 + 129 and in practice a handful.
``inet_pton`` is a pure libc text→bytes conversion: no socket is created and nothing is read
or written (STYLE B1 is about I/O).

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack listener reports for IPv4
clients) are normalised to IPv4 on both sides, in entries and in looked-up addresses. As in
:mod:`ipaddress`, IPv6 networks contain no IPv4 client: ``::/0`` means every IPv6 client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from socket import AF_INET, AF_INET6, inet_pton

__all__ = ["IPMatcher", "normalize_ip", "parse_ip"]

_V4_MAPPED_PREFIX = 0xFFFF << 32
_V4_MAPPED_MASK = ((1 << 128) - 1) ^ ((1 << 32) - 1)
# Keys live in a 129-bit space: bit 128 says IPv4, then the address left-aligned in the 128
# bits below. A /p network (either family) is then a /(p + 1) prefix of that space, so one
# index serves both families and an IPv6 network (even ::/0) never contains an IPv4 client.
_V4_FLAG = 1 << 128
_KEY_BITS = 129
_KEY_FULL = (1 << _KEY_BITS) - 1


def _address_key(ip: str) -> int:
    """``ip`` as a key of the 129-bit space (IPv4-mapped IPv6 as IPv4), -1 if not an IP."""
    try:
        if ":" in ip:
            zone = ip.find("%")
            if zone >= 0:
                ip = ip[:zone]
            value = int.from_bytes(inet_pton(AF_INET6, ip), "big")
            if value & _V4_MAPPED_MASK == _V4_MAPPED_PREFIX:
                return _V4_FLAG | (value & 0xFFFFFFFF) << 96
            return value
        return _V4_FLAG | int.from_bytes(inet_pton(AF_INET, ip), "big") << 96
    except (OSError, ValueError):
        # OSError: not an address; ValueError: embedded NUL or non-ASCII text.
        return -1


def parse_ip(ip: str) -> tuple[int, int] | None:
    """Parse ``ip`` to ``(version, integer)``, version 4 or 6.

    IPv4-mapped IPv6 comes back as version 4. An IPv6 zone (``fe80::1%eth0``) is ignored.
    Returns None for anything that is not an IP address (never raises), so callers can treat
    a non-IP peer (a UNIX socket, an empty string) as "matches nothing".
    """
    key = _address_key(ip)
    if key < 0:
        return None
    if key & _V4_FLAG:
        return 4, (key >> 96) & 0xFFFFFFFF
    return 6, key


def normalize_ip(ip: str) -> str | None:
    """The canonical text of ``ip`` (IPv4-mapped IPv6 as IPv4, IPv6 compressed lowercase), or
    None when it is not an IP address. Use it where one client must map to one key whatever
    form its address arrived in (policy tables key on the string as given)."""
    parsed = parse_ip(ip)
    if parsed is None:
        return None
    version, value = parsed
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


class IPMatcher:
    """A set of IP addresses and CIDR networks (IPv4 and IPv6) with fast membership tests.

    ``entries`` are strings as the config loader validated them (``"10.0.0.1"``,
    ``"10.0.0.0/8"``, ``"2001:db8::/32"``; host bits in a CIDR are ignored). Raises ValueError
    for an entry that is not an IP or CIDR. When two entries denote the same network, the later
    one is the one :meth:`match_cidr` reports.

    ``ip in matcher`` is True when the address is in any entry; a string that is not an IP
    address is in nothing. Answers are memoised per address string in a small cache (cleared
    when it reaches ``CACHE_SIZE``), so the clients of a busy service cost one dict lookup per
    request. Otherwise immutable; not thread-safe (one event loop).
    """

    #: Addresses whose answer is remembered, at most (about 100 bytes each).
    CACHE_SIZE = 4096

    __slots__ = ("_cache", "_exact", "_levels", "_size")

    def __init__(self, entries: Iterable[str]) -> None:
        by_prefix: dict[int, dict[int, str]] = {}
        exact: set[str] = set()
        size = 0
        for raw in entries:
            entry = raw.strip()
            network = ipaddress.ip_network(entry, strict=False)
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:
                    network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
            value = int(network.network_address)
            if network.version == 4:
                value = _V4_FLAG | value << 96
            by_prefix.setdefault(network.prefixlen + 1, {})[value] = entry
            if network.prefixlen == network.max_prefixlen:
                # Fast path: the usual text forms of an exact address skip parsing.
                exact.add(str(network.network_address))
                if network.version == 4:
                    exact.add(f"::ffff:{network.network_address}")
            size += 1
        self._exact = frozenset(exact)
        # (mask, {network: entry}), longest prefix first: the first hit is the most specific.
        self._levels: tuple[tuple[int, dict[int, str]], ...] = tuple(
            (_KEY_FULL ^ ((1 << (_KEY_BITS - prefix)) - 1), by_prefix[prefix])
            for prefix in sorted(by_prefix, reverse=True)
        )
        self._size = size
        self._cache: dict[str, bool] = {}

    def __len__(self) -> int:
        """Number of entries given (duplicates included)."""
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __contains__(self, ip: object) -> bool:
        if not self._size or not isinstance(ip, str):
            return False
        cache = self._cache
        found = cache.get(ip)
        if found is None:
            found = ip in self._exact or self.match_cidr(ip) is not None
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[ip] = found
        return found

    def match_cidr(self, ip: str) -> str | None:
        """The most specific entry (longest prefix) containing ``ip``, as written in the
        config, or None when no entry contains it or ``ip`` is not an IP address. Not cached:
        O(number of distinct prefix lengths) after one parse."""
        key = _address_key(ip)
        if key < 0:
            return None
        for mask, networks in self._levels:
            entry = networks.get(key & mask)
            if entry is not None:
                return entry
        return None
