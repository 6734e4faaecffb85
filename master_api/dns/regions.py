"""Which region serves a country, and which regions come next when it has no healthy edge.

The built-in table places each country at the region of the seed's fleet (hk, sg, us, cn)
that is nearest by great-circle distance from its main population centre, rounded to what
matters for latency: East Asia to hk, South-East and South Asia, Oceania, the Middle East and
southern/eastern Africa to sg, the Americas, Europe and western/northern Africa to us. A country
in no list goes to ``Settings.dns_default_region``. Operators override both tables with
``AICDN_DNS_REGIONS`` and ``AICDN_DNS_REGION_FALLBACK``; a region the table does not know (an
``eu`` region added to the fleet, say) simply needs its countries listed there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_FALLBACK", "DEFAULT_REGIONS", "RegionMap"]

RegionLists = tuple[tuple[str, tuple[str, ...]], ...]

#: region -> ISO 3166 alpha-2 countries it serves.
DEFAULT_REGIONS: RegionLists = (
    ("cn", ("CN",)),
    ("hk", ("HK", "MO", "TW", "JP", "KR", "KP", "MN", "PH")),
    (
        "sg",
        (
            # South-East Asia
            "SG", "MY", "ID", "TH", "VN", "KH", "LA", "MM", "BN", "TL",
            # South Asia
            "IN", "BD", "LK", "NP", "BT", "MV", "PK", "AF",
            # Oceania
            "AU", "NZ", "PG", "FJ", "SB", "VU", "NC", "PF", "WS", "TO", "KI", "FM", "MH", "PW",
            "NR", "TV", "GU", "MP", "AS", "CK", "NU",
            # Middle East and Central Asia
            "AE", "SA", "QA", "BH", "KW", "OM", "YE", "IR", "IQ", "KZ", "UZ", "TM", "KG", "TJ",
            # southern and eastern Africa, Indian Ocean
            "ZA", "MU", "RE", "MG", "SC", "KE", "TZ", "MZ", "ZW", "ZM", "MW", "BW", "NA", "LS",
            "SZ", "ET", "SO", "DJ", "UG", "RW", "BI", "KM", "YT",
        ),
    ),
    (
        "us",
        (
            # North and Central America, the Caribbean
            "US", "CA", "MX", "GT", "BZ", "SV", "HN", "NI", "CR", "PA", "CU", "DO", "HT",
            "JM", "PR", "BS", "TT", "BB",
            # South America
            "BR", "AR", "CL", "CO", "PE", "VE", "EC", "BO", "PY", "UY", "GY", "SR",
            # Europe (an ocean nearer to a US edge than to an Asian one)
            "GB", "IE", "FR", "DE", "NL", "BE", "LU", "CH", "AT", "IT", "ES", "PT", "DK", "NO",
            "SE", "FI", "IS", "PL", "CZ", "SK", "HU", "RO", "BG", "GR", "HR", "SI", "RS",
            "BA", "ME", "MK", "AL", "EE", "LV", "LT", "UA", "BY", "MD", "RU", "TR", "CY", "MT",
            # western and northern Africa
            "MA", "DZ", "TN", "LY", "EG", "NG", "GH", "SN", "CI", "CM",
        ),
    ),
)  # fmt: skip

#: region -> the regions to try next, nearest first.
DEFAULT_FALLBACK: RegionLists = (
    ("hk", ("sg", "cn", "us")),
    ("sg", ("hk", "cn", "us")),
    ("cn", ("hk", "sg", "us")),
    ("us", ("hk", "sg", "cn")),
)


@dataclass(frozen=True, slots=True)
class RegionMap:
    """Country -> region, and the order in which regions stand in for one another."""

    countries: Mapping[str, str]
    """ISO country code -> region."""
    fallback: Mapping[str, tuple[str, ...]]
    """Region -> the regions to try next, nearest first."""
    default_region: str
    """Region of a client whose country is unknown (private address, no data) or unlisted."""

    @classmethod
    def build(
        cls,
        regions: RegionLists = (),
        fallback: RegionLists = (),
        default_region: str = "us",
    ) -> RegionMap:
        """The built-in tables with ``regions`` and ``fallback`` laid over them: a country
        listed under a region moves there; a region's fallback list replaces the built-in one."""
        countries: dict[str, str] = {}
        for region, codes in (*DEFAULT_REGIONS, *regions):
            for code in codes:
                countries[code] = region
        order = dict(DEFAULT_FALLBACK)
        order.update(fallback)
        return cls(MappingProxyType(countries), MappingProxyType(order), default_region)

    def region_of(self, country: str | None) -> str:
        """The region serving ``country`` (None: unknown)."""
        if country is None:
            return self.default_region
        return self.countries.get(country, self.default_region)

    def order(self, region: str, present: tuple[str, ...]) -> tuple[str, ...]:
        """Regions to try for a client of ``region``: itself, its fallback list, then every
        other region in ``present`` (the regions that have edges) by name."""
        return _order(region, self.fallback.get(region, ()), present)


@functools.lru_cache(maxsize=1024)
def _order(region: str, fallback: tuple[str, ...], present: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: computed per query otherwise, and the inputs take few distinct values.
    return tuple(_unique((region, *fallback, *sorted(present))))


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
