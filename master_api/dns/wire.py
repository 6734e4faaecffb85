"""EDNS Client Subnet (RFC 7871): the option a resolver adds to say where its client is.

dnslib carries EDNS options as opaque (code, bytes) pairs; this module reads and writes the
ECS one. Sans-I/O: bytes in, values out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from master_api.dns.geo import IPAddress

__all__ = ["ECS_OPTION_CODE", "BadClientSubnet", "ClientSubnet"]

ECS_OPTION_CODE = 8
_FAMILIES = {1: (4, 32), 2: (16, 128)}  # family -> (address bytes, max prefix)


class BadClientSubnet(ValueError):
    """A malformed ECS option: the query gets FORMERR (RFC 7871 §7.1.1)."""


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """The client network a resolver announced: ``address``/``source_prefix``."""

    address: IPAddress
    """The network address (bits past the prefix are zero)."""
    source_prefix: int
    """How many leading bits of the client's address the resolver revealed (0: none)."""

    @classmethod
    def parse(cls, data: bytes) -> ClientSubnet:
        """The option's payload -> a subnet; :class:`BadClientSubnet` when it breaks the RFC:
        unknown family, prefix too long, address length not ceil(prefix/8), a non-zero scope
        in a query, or address bits set past the prefix."""
        if len(data) < 4:
            raise BadClientSubnet(f"ECS option of {len(data)} bytes; at least 4 expected")
        family = int.from_bytes(data[0:2], "big")
        source, scope, raw = data[2], data[3], data[4:]
        if family not in _FAMILIES:
            raise BadClientSubnet(f"ECS family {family}; expected 1 (IPv4) or 2 (IPv6)")
        size, longest = _FAMILIES[family]
        if source > longest:
            raise BadClientSubnet(f"ECS source prefix /{source} longer than /{longest}")
        if scope != 0:
            raise BadClientSubnet(f"ECS scope prefix /{scope} in a query; must be 0")
        if len(raw) != (source + 7) // 8:
            raise BadClientSubnet(
                f"ECS address of {len(raw)} bytes for /{source}; {(source + 7) // 8} expected"
            )
        value = int.from_bytes(raw.ljust(size, b"\0"), "big")
        host_bits = size * 8 - source
        if value & ((1 << host_bits) - 1):
            raise BadClientSubnet(f"ECS address has bits set past its /{source} prefix")
        address: IPAddress = (
            ipaddress.IPv4Address(value) if family == 1 else ipaddress.IPv6Address(value)
        )
        return cls(address, source)

    def reply(self, scope_prefix: int) -> bytes:
        """The option payload to answer with: the same subnet and the ``scope_prefix`` the
        answer is valid for (RFC 7871 §7.2.1)."""
        family = 1 if self.address.version == 4 else 2
        raw = self.address.packed[: (self.source_prefix + 7) // 8]
        return family.to_bytes(2, "big") + bytes((self.source_prefix, scope_prefix)) + raw
