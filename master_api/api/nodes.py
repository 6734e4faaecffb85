"""``/nodes``: the fleet inventory, rendered node configs, the agents' heartbeat, config drift,
and commands sent to agents over their gRPC command stream."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from master_api.api import shapes
from master_api.api.common import (
    NAME_PATTERN,
    REGION_PATTERN,
    TAG_PATTERN,
    limit_field,
    offset_field,
)
from master_api.api.routing import Reply, api_route, current_identity
from master_api.api.schema import Field, Schema
from master_api.errors import ApiError, Conflict, NotFound, Unauthorized
from master_api.extensions import repos, services, settings
from master_api.grpc.hub import (
    COMMAND_TYPES,
    HUB_KEY,
    AgentNotConnected,
    CommandHub,
    CommandTimeout,
)
from master_api.models import NODE_STATUSES, NODE_TYPES, Node, NodeMetrics
from master_api.redact import redact_yaml, viewer_only
from master_api.repos import NodeFilter
from master_api.services.nodes import NodeInput

__all__ = ["bp"]

bp = Blueprint("nodes", __name__)

_NAME = Field(
    "name",
    "string",
    "unique node name (also its certificate file name)",
    pattern=NAME_PATTERN,
    max_length=63,
)
_TYPE = Field("type", "string", "edge (client entry) or core (towards the origin)", enum=NODE_TYPES)
_REGION = Field(
    "region", "string", "region code, e.g. hk, us, sg, cn", pattern=REGION_PATTERN, max_length=32
)
_ADDR = Field(
    "addr",
    "string",
    "host name or IP address that peers dial",
    pattern=r"^[A-Za-z0-9_.:\[\]-]{1,253}$",
    max_length=253,
)
_PORT = Field("port", "integer", "main listening port", minimum=1, maximum=65535)
_TAGS = Field(
    "tags",
    "array",
    "free labels",
    max_items=32,
    unique_items=True,
    items=Field("tag", "string", pattern=TAG_PATTERN, max_length=63),
)
_METADATA = Field(
    "metadata",
    "object",
    "free attributes; the renderer reads cert_file, key_file, ca_file and ws_port",
)
_STATUS = Field(
    "status",
    "string",
    "online (default), offline, degraded, draining or standby",
    enum=NODE_STATUSES,
)

NODE_IN = Schema(
    "NodeCreate",
    [
        replace(_NAME, required=True),
        replace(_TYPE, required=True),
        replace(_REGION, required=True),
        replace(_ADDR, required=True),
        replace(_PORT, required=True),
        _TAGS,
        _METADATA,
        _STATUS,
    ],
    NodeInput,
)


@dataclass(frozen=True, slots=True)
class NodePatch:
    changes: dict[str, Any]


NODE_PATCH = Schema(
    "NodeUpdate",
    [_NAME, _REGION, _ADDR, _PORT, _TAGS, _METADATA, _STATUS],
    lambda **changes: NodePatch(changes),
    min_fields=1,
)


@dataclass(frozen=True, slots=True)
class NodeQuery:
    type: str | None = None
    region: str | None = None
    status: str | None = None
    tag: tuple[str, ...] = ()
    limit: int = 100
    offset: int = 0


NODE_QUERY = Schema(
    "NodeQuery",
    [
        _TYPE,
        _REGION,
        _STATUS,
        Field(
            "tag",
            "array",
            "only nodes with all these tags (repeat the parameter)",
            items=Field("tag", "string", max_length=63),
            max_items=32,
        ),
        limit_field(100),
        offset_field(),
    ],
    NodeQuery,
)


@dataclass(frozen=True, slots=True)
class HeartbeatInput:
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    applied_version: int | None = None


def _count(name: str, description: str = "") -> Field:
    return Field(name, "integer", description, nullable=True, minimum=0, maximum=2**62)


METRICS_IN = Schema(
    "NodeMetrics",
    [
        _count("connections", "open client connections"),
        _count("max_connections", "connection limit"),
        _count("requests_total"),
        _count("errors_total"),
        Field(
            "error_rate", "number", "errors per request, 0..1", nullable=True, minimum=0, maximum=1
        ),
        Field(
            "p99_latency_ms",
            "number",
            "p99 time to first byte, ms",
            nullable=True,
            minimum=0,
            maximum=1e9,
        ),
        Field("cpu_percent", "number", nullable=True, minimum=0, maximum=100_000),
        _count("memory_bytes"),
        _count("config_version"),
    ],
    NodeMetrics,
)
HEARTBEAT_IN = Schema(
    "Heartbeat",
    [
        Field("metrics", "object", "what the node measured", nested=METRICS_IN),
        Field(
            "applied_version", "integer", "config version the relay runs", nullable=True, minimum=0
        ),
    ],
    HeartbeatInput,
)

_NOT_FOUND = Reply(404, "No such node", shapes.ERROR)


def _node_json(node: Node) -> dict[str, Any]:
    return node.to_json(services().nodes.desired_version(node))


@api_route(
    bp,
    "/nodes",
    "GET",
    summary="List nodes, filtered by type, region, status and tags",
    access="viewer",
    query=NODE_QUERY,
    replies=[Reply(200, "Nodes", shapes.list_of(shapes.NODE, total=True))],
)
def list_nodes(query: NodeQuery) -> Any:
    where = NodeFilter(query.type, query.region, query.status, query.tag)
    nodes = repos().nodes.find(where, query.limit, query.offset)
    pointers = services().configs.pointers()
    items = [n.to_json(services().nodes.desired_version(n, pointers)) for n in nodes]
    return {"items": items, "count": len(items), "total": repos().nodes.count(where)}


@api_route(
    bp,
    "/nodes",
    "POST",
    summary="Register a node; the answer carries its agent token, shown this once",
    access="operator",
    body=NODE_IN,
    replies=[
        Reply(201, "Registered", shapes.NODE_CREATED),
        Reply(409, "Name taken", shapes.ERROR),
    ],
)
def create_node(body: NodeInput) -> Any:
    node, token = services().nodes.register(body)
    g.aicdn_target = node.id
    return {**_node_json(node), "token": token}, 201


@api_route(
    bp,
    "/nodes/<node_id>/token",
    "POST",
    summary="Rotate the node's agent token: the answer carries the new one, shown this once; "
    "the old one is refused (by other masters after agent_auth_ttl)",
    access="operator",
    replies=[Reply(200, "Rotated", shapes.NODE_CREATED), _NOT_FOUND],
)
def rotate_node_token(node_id: str) -> Any:
    node, token = services().nodes.rotate_token(node_id)
    g.aicdn_target = node.id
    return {**_node_json(node), "token": token}


@api_route(
    bp,
    "/nodes/<node_id>",
    "GET",
    summary="Get a node",
    access="viewer",
    replies=[Reply(200, "The node", shapes.NODE), _NOT_FOUND],
)
def get_node(node_id: str) -> Any:
    return _node_json(services().nodes.get(node_id))


@api_route(
    bp,
    "/nodes/<node_id>",
    "PATCH",
    summary="Change a node's attributes",
    access="operator",
    body=NODE_PATCH,
    replies=[
        Reply(200, "Updated", shapes.NODE),
        _NOT_FOUND,
        Reply(409, "Name taken", shapes.ERROR),
    ],
)
def update_node(node_id: str, body: NodePatch) -> Any:
    node = repos().nodes.update(node_id, body.changes, time.time())
    if node is None:
        raise NotFound(f"node {node_id!r} does not exist")
    return _node_json(node)


@api_route(
    bp,
    "/nodes/<node_id>",
    "DELETE",
    summary="Remove a node from the inventory",
    access="operator",
    replies=[Reply(204, "Deleted", None, media_type=""), _NOT_FOUND],
)
def delete_node(node_id: str) -> Any:
    if not repos().nodes.delete(node_id):
        raise NotFound(f"node {node_id!r} does not exist")
    services().nodes.forget(node_id)
    return "", 204


@api_route(
    bp,
    "/nodes/<node_id>/config",
    "GET",
    summary="The node's relay config (YAML): its active version rendered with its peers",
    access="viewer",
    replies=[
        Reply(
            200,
            "Rendered config; passes `aicdn-relay check`",
            {"type": "string"},
            media_type="application/yaml",
            headers={"X-Config-Version": "integer", "X-Config-Checksum": "string"},
        ),
        Reply(404, "No such node, or no active version for its type and region", shapes.ERROR),
        Reply(409, "The version cannot be rendered for this node (issues say why)", shapes.ERROR),
    ],
)
def node_config(node_id: str) -> Any:
    rendered = services().nodes.render(node_id)
    text = rendered.yaml
    if viewer_only(current_identity().role):
        text = redact_yaml(text)  # version and checksum still name the real config
    response = Response(text, mimetype="application/yaml")
    response.headers["X-Config-Version"] = str(rendered.version_id)
    response.headers["X-Config-Checksum"] = rendered.checksum
    response.headers["ETag"] = f'"{rendered.checksum}"'
    return response


@api_route(
    bp,
    "/nodes/<node_id>/heartbeat",
    "POST",
    summary="Agent heartbeat with metrics (bearer: the node's agent token)",
    access="node",
    body=HEARTBEAT_IN,
    body_required=False,
    managed=False,
    audited=False,
    replies=[
        Reply(200, "Recorded; says whether a new config version waits", shapes.HEARTBEAT_REPLY),
    ],
)
def heartbeat(node_id: str, body: HeartbeatInput) -> Any:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the node's agent token as 'Authorization: Bearer <token>'")
    node = services().nodes.authenticate(node_id, token.strip())
    result = services().nodes.heartbeat(node, body.metrics, body.applied_version)
    return {"desired_version": result.desired_version, "config_updated": result.config_updated}


@api_route(
    bp,
    "/nodes/drift",
    "GET",
    summary="Nodes whose applied config version is not the desired one, and why",
    access="viewer",
    replies=[Reply(200, "Drifting nodes by name", shapes.list_of(shapes.DRIFT_ENTRY))],
)
def drift() -> Any:
    items = [entry.to_json() for entry in services().nodes.drift()]
    return {"items": items, "count": len(items)}


@dataclass(frozen=True, slots=True)
class CommandInput:
    command: str
    lines: int | None = None
    timeout: float | None = None
    source: str | None = None


COMMAND_IN = Schema(
    "NodeCommand",
    [
        Field(
            "command",
            "string",
            "reload (admin API), restart and stop (systemd), status, logs",
            required=True,
            enum=tuple(COMMAND_TYPES),
        ),
        Field("lines", "integer", "logs: how many of the last lines", minimum=1, maximum=5000),
        Field(
            "timeout",
            "number",
            "seconds the agent has to answer (default AICDN_COMMAND_TIMEOUT)",
            minimum=0.1,
            maximum=300,
        ),
        Field(
            "source",
            "string",
            "logs: relay (its journal or log file; default) or access (its JSON access log)",
            enum=("relay", "access"),
        ),
    ],
    CommandInput,
)


def _hub() -> CommandHub:
    hub = current_app.extensions.get(HUB_KEY)
    if not isinstance(hub, CommandHub):
        raise ApiError(
            "the agent service (gRPC) is not running in this master process",
            status_code=503,
            error="agent_service_unavailable",
        )
    return hub


@api_route(
    bp,
    "/nodes/<node_id>/commands",
    "POST",
    summary="Run a command on the node through its agent and return the output",
    access="operator",
    body=COMMAND_IN,
    replies=[
        Reply(
            200, "The agent's answer (ok false: the command failed there)", shapes.COMMAND_RESULT
        ),
        _NOT_FOUND,
        Reply(409, "The node's agent has no command stream open on this master", shapes.ERROR),
        Reply(503, "The agent service is not running in this process", shapes.ERROR),
        Reply(504, "The agent did not answer in time", shapes.ERROR),
    ],
)
def run_command(node_id: str, body: CommandInput) -> Any:
    node = services().nodes.get(node_id)
    g.aicdn_target = node.id
    hub = _hub()
    args = {"lines": str(body.lines)} if body.lines is not None else {}
    if body.source is not None:
        args["source"] = body.source
    timeout = body.timeout if body.timeout is not None else settings().command_timeout
    try:
        reply = hub.execute_blocking(node.id, body.command, args, timeout)
    except AgentNotConnected as exc:
        raise Conflict(str(exc), error="agent_not_connected") from None
    except (CommandTimeout, TimeoutError) as exc:
        raise ApiError(str(exc), status_code=504, error="agent_timeout") from None
    except RuntimeError as exc:  # the gRPC loop is gone (shutting down)
        raise ApiError(str(exc), status_code=503, error="agent_service_unavailable") from None
    return {
        "node_id": node.id,
        "command": body.command,
        "ok": reply.ok,
        "output": reply.output,
        "error": reply.error,
        "duration_ms": round(reply.duration * 1000, 3),
    }
