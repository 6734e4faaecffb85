"""Protections of a service (issue 4, DESIGN §3.2), as pure logic.

Nothing in this package touches a socket, a task or the clock (STYLE B1): every time-dependent
call takes ``now``, the caller's monotonic clock in seconds (``loop.time()``), and answers with
a :class:`Verdict`. The handlers own the I/O: reading PROXY headers off the socket, answering
429 or closing, and counting ``aicdn_blocked_total{reason}`` from ``Verdict.reason``.

Use :class:`ServicePolicies`, one per service per config generation::

    policies = ServicePolicies.for_service(service_config, relay_config)
    verdict = policies.on_connect(client_ip, loop.time())
    if not verdict.allowed: close; count verdict.reason
    verdict = policies.on_request(client_ip, loop.time())   # per HTTP request
    if not verdict.allowed: 429 with Retry-After: ceil(verdict.retry_after) when > 0
    policies.on_disconnect(client_ip)   # exactly once, only after an allowed on_connect

An L4 (``forward``) service has no requests. Calling ``on_request`` once per connection makes
CC and the rlimiter count its connections; a ``strict`` shield then counts each one twice.

A connection keeps the ``ServicePolicies`` it was admitted by for its whole life (hot reload
builds new ones for new connections), so its ``on_disconnect`` reaches the limiter that
counted it.
"""

from __future__ import annotations

from typing import TypeVar

from relay.config.model import (
    AdmissionConfig,
    CCConfig,
    LimiterConfig,
    RelayConfig,
    ServiceConfig,
    ShieldConfig,
)
from relay.policy.admission import Admission
from relay.policy.cc import CCGuard
from relay.policy.ipmatch import IPMatcher, normalize_ip, parse_ip
from relay.policy.limiter import ConnLimiter, LimitPlan, RateLimiter
from relay.policy.proxy_protocol import (
    ProxyInfo,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)
from relay.policy.shield import Shield
from relay.policy.table import BoundedTable, Slot
from relay.policy.verdict import ALLOW, REASONS, Verdict

__all__ = [
    "ALLOW",
    "DEFAULT_MAX_ENTRIES",
    "REASONS",
    "Admission",
    "BoundedTable",
    "CCGuard",
    "ConnLimiter",
    "IPMatcher",
    "LimitPlan",
    "ProxyInfo",
    "ProxyProtocolError",
    "RateLimiter",
    "ServicePolicies",
    "Shield",
    "Slot",
    "Verdict",
    "encode_v1",
    "encode_v2",
    "normalize_ip",
    "parse_ip",
    "parse_proxy_header",
]

#: Per-IP entries each stateful policy of a service may hold.
DEFAULT_MAX_ENTRIES = 100_000

_DENY_ADMISSION = Verdict(False, "admission", 0.0)
_DENY_CLIMITER = Verdict(False, "climiter", 1.0)
_DENY_RLIMITER = Verdict(False, "rlimiter", 1.0)


_C = TypeVar("_C", AdmissionConfig, ShieldConfig, CCConfig, LimiterConfig)


def _named(items: tuple[_C, ...], name: str | None, kind: str) -> _C | None:
    if name is None:
        return None
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"{kind} {name!r} is not defined")


class ServicePolicies:
    """The policies of one service, checked in a fixed order.

    Connections (:meth:`on_connect`): admission, then the shield (blacklist, active block,
    and a count when ``strict``), then the climiter. Requests (:meth:`on_request`):
    admission, then the shield, CC, the rlimiter. Admission comes first in both, so a
    refused IP leaves no state anywhere. The first refusal stops the chain: later policies
    never see what an earlier one refused, while earlier ones have counted it (a request the
    rlimiter refuses still counted for the shield and charged CC's service bucket).

    Any argument may be None (policy not configured). ``max_entries`` caps the per-IP
    entries of each stateful policy.
    """

    __slots__ = ("admission", "cc", "climiter", "rlimiter", "shield")

    def __init__(
        self,
        admission: AdmissionConfig | None = None,
        shield: ShieldConfig | None = None,
        cc: CCConfig | None = None,
        climiter: LimiterConfig | None = None,
        rlimiter: LimiterConfig | None = None,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.admission = Admission(admission) if admission is not None else None
        self.shield = Shield(shield, max_entries) if shield is not None else None
        self.cc = CCGuard(cc, max_entries) if cc is not None else None
        self.climiter = ConnLimiter(climiter, max_entries) if climiter is not None else None
        self.rlimiter = RateLimiter(rlimiter, max_entries) if rlimiter is not None else None

    @classmethod
    def for_service(
        cls,
        service: ServiceConfig,
        config: RelayConfig,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> ServicePolicies:
        """Build the policies ``service`` names from ``config``'s policy lists. KeyError for a
        name that is not defined (the loader has already refused such configs)."""
        return cls(
            _named(config.admissions, service.admission, "admission"),
            _named(config.shields, service.shield, "shield"),
            _named(config.ccs, service.cc, "cc"),
            _named(config.climiters, service.climiter, "climiter"),
            _named(config.rlimiters, service.rlimiter, "rlimiter"),
            max_entries=max_entries,
        )

    @property
    def enabled(self) -> bool:
        """Whether any policy is configured (when not, the handler may skip the calls)."""
        return any(
            p is not None
            for p in (self.admission, self.shield, self.cc, self.climiter, self.rlimiter)
        )

    def on_connect(self, ip: str, now: float) -> Verdict:
        """Judge a new connection from client ``ip``. When allowed, a climiter slot has been
        taken: call :meth:`on_disconnect` exactly once when the connection ends. When
        refused, nothing was taken: do not call it."""
        if self.admission is not None and not self.admission.allows(ip):
            return _DENY_ADMISSION
        if self.shield is not None:
            verdict = self.shield.check_connection(ip, now)
            if not verdict.allowed:
                return verdict
        if self.climiter is not None and not self.climiter.acquire(ip):
            return _DENY_CLIMITER
        return ALLOW

    def on_disconnect(self, ip: str) -> None:
        """The connection that :meth:`on_connect` allowed has ended; ``ip`` must be the same
        string that was given to :meth:`on_connect`."""
        if self.climiter is not None:
            self.climiter.release(ip)

    def on_request(self, ip: str, now: float) -> Verdict:
        """Judge one request from client ``ip`` (the ``X-Forwarded-For`` client when the
        peer is a trusted proxy, which is why admission is checked here too)."""
        # DANGER ZONE: once per request.
        if self.admission is not None and not self.admission.allows(ip):
            return _DENY_ADMISSION
        if self.shield is not None:
            verdict = self.shield.check_request(ip, now)
            if not verdict.allowed:
                return verdict
        if self.cc is not None:
            verdict = self.cc.check(ip, now)
            if not verdict.allowed:
                return verdict
        if self.rlimiter is not None and not self.rlimiter.allow(ip, now):
            return _DENY_RLIMITER
        return ALLOW

    def on_stream(self, ip: str, now: float) -> Verdict:
        """Judge an L4 connection (``forward``/``relay``), which is its own one request: the
        shield counts it once as a request, CC and the rate limiter see it, and the climiter
        takes a slot. When allowed, call :meth:`on_disconnect` exactly once at its end."""
        verdict = self.on_request(ip, now)
        if not verdict.allowed:
            return verdict
        if self.climiter is not None and not self.climiter.acquire(ip):
            return _DENY_CLIMITER
        return ALLOW

    def untracked(self) -> int:
        """Requests and connections that met a full per-IP table (shield and CC let them
        through unjudged, the climiter refused them). Export it as a counter: above 0 means
        ``max_entries`` is too small for the traffic, or a flood is filling it with blocks."""
        return sum(p.untracked for p in (self.shield, self.cc, self.climiter) if p is not None)
