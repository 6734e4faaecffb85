"""The healthy edges, as the DNS server sees them: an immutable view rebuilt from the node
inventory every ``dns_refresh`` seconds, so a query never waits for the store.

An edge is answered when all of these hold:

* its ``type`` is ``edge`` and it has an address clients can reach: the IP literals of
  ``metadata.public_ips`` when set, else ``addr`` when that is an IP literal (a host name in
  ``addr`` without ``public_ips`` is never answered: the DNS server does not resolve names);
* its agent has heartbeated (``last_seen`` set) within ``heartbeat_interval`` x
  ``dns_missed_heartbeats``, so a dead edge leaves the answers before the leader's monitor marks
  it offline (after ``offline_after_missed`` beats);
* its status is ``online``, or ``degraded`` as a last resort: degraded edges (an alert on
  latency, errors or connections) are answered only when no online edge is left in any
  region, because a slow edge serves clients better than no address at all. ``offline``,
  ``draining`` and ``standby`` edges are never answered.

When a refresh fails (the store is down), the last view stays in use: the heartbeats it was
judged on are not being recorded either, and answering the last known healthy edges beats
answering none.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6
from types import MappingProxyType

from master_api.errors import StoreUnavailable
from master_api.models import Node
from master_api.repos import NodeFilter, Repos

__all__ = ["PUBLIC_IPS_KEY", "Edge", "EdgeView", "EdgeWatcher", "build_view", "edge_addresses"]

log = logging.getLogger(__name__)

#: Node metadata key: the edge's public addresses (a list of IP literals, or one string).
PUBLIC_IPS_KEY = "public_ips"
#: The tiers, best first.
TIERS = ("online", "degraded")


@dataclass(frozen=True, slots=True)
class Edge:
    """One answerable edge."""

    name: str
    region: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    packed4: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    """``ipv4`` as 4-byte RDATA, packed once here rather than per query."""
    packed6: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed4", tuple(socket.inet_pton(AF_INET, a) for a in self.ipv4))
        object.__setattr__(self, "packed6", tuple(socket.inet_pton(AF_INET6, a) for a in self.ipv6))


def _empty() -> Mapping[str, tuple[Edge, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EdgeView:
    """Answerable edges by tier and region, as of ``built_at`` (epoch seconds)."""

    online: Mapping[str, tuple[Edge, ...]] = field(default_factory=_empty)
    """Region -> its online edges, by name."""
    degraded: Mapping[str, tuple[Edge, ...]] = field(default_factory=_empty)
    """Region -> its degraded edges (answered only when no region has an online one)."""
    built_at: float = 0.0
    loaded: bool = False
    """False until the inventory was read once: the server answers SERVFAIL meanwhile."""

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions with an answerable edge, by name."""
        return tuple(sorted({*self.online, *self.degraded}))

    def nearest(self, order: Iterable[str]) -> tuple[str, tuple[Edge, ...]] | None:
        """The first region of ``order`` with online edges, and those edges; else the first
        with degraded ones; None when no region has an answerable edge."""
        order = tuple(order)
        for tier in (self.online, self.degraded):
            for region in order:
                edges = tier.get(region)
                if edges:
                    return region, edges
        return None


def edge_addresses(node: Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4, IPv6) addresses to answer for ``node``, normalised; ((), ()) when it has none.
    Values that are not IP literals are skipped (logged at debug: the API stores free
    metadata)."""
    raw = node.metadata.get(PUBLIC_IPS_KEY)
    if raw is None:
        candidates: list[object] = [node.addr]
    elif isinstance(raw, list | tuple):
        candidates = list(raw)
    else:
        candidates = [raw]
    ipv4: list[str] = []
    ipv6: list[str] = []
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(str(candidate).strip().strip("[]"))
        except ValueError:
            log.debug("edge %s: %r is not an IP address; not answered", node.name, candidate)
            continue
        bucket = ipv4 if address.version == 4 else ipv6
        if str(address) not in bucket:
            bucket.append(str(address))
    return tuple(ipv4), tuple(ipv6)


def build_view(nodes: Iterable[Node], now: float, max_silence: float) -> EdgeView:
    """The view of ``nodes`` at time ``now``: see the module doc for who is answered."""
    tiers: dict[str, dict[str, list[Edge]]] = {tier: {} for tier in TIERS}
    for node in sorted(nodes, key=lambda n: n.name):
        if node.type != "edge" or node.status not in tiers:
            continue
        if node.last_seen is None or now - node.last_seen > max_silence:
            continue
        ipv4, ipv6 = edge_addresses(node)
        if not ipv4 and not ipv6:
            continue
        edge = Edge(node.name, node.region, ipv4, ipv6)
        tiers[node.status].setdefault(node.region, []).append(edge)
    frozen = {
        tier: MappingProxyType({region: tuple(edges) for region, edges in regions.items()})
        for tier, regions in tiers.items()
    }
    return EdgeView(frozen["online"], frozen["degraded"], built_at=now, loaded=True)


class EdgeWatcher:
    """Rebuilds the :class:`EdgeView` from the store every ``interval`` seconds on a thread.

    :attr:`view` is read by the DNS server on every query: one attribute read of an immutable
    object, so readers need no lock and never see a half-built view.
    """

    def __init__(
        self,
        repos: Repos,
        interval: float,
        max_silence: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repos = repos
        self._interval = interval
        self._max_silence = max_silence
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.view = EdgeView()
        self.failures = 0
        """Refreshes the store did not answer (a metric)."""

    def refresh(self) -> bool:
        """Read the inventory once and swap the view in; False (old view kept) when the store
        did not answer."""
        try:
            nodes = self._repos.nodes.find(NodeFilter(type="edge"))
        except StoreUnavailable as exc:
            self.failures += 1
            if not self._failing:
                log.warning("edge view not refreshed (%s); answering from the last one", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("edge view refreshed again")
            self._failing = False
        self.view = build_view(nodes, self._clock(), self._max_silence)
        return True

    def start(self) -> None:
        """One refresh now (so answers start right away when the store is up), then a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="dns-edge-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # the thread must outlive a bad document or a driver bug
                log.exception("edge view refresh failed; answering from the last one")
