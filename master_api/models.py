"""Records the repositories return and the services pass around (STYLE T2: dataclasses, not
dicts). Times are epoch seconds (floats): timestamps that are updated and compared must be
numbers on the embedded store (``shared/mongo.md`` rule 4); ISO strings are derived for display.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "ALERT_NAMES",
    "APPLY_OUTCOMES",
    "CONFIG_STATUSES",
    "FAILOVER_STATES",
    "NODE_STATUSES",
    "NODE_TYPES",
    "ROLES",
    "SCALE_ACTIONS",
    "SCALE_STATUSES",
    "ActivePointer",
    "AgentInfo",
    "Alert",
    "AuditEntry",
    "ConfigApplyError",
    "ConfigVersion",
    "FailoverState",
    "HistoryEntry",
    "Lease",
    "Member",
    "Node",
    "NodeMetrics",
    "Role",
    "RollbackRecord",
    "ScaleDecision",
    "User",
    "iso",
    "role_allows",
]

Role = Literal["viewer", "operator", "admin"]
#: Roles from least to most privileged; each includes the rights of those before it.
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator", "admin")
NODE_TYPES: Final = ("edge", "core")
#: online/offline/degraded are set by heartbeats and the leader's liveness check; draining and
#: standby are set by operators (the renderer chains only to online and degraded peers).
NODE_STATUSES: Final = ("online", "offline", "degraded", "draining", "standby")
#: A version's stored lifecycle. Whether it is *active* is not stored here: it is active where an
#: active pointer names it (see ``ConfigService``), so the two can never disagree.
CONFIG_STATUSES: Final = ("draft", "published", "deprecated")
ALERT_NAMES: Final = (
    "NodeOffline",
    "HighLatency",
    "HighErrorRate",
    "ConnectionExhaustion",
    "NodeFailover",
)
#: Where the leader's failover (``services/failover.py``) has put a node: ``in`` (chained to as
#: usual), ``backup`` (listed after every healthy peer) or ``out`` (not chained to at all).
FAILOVER_STATES: Final = ("in", "backup", "out")


def role_allows(role: str, required: Role) -> bool:
    """True when ``role`` has at least the rights of ``required`` (unknown roles: none)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(required)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC string (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        """Public view: never the password hash."""
        return {
            "name": self.name,
            "role": self.role,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    """What a node last reported. Every field is optional: agents report what they know."""

    connections: int | None = None
    """Open client connections."""
    max_connections: int | None = None
    """The node's connection limit (``ConnectionExhaustion`` compares against it)."""
    requests_total: int | None = None
    errors_total: int | None = None
    error_rate: float | None = None
    """Errors per request over the agent's last interval, 0..1."""
    p99_latency_ms: float | None = None
    """99th percentile request latency (time to first byte) in milliseconds."""
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    config_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: How an agent's attempt at a version ended (``ReportStatus``); failures are kept on the node.
APPLY_OUTCOMES: Final = ("applied", "rejected", "rolled_back")


@dataclass(frozen=True, slots=True)
class ConfigApplyError:
    """The last config version a node's agent could not apply (``rejected``: refused before
    touching the relay, e.g. a certificate file missing on the host; ``rolled_back``: the relay
    failed with it and the previous config was restored)."""

    version: int
    outcome: str
    message: str
    issues: tuple[tuple[str, str], ...]
    """(path, message) pairs from the relay checker on the node."""
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "outcome": self.outcome,
            "message": self.message,
            "issues": [{"path": path, "message": message} for path, message in self.issues],
            "at": iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What a node's agent said when it last registered (gRPC ``Register``)."""

    hostname: str
    version: str
    registered_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "version": self.version,
            "registered_at": iso(self.registered_at),
        }


@dataclass(frozen=True, slots=True)
class FailoverState:
    """The failover controller's record of one node (kept on the node document)."""

    state: str
    """One of ``FAILOVER_STATES``."""
    reason: str
    """Why the last change happened (``offline``, ``degraded: ...``, ``healthy for 30s``)."""
    changed_at: float
    """When ``state`` last changed: the minimum interval between changes counts from here."""
    healthy_since: float | None = None
    """While not ``in``: since when the node has been healthy without a break (hold-down); on
    the ``in`` record that put it back, the start of that hold-down."""
    versions: tuple[int, ...] = ()
    """The config versions the last change produced (edges re-rendered without the node)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "changed_at": iso(self.changed_at),
            "healthy_since": iso(self.healthy_since),
            "versions": list(self.versions),
        }


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    type: str
    region: str
    addr: str
    port: int
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    status: str
    token_hash: str
    created_at: float
    updated_at: float
    last_seen: float | None = None
    applied_version: int | None = None
    metrics: NodeMetrics | None = None
    config_error: ConfigApplyError | None = None
    agent: AgentInfo | None = None
    release: str | None = None
    """The relay release a deployment last installed on the node (None: none yet)."""
    failover: FailoverState | None = None
    """Set once the leader's failover has judged the node (None: never taken out)."""

    @property
    def render_status(self) -> str:
        """The status peers are rendered with: a node failed ``out`` is not chained to (as if
        offline) and one moved to ``backup`` is listed last (as if degraded), whatever its
        own status says, until the failover puts it back."""
        state = self.failover.state if self.failover else "in"
        if state == "out":
            return "failed_over"
        if state == "backup" and self.status == "online":
            return "degraded"
        return self.status

    def to_json(self, desired_version: int | None) -> dict[str, Any]:
        """Public view (never the token hash); ``desired_version`` comes from the pointers."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "region": self.region,
            "addr": self.addr,
            "port": self.port,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "status": self.status,
            "last_seen": iso(self.last_seen),
            "desired_version": desired_version,
            "applied_version": self.applied_version,
            "metrics": self.metrics.to_json() if self.metrics else None,
            "config_error": self.config_error.to_json() if self.config_error else None,
            "agent": self.agent.to_json() if self.agent else None,
            "release": self.release,
            "failover": self.failover.to_json() if self.failover else None,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    version_id: int
    config_type: str
    node_type: str
    regions: tuple[str, ...]
    description: str
    config_data: str
    checksum: str
    status: str
    created_by: str
    created_at: float
    template: str | None = None
    params: Mapping[str, Any] | None = None
    published_at: float | None = None
    published_by: str | None = None
    deprecated_at: float | None = None

    def to_json(self, active_regions: tuple[str, ...], with_data: bool = True) -> dict[str, Any]:
        """Public view. ``active_regions``: where a pointer names it (then status ``active``)."""
        out: dict[str, Any] = {
            "version_id": self.version_id,
            "config_type": self.config_type,
            "node_type": self.node_type,
            "regions": list(self.regions),
            "description": self.description,
            "checksum": self.checksum,
            "status": "active" if active_regions else self.status,
            "active_regions": list(active_regions),
            "template": self.template,
            "params": dict(self.params) if self.params is not None else None,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "published_at": iso(self.published_at),
            "published_by": self.published_by,
            "deprecated_at": iso(self.deprecated_at),
        }
        if with_data:
            out["config_data"] = self.config_data
        return out


@dataclass(frozen=True, slots=True)
class ActivePointer:
    """Which version is active for one (config_type, node_type, region); ``seq`` guards CAS."""

    config_type: str
    node_type: str
    region: str
    version_id: int
    seq: int
    updated_at: float
    updated_by: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: str
    action: str
    config_type: str
    node_type: str
    region: str | None
    from_version: int | None
    to_version: int | None
    actor: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "config_type": self.config_type,
            "node_type": self.node_type,
            "region": self.region,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "actor": self.actor,
            "at": iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    id: str
    config_type: str
    node_type: str
    region: str
    from_version: int
    to_version: int
    reason: str
    actor: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "config_type": self.config_type,
            "node_type": self.node_type,
            "region": self.region,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reason": self.reason,
            "actor": self.actor,
            "at": iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    name: str
    node_id: str
    node_name: str
    severity: str
    status: str
    message: str
    value: float | None
    threshold: float | None
    started_at: float
    updated_at: float
    resolved_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "severity": self.severity,
            "status": self.status,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "started_at": iso(self.started_at),
            "updated_at": iso(self.updated_at),
            "resolved_at": iso(self.resolved_at),
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One mutating call: who (actor, role), what (method, path, status), when, from where."""

    actor: str | None
    role: str | None
    method: str
    path: str
    endpoint: str | None
    status: int
    ip: str | None
    at: float
    target: str | None = None
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "actor": self.actor,
            "role": self.role,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "target": self.target,
            "status": self.status,
            "ip": self.ip,
            "at": iso(self.at),
        }


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Member:
    """A master process taking part in the election (``election_members``)."""

    id: str
    host: str
    pid: int
    http_addr: str
    started_at: float
    last_seen: float

    def to_json(self, leader_id: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "http_addr": self.http_addr,
            "started_at": iso(self.started_at),
            "last_seen": iso(self.last_seen),
            "leader": self.id == leader_id,
        }


#: What an autoscale decision did, and where it stands.
SCALE_ACTIONS: Final = ("scale_up", "scale_down")
SCALE_STATUSES: Final = ("deploying", "active", "failed", "draining", "standby")


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One autoscale decision (``autoscale_decisions``): a standby node activated through a
    deployment, or an active one drained back to standby.

    ``status``: ``deploying`` (its deployment runs) -> ``active`` (passed its health gate, now
    online) or ``failed`` (stays standby); ``draining`` (peers stop chaining to it) ->
    ``standby`` (its connections drained, or the drain time ran out).
    """

    id: str
    node_type: str
    region: str
    action: str
    node_id: str
    node_name: str
    reason: str
    status: str
    active_before: int
    load: float
    at: float
    updated_at: float
    deployment_id: str | None = None
    versions: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node_type": self.node_type,
            "region": self.region,
            "action": self.action,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "reason": self.reason,
            "status": self.status,
            "active_before": self.active_before,
            "load": self.load,
            "deployment_id": self.deployment_id,
            "versions": list(self.versions),
            "at": iso(self.at),
            "updated_at": iso(self.updated_at),
        }
