"""The DNS server's own typed view of the master's settings (STYLE C1): names as label tuples,
the region tables merged, cross-field checks done once at start-up."""

from __future__ import annotations

import time
from dataclasses import dataclass

from master_api.dns.regions import RegionMap
from master_api.settings import ENV_PREFIX, Settings, SettingsError
from relay.config import Address

__all__ = ["DnsConfig", "Labels", "labels"]

#: A domain name as lower-case labels, most specific first: ``(b"api", b"aicdn", b"example")``.
Labels = tuple[bytes, ...]


def labels(name: str) -> Labels:
    """``"API.aicdn.example."`` -> ``(b"api", b"aicdn", b"example")``."""
    return tuple(part.encode("ascii").lower() for part in name.rstrip(".").split(".") if part)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Everything the responder and the server need; build with :meth:`from_settings`."""

    addr: Address
    """Listen address, UDP and TCP."""
    zone: Labels
    """The zone apex."""
    hostnames: frozenset[Labels]
    """Names answered with edges."""
    nameservers: tuple[Labels, ...]
    """NS names (the first is the SOA MNAME; none: the apex is)."""
    ttl: int
    """Seconds, for edge answers and the SOA's negative-caching minimum."""
    max_answers: int
    regions: RegionMap
    refresh: float
    """Seconds between reads of the inventory."""
    max_silence: float
    """An edge whose last heartbeat is older than this is not answered, seconds."""
    serial: int
    """SOA serial: the start time, so a restarted server never goes backwards."""
    empty_nonterminals: frozenset[Labels] = frozenset()
    """In-zone names that exist only because a longer name does: NODATA, not NXDOMAIN."""

    def in_zone(self, name: Labels) -> bool:
        size = len(self.zone)
        return len(name) >= size and name[len(name) - size :] == self.zone

    @classmethod
    def from_settings(cls, settings: Settings, clock: float | None = None) -> DnsConfig:
        """Raises :class:`SettingsError` for a host name outside the zone."""
        zone = labels(settings.dns_zone)
        hostnames = frozenset(labels(n) for n in settings.dns_hostnames) or frozenset({zone})
        nameservers = tuple(labels(n) for n in settings.dns_nameservers)
        config = cls(
            addr=settings.dns_addr,
            zone=zone,
            hostnames=hostnames,
            nameservers=nameservers,
            ttl=settings.dns_ttl,
            max_answers=settings.dns_max_answers,
            regions=RegionMap.build(
                settings.dns_regions, settings.dns_region_fallback, settings.dns_default_region
            ),
            refresh=settings.dns_refresh,
            max_silence=settings.heartbeat_interval * settings.dns_missed_heartbeats,
            serial=int(time.time() if clock is None else clock) & 0xFFFFFFFF,
            empty_nonterminals=_ancestors((*hostnames, *nameservers), zone),
        )
        for name in settings.dns_hostnames:
            if not config.in_zone(labels(name)):
                raise SettingsError(
                    f"{ENV_PREFIX}DNS_HOSTNAMES: {name!r} is not inside {ENV_PREFIX}DNS_ZONE "
                    f"{settings.dns_zone!r}"
                )
        return config


def _ancestors(names: tuple[Labels, ...], zone: Labels) -> frozenset[Labels]:
    out: set[Labels] = set()
    for name in names:
        for cut in range(1, len(name) - len(zone)):
            out.add(name[cut:])
    return frozenset(out - set(names))
