"""``/deployments``: run the playbooks (deploy, rollback, reload) on selected nodes through the
leader's ansible-runner worker, follow their events live, cancel them.

Overlapping deployments are refused with 409 (see :mod:`master_api.services.deployments`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g, request

from master_api.api import shapes
from master_api.api.common import (
    NAME_PATTERN,
    REGION_PATTERN,
    TAG_PATTERN,
    limit_field,
    offset_field,
)
from master_api.api.event_stream import event_stream
from master_api.api.routing import Reply, api_route, current_identity
from master_api.api.schema import Field, Schema
from master_api.deployment_models import (
    DEPLOYMENT_STATUSES,
    PLAYBOOKS,
    DeploymentRequest,
    Selector,
)
from master_api.errors import BadRequest
from master_api.extensions import repos, services, settings
from master_api.models import NODE_TYPES
from master_api.services.external_runs import ExternalEvent, ExternalRun

__all__ = ["bp"]

bp = Blueprint("deployments", __name__)

#: A release is a directory name on the hosts (/opt/aicdn/releases/<release>).
RELEASE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"

SELECTOR_IN = Schema(
    "DeploymentSelector",
    [
        Field("node_type", "string", "only nodes of this type", enum=NODE_TYPES),
        Field(
            "regions",
            "array",
            "only nodes in these regions",
            items=Field("region", "string", pattern=REGION_PATTERN, max_length=32),
            max_items=64,
            unique_items=True,
        ),
        Field(
            "nodes",
            "array",
            "only these nodes (ids or names; taken even when offline or draining)",
            items=Field("node", "string", pattern=NAME_PATTERN, max_length=63),
            max_items=1000,
            unique_items=True,
        ),
        Field(
            "tags",
            "array",
            "only nodes carrying all these tags",
            items=Field("tag", "string", pattern=TAG_PATTERN, max_length=63),
            max_items=32,
            unique_items=True,
        ),
    ],
    Selector,
    description="Every given criterion must hold; empty: every online, degraded or standby node",
)

DEPLOYMENT_IN = Schema(
    "DeploymentCreate",
    [
        Field(
            "playbook",
            "string",
            "deploy (rolling release), rollback (previous or named release), reload (config)",
            required=True,
            enum=PLAYBOOKS,
        ),
        Field("config_version", "integer", "config version to install", minimum=1),
        Field(
            "release",
            "string",
            "relay release to deploy (rollback: to return to)",
            pattern=RELEASE_PATTERN,
            max_length=64,
        ),
        Field("selector", "object", "which nodes", nested=SELECTOR_IN),
        Field("serial", "integer", "hosts per batch", minimum=1, maximum=10_000),
        Field(
            "max_fail_percentage",
            "integer",
            "failed hosts per batch (%) that stop the rollout",
            minimum=0,
            maximum=100,
        ),
        Field("check_mode", "boolean", "dry run (--check --diff): nothing changes"),
        Field(
            "auto_rollback",
            "boolean",
            "deploy only: if it fails, run rollback on the hosts it touched",
        ),
    ],
    DeploymentRequest,
)


@dataclass(frozen=True, slots=True)
class DeploymentQuery:
    status: str | None = None
    playbook: str | None = None
    limit: int = 50
    offset: int = 0


DEPLOYMENT_QUERY = Schema(
    "DeploymentQuery",
    [
        Field("status", "string", enum=DEPLOYMENT_STATUSES),
        Field("playbook", "string", enum=PLAYBOOKS),
        limit_field(),
        offset_field(),
    ],
    DeploymentQuery,
)


@dataclass(frozen=True, slots=True)
class EventsQuery:
    since: int = 0
    follow: bool = True


EVENTS_QUERY = Schema(
    "DeploymentEventsQuery",
    [
        Field(
            "since",
            "integer",
            "replay the events after this counter (Last-Event-ID wins)",
            minimum=0,
        ),
        Field(
            "follow",
            "boolean",
            "true (default): stream until the deployment ends; false: what is stored now",
        ),
    ],
    EventsQuery,
)

_NOT_FOUND = Reply(404, "No such deployment", shapes.ERROR)

EXTERNAL_IN = Schema(
    "ExternalRunCreate",
    [
        Field(
            "playbook",
            "string",
            "the playbook's file name (deploy.yml)",
            required=True,
            pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$",
        ),
        Field("source", "string", "what runs it (default ansible-playbook)", max_length=64),
    ],
    ExternalRun,
)

EXTERNAL_EVENT_IN = Schema(
    "ExternalEvent",
    [
        Field("event", "string", "Ansible's event name", required=True,
              pattern=r"^[a-z][a-z0-9_]{0,63}$"),
        Field("counter", "integer", "the run's own event number (1, 2, ...)", required=True,
              minimum=1, maximum=10_000_000),
        Field("host", "string", "the host of a result", max_length=255),
        Field("task", "string", "the task's name", max_length=1024),
        Field("data", "object", "the rest of the event (status, changed, msg, rc, stats...)"),
    ],
    ExternalEvent,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventBatch:
    events: tuple[ExternalEvent, ...]


EVENT_BATCH_IN = Schema(
    "ExternalEventBatch",
    [
        Field(
            "events",
            "array",
            "events in the run's order",
            required=True,
            items=Field("event", "object", nested=EXTERNAL_EVENT_IN),
            max_items=500,
        )
    ],
    EventBatch,
)


@api_route(
    bp,
    "/deployments",
    "POST",
    summary="Queue a playbook run on the selected nodes (the leader runs it)",
    access="operator",
    body=DEPLOYMENT_IN,
    replies=[
        Reply(201, "Queued", shapes.DEPLOYMENT),
        Reply(409, "A target node is under another queued or running deployment", shapes.ERROR),
    ],
)
def create_deployment(body: DeploymentRequest) -> Any:
    deployment = services().deployments.create(body, current_identity().name)
    g.aicdn_target = deployment.id
    return deployment.to_json(), 201


@api_route(
    bp,
    "/deployments",
    "GET",
    summary="Deployments, newest first",
    access="viewer",
    query=DEPLOYMENT_QUERY,
    replies=[Reply(200, "Deployments", shapes.list_of(shapes.DEPLOYMENT, total=True))],
)
def list_deployments(query: DeploymentQuery) -> Any:
    items = repos().deployments.find(
        status=query.status, playbook=query.playbook, limit=query.limit, offset=query.offset
    )
    total = repos().deployments.count(status=query.status, playbook=query.playbook)
    return {"items": [d.to_json() for d in items], "count": len(items), "total": total}


@api_route(
    bp,
    "/deployments/<deployment_id>",
    "GET",
    summary="A deployment: status, per-host results, rollback",
    access="viewer",
    replies=[Reply(200, "The deployment", shapes.DEPLOYMENT), _NOT_FOUND],
)
def get_deployment(deployment_id: str) -> Any:
    return services().deployments.get(deployment_id).to_json()


@api_route(
    bp,
    "/deployments/<deployment_id>/events",
    "GET",
    summary="The deployment's events as Server-Sent Events, live until it ends",
    access="viewer",
    query=EVENTS_QUERY,
    replies=[
        Reply(
            200,
            "text/event-stream: one message per event (id = its counter, event = its name, "
            "data = the event as JSON), then an `end` message with the final status",
            {"type": "string"},
            media_type="text/event-stream",
        ),
        _NOT_FOUND,
    ],
)
def deployment_events(deployment_id: str, query: EventsQuery) -> Any:
    service = services().deployments
    service.get(deployment_id)  # 404 before the stream starts
    after = query.since
    last_id = request.headers.get("Last-Event-ID")
    if last_id is not None:
        if not last_id.strip().isdigit() or len(last_id.strip()) > 18:
            raise BadRequest(
                "header Last-Event-ID: expected an event counter",
                extra={"field": "header.Last-Event-ID"},
            )
        after = int(last_id.strip())
    stream = event_stream(service, deployment_id, after, query.follow, settings().deploy_stream_max)
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


@api_route(
    bp,
    "/deployments/<deployment_id>/cancel",
    "POST",
    summary="Cancel: a queued deployment at once, a running one within about a second",
    access="operator",
    replies=[
        Reply(200, "Canceled before it ran", shapes.DEPLOYMENT),
        Reply(202, "Cancel requested; the run stops shortly", shapes.DEPLOYMENT),
        _NOT_FOUND,
        Reply(409, "The deployment has already ended", shapes.ERROR),
    ],
)
def cancel_deployment(deployment_id: str) -> Any:
    deployment = services().deployments.cancel(deployment_id, current_identity().name)
    return deployment.to_json(), 200 if deployment.status == "canceled" else 202


@api_route(
    bp,
    "/deployments/external",
    "POST",
    summary="Register a plain ansible-playbook run reporting itself (the aicdn_events callback)",
    access="operator",
    body=EXTERNAL_IN,
    replies=[Reply(201, "Registered, running", shapes.DEPLOYMENT)],
)
def register_external_run(body: ExternalRun) -> Any:
    deployment = services().external_runs.register(body, current_identity().name)
    g.aicdn_target = deployment.id
    return deployment.to_json(), 201


@api_route(
    bp,
    "/deployments/<deployment_id>/events",
    "POST",
    summary="Events of an external run, in batches; its playbook_on_stats event ends it",
    access="operator",
    body=EVENT_BATCH_IN,
    replies=[
        Reply(202, "Stored (a batch sent again is stored once)", shapes.DEPLOYMENT),
        _NOT_FOUND,
        Reply(409, "Not an external run, or it has ended", shapes.ERROR),
    ],
)
def report_external_events(deployment_id: str, body: EventBatch) -> Any:
    deployment = services().external_runs.report(deployment_id, body.events)
    return deployment.to_json(), 202
