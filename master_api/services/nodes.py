"""Node inventory: registration with a one-time agent token, heartbeats, rendering.

The agent plane (gRPC ``Register``/``Heartbeat``, issue 6) is to call :meth:`NodeService.
heartbeat` and :meth:`NodeService.authenticate` too, so REST and gRPC agents behave alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from master_api.errors import Conflict, NotFound, Unauthorized, issues_extra
from master_api.models import ActivePointer, Node, NodeMetrics
from master_api.repos import NodeFilter, Repos
from master_api.services.configs import DEFAULT_CONFIG_TYPE, ConfigService
from master_api.settings import Settings
from relay.config import ConfigError
from relay.config.fleet import FleetNode, NodeType, render_node_config

__all__ = ["HeartbeatResult", "NodeInput", "NodeService", "RenderedConfig", "hash_token"]


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

    def authenticate(self, node_id: str, token: str) -> Node:
        """The node whose agent token is ``token``; 401 otherwise (same answer for an unknown
        node as for a wrong token)."""
        node = self._repos.nodes.get(node_id)
        expected = node.token_hash if node else hash_token("")
        if not hmac.compare_digest(expected, hash_token(token)) or node is None:
            raise Unauthorized("unknown node or wrong node token")
        return node

    def heartbeat(
        self, node: Node, metrics: NodeMetrics, applied_version: int | None
    ) -> HeartbeatResult:
        """Record a heartbeat; answers the desired version and whether it differs from what
        the node runs (the agent then fetches it)."""
        if not self._repos.nodes.record_heartbeat(node.id, self._clock(), metrics, applied_version):
            raise NotFound(f"node {node.id!r} does not exist")
        desired = self.desired_version(node)
        return HeartbeatResult(
            desired_version=desired,
            config_updated=desired is not None and desired != applied_version,
        )

    def render(self, node_id: str) -> RenderedConfig:
        """The node's relay config: its active version rendered with its peers.

        404: unknown node, or no active version for its type and region. 409: the version
        cannot be rendered for this node (e.g. no core to chain to); ``issues`` say why.
        """
        node = self.get(node_id)
        version_id = self.desired_version(node)
        if version_id is None:
            raise NotFound(
                f"no {DEFAULT_CONFIG_TYPE} config is active for {node.type} nodes in region "
                f"{node.region!r}; publish one"
            )
        version = self._configs.get(version_id)
        peers = [_fleet_node(peer) for peer in self._repos.nodes.find(NodeFilter())]
        try:
            text = render_node_config(
                version.config_data,
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
        status=node.status,
        tags=node.tags,
        metadata=node.metadata,
    )
