"""Node inventory: registration with a one-time agent token, heartbeats, rendering, and what
agents report about applying config versions (drift between desired and applied versions).

The REST heartbeat and the gRPC AgentService (``master_api.grpc``) both go through
:meth:`NodeService.authenticate` and :meth:`NodeService.heartbeat`, so REST and gRPC agents
behave alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from master_api.errors import BadRequest, Conflict, NotFound, Unauthorized, issues_extra
from master_api.models import (
    APPLY_OUTCOMES,
    ActivePointer,
    AgentInfo,
    ConfigApplyError,
    Node,
    NodeMetrics,
    iso,
)
from master_api.repos import NodeFilter, Repos
from master_api.services.configs import DEFAULT_CONFIG_TYPE, ConfigService
from master_api.services.snapshots import Snapshot, SnapshotMap
from master_api.settings import Settings
from relay.config import ConfigError
from relay.config.fleet import FleetNode, NodeType, render_node_config

__all__ = [
    "ConfigReport",
    "DriftEntry",
    "HeartbeatResult",
    "NodeInput",
    "NodeService",
    "RenderedConfig",
    "hash_token",
]


def hash_token(token: str) -> str:
    """What is stored of a node token: its SHA-256. Tokens are 256 random bits, so a fast
    hash is enough (no dictionary to attack), and lookups stay cheap per heartbeat."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class NodeInput:
    """A node to register (the seed's Node field names)."""

    name: str
    type: str
    region: str
    addr: str
    port: int
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    status: str = "online"


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    desired_version: int | None
    config_updated: bool


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    yaml: str
    version_id: int
    checksum: str


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """An agent's report on applying ``version`` (gRPC ``ReportStatus``)."""

    version: int
    outcome: str
    """One of ``APPLY_OUTCOMES``: applied, rejected, rolled_back."""
    message: str = ""
    issues: tuple[tuple[str, str], ...] = ()
    applied_version: int | None = None
    """The version the relay runs after the attempt, when the agent knows it."""


@dataclass(frozen=True, slots=True)
class DriftEntry:
    """A node whose applied version is not the desired one, and why (``state``):

    * ``failed``: its agent reported that the desired version failed on the node;
    * ``unreachable``: the node is offline or its agent never reported;
    * ``pending``: the agent has not applied it yet (normally within one heartbeat).
    """

    node: Node
    desired_version: int
    state: str

    def to_json(self) -> dict[str, Any]:
        error = self.node.config_error
        return {
            "id": self.node.id,
            "name": self.node.name,
            "type": self.node.type,
            "region": self.node.region,
            "status": self.node.status,
            "state": self.state,
            "desired_version": self.desired_version,
            "applied_version": self.node.applied_version,
            "last_seen": iso(self.node.last_seen),
            "config_error": error.to_json() if error else None,
        }


class NodeService:
    """Operations on nodes; thread-safe."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        configs: ConfigService,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._configs = configs
        self._clock = clock
        self._inventory = Snapshot(
            lambda: tuple(_fleet_node(peer) for peer in self._repos.nodes.find(NodeFilter()))
        )
        self._authenticated: SnapshotMap[str, Node] = SnapshotMap()

    def register(self, data: NodeInput) -> tuple[Node, str]:
        """Store a new node; returns it and its agent token, which is not stored and cannot be
        read again. 409 when the name is taken."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        node = Node(
            id=secrets.token_hex(12),  # 24 hex digits, like an ObjectId, stored as a string
            name=data.name,
            type=data.type,
            region=data.region,
            addr=data.addr,
            port=data.port,
            tags=data.tags,
            metadata=dict(data.metadata),
            status=data.status,
            token_hash=hash_token(token),
            created_at=now,
            updated_at=now,
        )
        self._repos.nodes.create(node)
        return node, token

    def rotate_token(self, node_id: str) -> tuple[Node, str]:
        """Give ``node_id`` a new agent token (returned once, like at registration); the old
        one is refused from now on by this process, and by other masters once their
        ``agent_auth_ttl`` of remembered nodes has passed. 404 when the node is missing."""
        token = secrets.token_urlsafe(32)
        node = self._repos.nodes.update(node_id, {"token_hash": hash_token(token)}, self._clock())
        self.forget(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} does not exist")
        return node, token

    def get(self, node_id: str) -> Node:
        node = self._repos.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} does not exist")
        return node

    def desired_version(
        self, node: Node, pointers: Sequence[ActivePointer] | None = None
    ) -> int | None:
        """The config version the master wants on ``node`` (from the active pointers)."""
        return self._configs.effective_version_id(node.type, node.region, pointers=pointers)

    def authenticate(self, node_id: str, token: str, max_age: float = 0.0) -> Node:
        """The node whose agent token is ``token``; 401 otherwise (same answer for an unknown
        node as for a wrong token).

        ``max_age`` > 0: a node read at most that many seconds ago may be answered (the token
        is still checked against its hash on every call); for the AgentService, whose every
        call authenticates. Its status and attributes are then up to ``max_age`` old."""
        node = self._authenticated.get(node_id, max_age) if max_age > 0 else None
        if node is None:
            node = self._repos.nodes.get(node_id)
        expected = node.token_hash if node else hash_token("")
        if not hmac.compare_digest(expected, hash_token(token)) or node is None:
            self._authenticated.drop(node_id)
            raise Unauthorized("unknown node or wrong node token")
        if max_age > 0:
            self._authenticated.put(node_id, node)
        return node

    def forget(self, node_id: str) -> None:
        """Drop what :meth:`authenticate` remembers of ``node_id`` (it was deleted)."""
        self._authenticated.drop(node_id)

    def heartbeat(
        self,
        node: Node,
        metrics: NodeMetrics,
        applied_version: int | None,
        max_age: float = 0.0,
    ) -> HeartbeatResult:
        """Record a heartbeat; answers the desired version and whether it differs from what
        the node runs (the agent then fetches it). ``max_age``: how old a read of the active
        pointers may be (see ``ConfigService.pointers``)."""
        if not self._repos.nodes.record_heartbeat(node.id, self._clock(), metrics, applied_version):
            self.forget(node.id)
            raise NotFound(f"node {node.id!r} does not exist")
        desired = self.desired_version(node, self._configs.pointers(max_age))
        return HeartbeatResult(
            desired_version=desired,
            config_updated=desired is not None and desired != applied_version,
        )

    def register_agent(
        self, node: Node, hostname: str, agent_version: str, applied_version: int | None
    ) -> HeartbeatResult:
        """Record that ``node``'s agent (re)started or reconnected; answers like
        :meth:`heartbeat`. 404 when the node was deleted meanwhile."""
        agent = AgentInfo(hostname[:255], agent_version[:64], self._clock())
        if not self._repos.nodes.record_agent(node.id, agent, applied_version):
            raise NotFound(f"node {node.id!r} does not exist")
        desired = self.desired_version(node)
        return HeartbeatResult(
            desired_version=desired,
            config_updated=desired is not None and desired != applied_version,
        )

    def report_config(self, node: Node, report: ConfigReport) -> None:
        """Record an apply report: ``applied`` clears the node's last error (and sets its
        applied version); a failure is kept as ``config_error`` (shown on the node and in the
        drift list). 400 for an unknown outcome, 404 for a deleted node."""
        if report.outcome not in APPLY_OUTCOMES:
            raise BadRequest(f"outcome: expected one of {', '.join(APPLY_OUTCOMES)}")
        error = None
        applied = report.applied_version
        if report.outcome == "applied":
            applied = report.version
        else:
            error = ConfigApplyError(
                version=report.version,
                outcome=report.outcome,
                message=report.message[:4000],
                issues=tuple((p[:500], m[:1000]) for p, m in report.issues[:100]),
                at=self._clock(),
            )
        if not self._repos.nodes.record_config_report(node.id, applied, error):
            raise NotFound(f"node {node.id!r} does not exist")

    def drift(self) -> list[DriftEntry]:
        """Nodes whose applied version differs from the desired one (by name); nodes with no
        active version are not listed."""
        pointers = self._configs.pointers()
        entries: list[DriftEntry] = []
        for node in self._repos.nodes.find(NodeFilter()):
            desired = self.desired_version(node, pointers)
            if desired is None or desired == node.applied_version:
                continue
            error = node.config_error
            if node.status == "offline" or node.last_seen is None:
                state = "unreachable"
            elif error is not None and error.version == desired:
                state = "failed"
            else:
                state = "pending"
            entries.append(DriftEntry(node, desired, state))
        return entries

    def render(self, node_id: str) -> RenderedConfig:
        """The node's relay config: its active version rendered with its peers.

        404: unknown node, or no active version for its type and region. 409: the version
        cannot be rendered for this node (e.g. no core to chain to); ``issues`` say why.
        """
        return self.render_for(self.get(node_id))

    def render_for(self, node: Node, max_age: float = 0.0) -> RenderedConfig:
        """:meth:`render` for a node already read (e.g. by :meth:`authenticate`).

        ``max_age`` > 0: the active pointers and the peers may come from a read that recent
        (the AgentService, when a publish makes every agent of a type ask at once).
        """
        version_id = self.desired_version(node, self._configs.pointers(max_age))
        if version_id is None:
            raise NotFound(
                f"no {DEFAULT_CONFIG_TYPE} config is active for {node.type} nodes in region "
                f"{node.region!r}; publish one"
            )
        return self.render_version(node, version_id, max_age)

    def render_version(self, node: Node, version_id: int, max_age: float = 0.0) -> RenderedConfig:
        """``node``'s relay config from version ``version_id`` (active or not: a deployment may
        name a draft), rendered with the fleet's peers. 404: unknown version; 409: the version
        cannot be rendered for this node."""
        config_data = self._configs.config_data(version_id)
        peers = self._inventory.get(max_age)
        try:
            text = render_node_config(
                config_data,
                _fleet_node(node),
                peers,
                version_id,
                base_dir=self._settings.node_base_dir,
            )
        except ConfigError as exc:
            raise Conflict(
                f"config version {version_id} cannot be rendered for node {node.name!r}",
                error="render_failed",
                extra=issues_extra(exc.issues),
            ) from None
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return RenderedConfig(text, version_id, checksum)


def _fleet_node(node: Node) -> FleetNode:
    return FleetNode(
        id=node.id,
        name=node.name,
        type=cast(NodeType, node.type),
        region=node.region,
        addr=node.addr,
        port=node.port,
        status=node.render_status,
        tags=node.tags,
        metadata=node.metadata,
    )
