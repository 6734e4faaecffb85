"""The OpenAPI 3.1 document, generated from the route table (:data:`routing.ROUTES`).

Nothing here is written by hand per route: paths, parameters, bodies, answers and security all
come from the ``api_route`` declarations, and a test checks that ``app.url_map`` holds exactly
the declared routes.
"""

from __future__ import annotations

import re
from typing import Any

from master_api.api import shapes
from master_api.api.routing import API_PREFIX, ROUTES, RouteSpec
from master_api.api.schema import INT64_MAX

__all__ = ["build_document", "openapi_path"]

_PARAM_RE = re.compile(r"<(?:(?P<conv>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")

_DEFAULT_DESCRIPTIONS = {
    400: "Invalid request: the message (and field) name the problem",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Role too low, or client address outside AICDN_ADMIN_ALLOW",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    415: "Body is not application/json",
    429: "Too many requests",
    503: "The database is unavailable",
}


def openapi_path(rule: str) -> str:
    """``/nodes/<node_id>`` -> ``/nodes/{node_id}``."""
    return _PARAM_RE.sub(lambda m: "{" + m.group("name") + "}", rule)


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for match in _PARAM_RE.finditer(rule):
        schema: dict[str, Any]
        if match.group("conv") == "int":
            schema = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
        else:
            schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
        params.append(
            {"name": match.group("name"), "in": "path", "required": True, "schema": schema}
        )
    return params


def _responses(spec: RouteSpec) -> dict[str, Any]:
    declared = {reply.status: reply for reply in spec.replies}
    out: dict[str, Any] = {}
    for status in spec.statuses():
        reply = declared.get(status)
        if reply is None:
            out[str(status)] = {
                "description": _DEFAULT_DESCRIPTIONS.get(status, "Error"),
                "content": {"application/json": {"schema": shapes.ERROR}},
            }
            continue
        entry: dict[str, Any] = {"description": reply.description}
        if reply.media_type:
            entry["content"] = {reply.media_type: {"schema": dict(reply.schema or {})}}
            for media_type, schema in reply.alternatives.items():
                entry["content"][media_type] = {"schema": dict(schema)}
        if reply.headers:
            entry["headers"] = {
                name: {"schema": {"type": kind}} for name, kind in reply.headers.items()
            }
        out[str(status)] = entry
    return out


def _operation(spec: RouteSpec) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": spec.endpoint.replace(".", "_"),
        "summary": spec.summary,
        "tags": [spec.tag],
        "x-access": spec.access,
        "responses": _responses(spec),
    }
    params = _path_parameters(spec.rule)
    if spec.query is not None:
        params += spec.query.query_parameters()
    if params:
        op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": spec.body.json_schema()}},
        }
    if spec.access == "node":
        op["security"] = [{"nodeToken": []}]
    elif spec.access == "public":
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": []}]
    return op


def build_document() -> dict[str, Any]:
    """The whole document, for ``GET /api/v1/openapi.json``."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        paths.setdefault(openapi_path(spec.rule), {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AI CDN Tunnel master API",
            "version": "1",
            "description": (
                "Control plane of the relay fleet. Roles: viewer reads; operator changes nodes "
                "and configs, publishes and rolls back; admin also manages users. x-access on "
                "each operation names the least role (or public/refresh/node)."
            ),
        },
        "servers": [{"url": API_PREFIX}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "nodeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a node's agent token, issued at registration",
                },
            },
        },
    }
