"""IP address -> country, offline.

The table is the one the ``iptocc`` package ships inside its wheel (built from the regional
internet registries' delegation files; IPv4 and IPv6), so a lookup reads no file and no network
and costs well under a microsecond. Its precision is the registries' country of assignment,
which is what choosing a continent-scale edge region needs. Upgrading the package (pinned in
pyproject.toml) refreshes the data.
"""

from __future__ import annotations

import ipaddress

import iptocc

__all__ = ["IPAddress", "country_of"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def country_of(address: IPAddress) -> str | None:
    """The ISO 3166 alpha-2 code of the country ``address`` is assigned to; None for private,
    reserved and unassigned addresses. IPv4-mapped IPv6 addresses count as their IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global:
        return None
    code = iptocc.country_code(str(address))
    return code.upper() if code else None
