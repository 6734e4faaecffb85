"""What a handler needs from its service: config, chain, forwarder, stats and open connections.

A ``ServiceRuntime`` is built from one config generation. On reload a new runtime serves new
connections while connections already open keep the runtime (and config) they started with.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Protocol

from relay.access_log import AccessLog
from relay.chain import Chain, Dialed, DialError, NodeGroup, NodeState, dial_direct
from relay.config.model import Address, ServiceConfig
from relay.metrics import RelayMetrics, ServiceStats
from relay.policy import ALLOW, IPMatcher, ServicePolicies, Verdict, normalize_ip
from relay.pool import UpstreamPool
from relay.resume.core import SessionTable
from relay.transports.base import TransportError
from relay.usage import UsageMeter

log = logging.getLogger(__name__)

#: A key over its quota: retrying soon will not help (the master lifts it when the period ends).
#: "quota" joins the policies' ``REASONS`` in the label set of ``aicdn_blocked_total{reason}``.
_DENY_QUOTA = Verdict(False, "quota", 0.0)


def _metadata_flag(metadata: dict[str, object], name: str) -> bool:
    """A boolean of handler ``metadata`` as gost reads one: key in any case, true or "true"."""
    for key, value in metadata.items():
        if key.lower() == name:
            return value is True or str(value).strip().lower() in ("true", "1", "yes")
    return False


class Connection(Protocol):
    """A client connection as the service tracks it (for draining and shutdown)."""

    def close(self) -> None:
        """Close when idle (an HTTP connection finishes the exchange in flight first)."""

    def abort(self) -> None:
        """Close at once."""


class Route:
    """Where a new upstream connection goes: the first hop's nodes in the order to try them,
    and the target named in the relay header (None: the last hop's default). ``pool_key``
    names where it would lead, for the idle connection pool.

    A plain class with slots: one is made per request, and a frozen dataclass's ``__init__``
    (``object.__setattr__`` per field) alone cost ~1 µs of it."""

    __slots__ = ("first_hop", "pool_key", "target", "target_text")

    def __init__(
        self, first_hop: list[NodeState], target: Address | None, target_text: str = ""
    ) -> None:
        self.first_hop = first_hop
        self.target = target
        #: ``str(target)`` ("None" for the default target).
        self.target_text = target_text or str(target)
        self.pool_key = (first_hop[0].name if first_hop else "", self.target_text)


class ServiceRuntime:
    def __init__(
        self,
        config: ServiceConfig,
        chain: Chain | None,
        metrics: RelayMetrics,
        base_dir: str,
        policies: ServicePolicies | None = None,
    ) -> None:
        self.config = config
        #: Admission, shield, CC and limits; None when the service names none (no cost).
        self.policies = policies
        self.trusted_proxies = (
            IPMatcher(config.handler.http.trusted_proxies)
            if config.handler.http.trusted_proxies
            else None
        )
        self.name = config.name
        self.chain = chain
        self.metrics = metrics
        self.base_dir = base_dir
        self.stats: ServiceStats = metrics.service(config.name, config.handler.type)
        self.forwarder: NodeGroup | None = None
        if config.forwarder is not None:
            fwd = config.forwarder
            self.forwarder = NodeGroup(
                f"{config.name}.forwarder", fwd.nodes, fwd.selector, fwd.probe
            )
        self.connections: set[Connection] = set()
        #: Idle keep-alive upstream connections (http handler), shared by client connections.
        self.upstream_pool: UpstreamPool[Any] = UpstreamPool()
        #: Set when the service stops accepting; handlers close idle keep-alive connections.
        self.draining = False
        #: ``Alt-Svc`` value the http handler adds to responses (a tls service whose port
        #: also serves HTTP/3; set by the node, which sees the whole config).
        self.alt_svc: bytes | None = None
        #: The node's resumable streams (relay handler), shared by its services and reloads;
        #: None: resume is off here (a resume feature is then ignored, as gost does).
        self.resume_sessions: SessionTable | None = None
        #: ``relay`` handler, gost's ``nodelay`` metadata: send the OK as soon as the target is
        #: connected, for clients that read it before they send anything (gost's connector
        #: with ``nodelay``). Else it rides in front of the target's first bytes, as gost's
        #: handler does by default.
        self.answer_at_once = _metadata_flag(config.handler.metadata, "nodelay")
        #: Per-key usage of the node (http handler), set by the node; None: not counted.
        self.usage: UsageMeter | None = None
        #: The node's access log, set by the node; None: no access log.
        self.access_log: AccessLog | None = None

    # --- connection bookkeeping -------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.stats.connections_active += 1
        self.stats.connections_total += 1

    def closed(self, conn: Connection, duration: float) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.connections_active -= 1
            self.stats.connection_duration.observe(duration)

    def block(self, reason: str) -> None:
        self.stats.blocked[reason] = self.stats.blocked.get(reason, 0) + 1

    def admit_connection(self, ip: str, now: float) -> Verdict:
        """Connection-level policies (admission, shield, climiter); counts a refusal.

        After an allowed verdict the caller must call ``release_connection`` exactly once."""
        if self.policies is None:
            return ALLOW
        verdict = self.policies.on_connect(ip, now)
        if not verdict.allowed:
            self.block(verdict.reason)
        return verdict

    def admit_stream(self, ip: str, now: float) -> Verdict:
        """Policies for an L4 connection (one connection, one request); counts a refusal.
        After an allowed verdict the caller must call ``release_connection`` exactly once."""
        if self.policies is None:
            return ALLOW
        verdict = self.policies.on_stream(ip, now)
        if not verdict.allowed:
            self.block(verdict.reason)
        return verdict

    def release_connection(self, ip: str) -> None:
        if self.policies is not None:
            self.policies.on_disconnect(ip)

    def admit_request(self, ip: str, now: float) -> Verdict:
        """Request-level policies (admission, shield, CC, rlimiter); counts a refusal."""
        if self.policies is None:
            return ALLOW
        verdict = self.policies.on_request(ip, now)
        if not verdict.allowed:
            self.block(verdict.reason)
        return verdict

    def usage_verdict(self, key: str) -> Verdict:
        """Refuse a key the master found over its quota (``UsageMeter.blocked``); counts it."""
        usage = self.usage
        if usage is None or key not in usage.blocked:
            return ALLOW
        self.block("quota")
        return _DENY_QUOTA

    def client_ip(self, peer_ip: str, forwarded_for: bytes) -> str:
        """The client's IP: the peer, or, when the peer is a trusted proxy, the rightmost
        ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
        trusted = self.trusted_proxies
        if trusted is None or not forwarded_for or peer_ip not in trusted:
            return peer_ip
        for hop in reversed(forwarded_for.decode("latin-1").split(",")):
            candidate = normalize_ip(hop.strip())
            if candidate is None:  # not an IP at all: stop believing the header here
                return peer_ip
            if candidate not in trusted:
                return candidate
        return peer_ip

    # --- upstreams --------------------------------------------------------------------------

    def allows_target(self, target: Address) -> bool:
        """Whether ``target`` is one of the forwarder's nodes: the relay is never an open proxy."""
        if self.forwarder is None:
            return False
        host = target.host or "127.0.0.1"
        return any(
            (n.config.addr.host or "127.0.0.1") == host and n.config.addr.port == target.port
            for n in self.forwarder.nodes
        )

    def route(self, key: str | None = None) -> Route:
        """Ask the selectors once where a new upstream connection should go (client ``key``
        for the hash strategy). The route's ``pool_key`` names where it would lead, so an
        idle connection to the same place can serve instead of a new one."""
        now = asyncio.get_running_loop().time()
        if self.chain is not None:
            first = self.chain.hops[0].candidates(now, key)
            if self.forwarder is not None:
                node = self.forwarder.candidates(now, key)[0]
                return Route(first, node.config.addr, node.addr_text)
            return Route(first, None, "None")
        if self.forwarder is not None:
            return Route(self.forwarder.candidates(now, key), None, "None")
        return Route([], None, "None")

    async def connect_upstream(
        self,
        target: Address | None = None,
        key: str | None = None,
        exclude: frozenset[str] = frozenset(),
        route: Route | None = None,
    ) -> Dialed:
        """Connect toward ``target``, or along ``route`` (default: a fresh ``route(key)``).

        Through the service's chain when it has one (an unset target then means "the last
        hop's default"), else directly to forwarder nodes, failing over between them.
        Raises ``DialError``.
        """
        timeout = self.config.handler.http.ttfb_timeout
        if target is not None and self.chain is None:
            return await self._dial_node(target)
        if route is None:
            route = self.route(key)
        if self.chain is not None:
            return await self.chain.dial(target or route.target, key, exclude, route.first_hop)
        if self.forwarder is None:
            raise DialError(f"service {self.name}: no chain and no forwarder to send to")
        return await self._dial_forwarder(route.first_hop, exclude, min(timeout, 10.0))

    async def _dial_node(self, addr: Address) -> Dialed:
        try:
            return await dial_direct(addr, 10.0)
        except (OSError, TimeoutError, ssl.SSLError, TransportError) as exc:
            target_name = str(addr)
            self.metrics.upstream_error(self.name, target_name, "connect")
            raise DialError(f"{target_name}: {exc or type(exc).__name__}", target_name) from exc

    async def _dial_forwarder(
        self, candidates: list[NodeState], exclude: frozenset[str], timeout: float
    ) -> Dialed:
        loop = asyncio.get_running_loop()
        group = self.forwarder
        assert group is not None
        last = "no nodes"
        for node in candidates:
            if node.name in exclude:
                continue
            try:
                dialed = await dial_direct(node.config.addr, timeout)
            except (OSError, TimeoutError, TransportError) as exc:
                node.mark_failed(loop.time(), group.selector)
                self.metrics.upstream_error(self.name, node.name, "connect")
                last = f"{node.name}: {exc or type(exc).__name__}"
                log.warning("service %s: forwarder node %s failed: %s", self.name, node.name, exc)
                continue
            node.mark_ok()
            return Dialed(dialed.transport, dialed.pending, node.name, None)
        raise DialError(f"service {self.name}: no forwarder node reachable ({last})")

    def start(self) -> None:
        if self.chain is not None:
            self.chain.start_probes()
        if self.forwarder is not None:
            self.forwarder.start_probes()

    async def stop(self) -> None:
        self.upstream_pool.close_all()
        if self.chain is not None:
            await self.chain.stop_probes()
        if self.forwarder is not None:
            await self.forwarder.stop_probes()
