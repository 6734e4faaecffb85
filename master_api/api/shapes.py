"""JSON Schemas of the API's answers, for the OpenAPI document (bodies are in the blueprints).

Kept next to nothing else on purpose: the schemathesis test checks every answer against these,
so a model's ``to_json`` and its shape here cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR", "list_of", "nullable", "obj"]

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], extra: bool = False) -> Schema:
    """An object with exactly (``extra``: at least) these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": extra,
    }


def list_of(item: Schema, total: bool = False) -> Schema:
    """A page: ``items``, their ``count``, and with ``total`` the number of all matches."""
    props: dict[str, Schema] = {"items": {"type": "array", "items": item}, "count": INT}
    if total:
        props["total"] = INT
    return obj(props)


ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": STR,
        "message": STR,
        "field": STR,
        "issues": {
            "type": "array",
            "items": obj({"path": STR, "message": STR}),
        },
    },
    "required": ["error", "message"],
}

TOKENS: Schema = obj(
    {"access_token": STR, "refresh_token": STR, "token_type": STR, "expires_in": INT, "role": STR}
)
ACCESS_TOKEN: Schema = obj({"access_token": STR, "token_type": STR, "expires_in": INT})
MESSAGE: Schema = obj({"message": STR})

USER: Schema = obj({"name": STR, "role": STR, "created_at": TIME, "updated_at": TIME})

METRICS: Schema = obj(
    {
        "connections": nullable(INT),
        "max_connections": nullable(INT),
        "requests_total": nullable(INT),
        "errors_total": nullable(INT),
        "error_rate": nullable(NUM),
        "p99_latency_ms": nullable(NUM),
        "cpu_percent": nullable(NUM),
        "memory_bytes": nullable(INT),
        "config_version": nullable(INT),
    }
)

CONFIG_ERROR: Schema = obj(
    {
        "version": INT,
        "outcome": {"type": "string", "enum": ["rejected", "rolled_back"]},
        "message": STR,
        "issues": {"type": "array", "items": obj({"path": STR, "message": STR})},
        "at": TIME,
    }
)
AGENT: Schema = obj({"hostname": STR, "version": STR, "registered_at": TIME})

FAILOVER: Schema = obj(
    {
        "state": {"type": "string", "enum": ["in", "backup", "out"]},
        "reason": STR,
        "changed_at": TIME,
        "healthy_since": nullable(TIME),
        "versions": {"type": "array", "items": INT},
    }
)
_NODE_PROPS: dict[str, Schema] = {
    "id": STR,
    "name": STR,
    "type": {"type": "string", "enum": ["edge", "core"]},
    "region": STR,
    "addr": STR,
    "port": INT,
    "tags": {"type": "array", "items": STR},
    "metadata": {"type": "object"},
    "status": STR,
    "last_seen": nullable(TIME),
    "desired_version": nullable(INT),
    "applied_version": nullable(INT),
    "metrics": nullable(METRICS),
    "config_error": nullable(CONFIG_ERROR),
    "agent": nullable(AGENT),
    "release": nullable(STR),
    "failover": nullable(FAILOVER),
    "created_at": TIME,
    "updated_at": TIME,
}
NODE: Schema = obj(_NODE_PROPS)
NODE_CREATED: Schema = obj({**_NODE_PROPS, "token": STR})
HEARTBEAT_REPLY: Schema = obj({"desired_version": nullable(INT), "config_updated": BOOL})
DRIFT_ENTRY: Schema = obj(
    {
        "id": STR,
        "name": STR,
        "type": STR,
        "region": STR,
        "status": STR,
        "state": {"type": "string", "enum": ["pending", "failed", "unreachable"]},
        "desired_version": INT,
        "applied_version": nullable(INT),
        "last_seen": nullable(TIME),
        "config_error": nullable(CONFIG_ERROR),
    }
)
COMMAND_RESULT: Schema = obj(
    {
        "node_id": STR,
        "command": STR,
        "ok": BOOL,
        "output": STR,
        "error": STR,
        "duration_ms": NUM,
    }
)

_VERSION_PROPS: dict[str, Schema] = {
    "version_id": INT,
    "config_type": STR,
    "node_type": STR,
    "regions": {"type": "array", "items": STR},
    "description": STR,
    "checksum": STR,
    "status": {"type": "string", "enum": ["draft", "published", "active", "deprecated"]},
    "active_regions": {"type": "array", "items": STR},
    "template": nullable(STR),
    "params": nullable({"type": "object"}),
    "created_by": STR,
    "created_at": TIME,
    "published_at": nullable(TIME),
    "published_by": nullable(STR),
    "deprecated_at": nullable(TIME),
}
VERSION_SUMMARY: Schema = obj(_VERSION_PROPS)
VERSION: Schema = obj({**_VERSION_PROPS, "config_data": STR})
POINTER_CHANGE: Schema = obj({"region": STR, "from_version": nullable(INT), "to_version": INT})
PUBLISHED: Schema = obj({**_VERSION_PROPS, "changes": {"type": "array", "items": POINTER_CHANGE}})
HISTORY_ENTRY: Schema = obj(
    {
        "id": STR,
        "action": STR,
        "config_type": STR,
        "node_type": STR,
        "region": nullable(STR),
        "from_version": nullable(INT),
        "to_version": nullable(INT),
        "actor": STR,
        "at": TIME,
    }
)
ROLLBACK: Schema = obj(
    {
        "id": STR,
        "config_type": STR,
        "node_type": STR,
        "region": STR,
        "from_version": INT,
        "to_version": INT,
        "reason": STR,
        "actor": STR,
        "at": TIME,
    }
)
DIFF: Schema = obj({"from_version": INT, "to_version": INT, "diff": STR})
VALIDATED: Schema = obj({"valid": BOOL, "config_data": STR, "checksum": STR})

ALERT: Schema = obj(
    {
        "id": STR,
        "name": STR,
        "node_id": STR,
        "node_name": STR,
        "severity": STR,
        "status": {"type": "string", "enum": ["active", "resolved"]},
        "message": STR,
        "value": nullable(NUM),
        "threshold": nullable(NUM),
        "started_at": TIME,
        "updated_at": TIME,
        "resolved_at": nullable(TIME),
    }
)
AUDIT_ENTRY: Schema = obj(
    {
        "id": STR,
        "actor": nullable(STR),
        "role": nullable(STR),
        "method": STR,
        "path": STR,
        "endpoint": nullable(STR),
        "target": nullable(STR),
        "status": INT,
        "ip": nullable(STR),
        "at": TIME,
    }
)
HEALTH: Schema = obj({"status": STR})
READY: Schema = obj({"status": STR, "store": STR, "leader": BOOL})
MEMBER: Schema = obj(
    {
        "id": STR,
        "host": STR,
        "pid": INT,
        "http_addr": STR,
        "started_at": TIME,
        "last_seen": TIME,
        "leader": BOOL,
    }
)
CLUSTER: Schema = obj(
    {
        "leader": nullable(STR),
        "lease_expires_at": nullable(TIME),
        "self": STR,
        "members": {"type": "array", "items": MEMBER},
    }
)

HOST_RESULT: Schema = obj(
    {
        "node_id": STR,
        "host": STR,
        "status": {"type": "string", "enum": ["ok", "failed", "unreachable"]},
        "ok": INT,
        "changed": INT,
        "failures": INT,
        "unreachable": INT,
        "skipped": INT,
        "rescued": INT,
        "ignored": INT,
    }
)
PHASE_RESULT: Schema = obj(
    {
        "playbook": STR,
        "status": STR,
        "rc": nullable(INT),
        "hosts": {"type": "array", "items": HOST_RESULT},
        "touched": {"type": "array", "items": STR},
        "error": nullable(STR),
        # node id -> the config version its host was given (deploy, reload)
        "config_versions": {"type": "object", "additionalProperties": INT},
    }
)
DEPLOYMENT: Schema = obj(
    {
        "id": STR,
        # deploy, rollback or reload; an external run's own playbook file (deploy.yml)
        "playbook": STR,
        "config_version": nullable(INT),
        "release": nullable(STR),
        "selector": obj(
            {
                "node_type": nullable(STR),
                "regions": {"type": "array", "items": STR},
                "nodes": {"type": "array", "items": STR},
                "tags": {"type": "array", "items": STR},
            }
        ),
        "serial": nullable(INT),
        "max_fail_percentage": nullable(INT),
        "check_mode": BOOL,
        "auto_rollback": BOOL,
        "targets": {"type": "array", "items": obj({"id": STR, "name": STR})},
        "status": {
            "type": "string",
            "enum": [
                "queued",
                "running",
                "successful",
                "failed",
                "canceled",
                "rolled_back",
                "interrupted",
            ],
        },
        "created_by": STR,
        "created_at": TIME,
        "updated_at": TIME,
        "owner": nullable(STR),
        "started_at": nullable(TIME),
        "finished_at": nullable(TIME),
        "cancel_requested": BOOL,
        "canceled_by": nullable(STR),
        "error": nullable(STR),
        "result": nullable(PHASE_RESULT),
        "rollback": nullable(PHASE_RESULT),
        "external": BOOL,
    }
)

SCALE_DECISION: Schema = obj(
    {
        "id": STR,
        "node_type": STR,
        "region": STR,
        "action": {"type": "string", "enum": ["scale_up", "scale_down"]},
        "node_id": STR,
        "node_name": STR,
        "reason": STR,
        "status": {
            "type": "string",
            "enum": ["deploying", "active", "failed", "draining", "standby"],
        },
        "active_before": INT,
        "load": NUM,
        "deployment_id": nullable(STR),
        "versions": {"type": "array", "items": INT},
        "at": TIME,
        "updated_at": TIME,
    }
)
AUTOSCALE: Schema = obj(
    {
        "enabled": BOOL,
        "groups": {
            "type": "array",
            "items": obj(
                {
                    "node_type": STR,
                    "region": STR,
                    "active": INT,
                    "standby": INT,
                    "draining": INT,
                    "min_active": INT,
                    "max_active": INT,
                    "connections_per_node": NUM,
                }
            ),
        },
        "decisions": {"type": "array", "items": SCALE_DECISION},
    }
)
