"""``/configs``: versioned relay configs -- drafts, publish, deprecate, rollback, history, diff."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, g

from master_api.api import shapes
from master_api.api.common import (
    CONFIG_TYPE_PATTERN,
    INT_ID,
    REGION_PATTERN,
    limit_field,
    offset_field,
)
from master_api.api.routing import Reply, api_route, current_identity
from master_api.api.schema import INT64_MAX, Field, Schema
from master_api.extensions import repos, services
from master_api.models import NODE_TYPES
from master_api.redact import redact_data, redact_yaml, viewer_only
from master_api.services.configs import DEFAULT_CONFIG_TYPE, DraftInput, RollbackInput
from relay.config.fleet import TEMPLATES, template_params

__all__ = ["bp"]

bp = Blueprint("configs", __name__)

MAX_CONFIG_BYTES = 1024 * 1024
_REGION_OR_ALL = rf"{REGION_PATTERN}|^\*$"

_CONFIG_TYPE = Field(
    "config_type",
    "string",
    f"kind of config (default {DEFAULT_CONFIG_TYPE!r}: the relay's)",
    pattern=CONFIG_TYPE_PATTERN,
    max_length=32,
)
_NODE_TYPE = Field("node_type", "string", "edge or core", enum=NODE_TYPES)

DRAFT_IN = Schema(
    "ConfigVersionCreate",
    [
        _CONFIG_TYPE,
        Field("node_type", "string", "edge or core", required=True, enum=NODE_TYPES),
        Field(
            "regions",
            "array",
            "regions it is for; '*' (the default): every region without a version of its own",
            min_items=1,
            max_items=64,
            unique_items=True,
            items=Field("region", "string", pattern=_REGION_OR_ALL, max_length=32),
        ),
        Field("description", "string", max_length=2000),
        Field(
            "config_data",
            "string",
            "the full YAML (gost v3 style plus fleet extensions)",
            max_length=MAX_CONFIG_BYTES,
        ),
        Field("template", "string", "build config_data from this template", enum=TEMPLATES),
        Field("params", "object", "template parameters (see GET /configs/templates)"),
    ],
    DraftInput,
    description="Give config_data, or template with params.",
)


@dataclass(frozen=True, slots=True)
class ConfigQuery:
    config_type: str | None = None
    node_type: str | None = None
    region: str | None = None
    status: str | None = None
    limit: int = 50
    offset: int = 0


CONFIG_QUERY = Schema(
    "ConfigQuery",
    [
        _CONFIG_TYPE,
        _NODE_TYPE,
        Field(
            "region", "string", "versions for this region", pattern=_REGION_OR_ALL, max_length=32
        ),
        Field("status", "string", enum=("draft", "published", "active", "deprecated")),
        limit_field(),
        offset_field(),
    ],
    ConfigQuery,
)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    config_type: str | None = None
    node_type: str | None = None
    region: str | None = None
    version_id: int | None = None
    limit: int = 50
    offset: int = 0


HISTORY_QUERY = Schema(
    "HistoryQuery",
    [
        _CONFIG_TYPE,
        _NODE_TYPE,
        Field("region", "string", pattern=_REGION_OR_ALL, max_length=32),
        Field(
            "version_id", "integer", "changes from or to this version", minimum=1, maximum=INT64_MAX
        ),
        limit_field(),
        offset_field(),
    ],
    HistoryQuery,
)

ROLLBACK_IN = Schema(
    "Rollback",
    [
        _CONFIG_TYPE,
        Field("node_type", "string", required=True, enum=NODE_TYPES),
        Field(
            "region",
            "string",
            "region (or '*')",
            required=True,
            pattern=_REGION_OR_ALL,
            max_length=32,
        ),
        Field(
            "to_version",
            "integer",
            "target version; absent: the previous one",
            minimum=1,
            maximum=INT64_MAX,
        ),
        Field("reason", "string", max_length=2000),
    ],
    RollbackInput,
)

_NOT_FOUND = Reply(404, "No such version", shapes.ERROR)


def _version_json(version_id: int) -> dict[str, Any]:
    configs = services().configs
    doc = configs.get(version_id).to_json(configs.active_regions(version_id))
    if viewer_only(current_identity().role):
        doc["config_data"] = redact_yaml(doc["config_data"])
        doc["params"] = redact_data(doc["params"])
    return doc


@api_route(
    bp,
    "/configs",
    "GET",
    summary="List config versions (newest first, without config_data)",
    access="viewer",
    query=CONFIG_QUERY,
    replies=[Reply(200, "Versions", shapes.list_of(shapes.VERSION_SUMMARY))],
)
def list_configs(query: ConfigQuery) -> Any:
    configs = services().configs
    active = configs.active_map()
    statuses: tuple[str, ...] = ()
    version_ids: list[int] | None = None
    if query.status == "active":
        version_ids = sorted(active)
    elif query.status is not None:
        statuses = (query.status,)
    versions = repos().config_versions.find(
        config_type=query.config_type,
        node_type=query.node_type,
        region=query.region,
        statuses=statuses,
        version_ids=version_ids,
        limit=query.limit,
        offset=query.offset,
    )
    if query.status == "published":  # "published" shows only those not active anywhere now
        versions = [v for v in versions if v.version_id not in active]
    items = [v.to_json(active.get(v.version_id, ()), with_data=False) for v in versions]
    return {"items": items, "count": len(items)}


@api_route(
    bp,
    "/configs",
    "POST",
    summary="Create a draft version from config_data or a template; checked by the relay's checker",
    access="operator",
    body=DRAFT_IN,
    replies=[Reply(201, "Draft created", shapes.VERSION)],
)
def create_config(body: DraftInput) -> Any:
    version = services().configs.create_draft(body, current_identity().name)
    g.aicdn_target = str(version.version_id)
    return version.to_json(()), 201


@api_route(
    bp,
    "/configs/validate",
    "POST",
    summary="Check a draft with the relay's checker without storing it (the web console's "
    "Validate); a refusal lists the checker's issues with their paths",
    access="operator",
    body=DRAFT_IN,
    audited=False,
    replies=[Reply(200, "Accepted: the YAML a draft would store", shapes.VALIDATED)],
)
def validate_config(body: DraftInput) -> Any:
    config_data = services().configs.validate(body)
    checksum = hashlib.sha256(config_data.encode("utf-8")).hexdigest()
    return {"valid": True, "config_data": config_data, "checksum": checksum}


@api_route(
    bp,
    "/configs/templates",
    "GET",
    summary="Templates and their parameters",
    access="viewer",
    replies=[Reply(200, "Templates", {"type": "object"})],
)
def list_templates() -> Any:
    out: dict[str, Any] = {}
    for name in TEMPLATES:
        out[name] = {
            spec.name: {
                "type": spec.type,
                "default": spec.default
                if not isinstance(spec.default, tuple)
                else list(spec.default),
                "required": spec.required,
                "description": spec.description,
                "choices": list(spec.choices),
            }
            for spec in template_params(name).values()
        }
    return out


@api_route(
    bp,
    "/configs/history",
    "GET",
    summary="What was created, published, rolled back and deprecated (newest first)",
    access="viewer",
    query=HISTORY_QUERY,
    replies=[Reply(200, "History entries", shapes.list_of(shapes.HISTORY_ENTRY))],
)
def config_history(query: HistoryQuery) -> Any:
    entries = services().configs.history(
        config_type=query.config_type,
        node_type=query.node_type,
        region=query.region,
        version_id=query.version_id,
        limit=query.limit,
        offset=query.offset,
    )
    return {"items": [e.to_json() for e in entries], "count": len(entries)}


@api_route(
    bp,
    "/configs/rollbacks",
    "GET",
    summary="Rollbacks (newest first)",
    access="viewer",
    replies=[Reply(200, "Rollbacks", shapes.list_of(shapes.ROLLBACK))],
)
def list_rollbacks() -> Any:
    records = repos().config_rollbacks.find()
    return {"items": [r.to_json() for r in records], "count": len(records)}


@api_route(
    bp,
    f"/configs/<{INT_ID}:version_id>",
    "GET",
    summary="Get a version with its YAML",
    access="viewer",
    replies=[Reply(200, "The version", shapes.VERSION), _NOT_FOUND],
)
def get_config(version_id: int) -> Any:
    return _version_json(version_id)


@api_route(
    bp,
    f"/configs/<{INT_ID}:version_id>/publish",
    "POST",
    summary="Make the version active in each of its regions (one active per config type, "
    "node type and region)",
    access="operator",
    replies=[
        Reply(200, "Published; changes list the pointers moved", shapes.PUBLISHED),
        _NOT_FOUND,
        Reply(409, "Deprecated version", shapes.ERROR),
    ],
)
def publish_config(version_id: int) -> Any:
    result = services().configs.publish(version_id, current_identity().name)
    return {
        **result.version.to_json(result.active_regions, with_data=False),
        "changes": [c.to_json() for c in result.changes],
    }


@api_route(
    bp,
    f"/configs/<{INT_ID}:version_id>/deprecate",
    "POST",
    summary="Deprecate a version that is not active anywhere",
    access="operator",
    replies=[
        Reply(200, "Deprecated", shapes.VERSION_SUMMARY),
        _NOT_FOUND,
        Reply(409, "Still active somewhere", shapes.ERROR),
    ],
)
def deprecate_config(version_id: int) -> Any:
    version = services().configs.deprecate(version_id, current_identity().name)
    return version.to_json((), with_data=False)


@api_route(
    bp,
    "/configs/rollback",
    "POST",
    summary="Roll a (config type, node type, region) back to a named or the previous version",
    access="operator",
    body=ROLLBACK_IN,
    replies=[
        Reply(200, "Rolled back", shapes.ROLLBACK),
        Reply(404, "No such target version", shapes.ERROR),
        Reply(
            409,
            "Nothing to roll back, target deprecated or already active, or a concurrent change",
            shapes.ERROR,
        ),
    ],
)
def rollback_config(body: RollbackInput) -> Any:
    record = services().configs.rollback(body, current_identity().name)
    g.aicdn_target = f"{record.config_type}/{record.node_type}/{record.region}"
    return record.to_json()


@api_route(
    bp,
    f"/configs/<{INT_ID}:a>/diff/<{INT_ID}:b>",
    "GET",
    summary="Unified diff of two versions' YAML (a -> b)",
    access="viewer",
    replies=[Reply(200, "The diff (empty when equal)", shapes.DIFF), _NOT_FOUND],
)
def diff_configs(a: int, b: int) -> Any:
    diff = services().configs.diff(a, b)
    if viewer_only(current_identity().role):
        diff = redact_yaml(diff)
    return {"from_version": a, "to_version": b, "diff": diff}
