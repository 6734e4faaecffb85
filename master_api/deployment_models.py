"""Records of the deployments plane (STYLE T2): what was asked, what ran, what each host did.

A deployment runs one playbook (``deploy``, ``rollback`` or ``reload``) on the nodes its
selector chose when it was created. Its lifecycle::

    queued --claim--> running --> successful | failed | canceled | rolled_back | interrupted
       \\--cancel--> canceled

``rolled_back``: a ``deploy`` with ``auto_rollback`` failed and ``rollback`` then succeeded on
the hosts it had touched. ``interrupted``: the master running it died (or shut down) mid-run;
the next leader marks it so it is never left ``running``.

An *external* deployment is a plain ``ansible-playbook`` run reporting itself through the
``aicdn_events`` callback: it starts ``running``, its events are posted by the run, and its
``playbook_on_stats`` event ends it (``successful`` or ``failed``); one that stops reporting
for ``deploy_idle_timeout`` is marked ``interrupted``.

Times are epoch seconds (``shared/mongo.md`` rule 4); ISO strings are derived for display.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from master_api.models import Node, iso

__all__ = [
    "ACTIVE_STATUSES",
    "DEPLOYMENT_STATUSES",
    "PLAYBOOKS",
    "TERMINAL_STATUSES",
    "Deployment",
    "DeploymentEvent",
    "DeploymentRequest",
    "HostResult",
    "PhaseResult",
    "Selector",
]

PLAYBOOKS: Final = ("deploy", "rollback", "reload")
DEPLOYMENT_STATUSES: Final = (
    "queued",
    "running",
    "successful",
    "failed",
    "canceled",
    "rolled_back",
    "interrupted",
)
#: A deployment in one of these holds the locks of its target nodes (no overlap).
ACTIVE_STATUSES: Final = ("queued", "running")
TERMINAL_STATUSES: Final = tuple(s for s in DEPLOYMENT_STATUSES if s not in ACTIVE_STATUSES)
#: Node statuses skipped unless the node is named explicitly in the selector.
SKIPPED_NODE_STATUSES: Final = ("offline", "draining")


@dataclass(frozen=True, slots=True)
class Selector:
    """Which nodes a deployment targets. Every given criterion must hold (AND); an empty
    selector means the whole fleet. Nodes named in ``nodes`` (by id or name) are taken whatever
    their status; otherwise offline and draining nodes are left out."""

    node_type: str | None = None
    regions: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def matches(self, node: Node) -> bool:
        """True when ``node`` is one this selector targets."""
        if self.node_type is not None and node.type != self.node_type:
            return False
        if self.regions and node.region not in self.regions:
            return False
        if self.tags and not set(self.tags) <= set(node.tags):
            return False
        if self.nodes:
            return node.id in self.nodes or node.name in self.nodes
        return node.status not in SKIPPED_NODE_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {
            "node_type": self.node_type,
            "regions": list(self.regions),
            "nodes": list(self.nodes),
            "tags": list(self.tags),
        }


@dataclass(frozen=True, slots=True)
class DeploymentRequest:
    """``POST /deployments``, validated. None: the playbook's own default applies."""

    playbook: str = "deploy"
    config_version: int | None = None
    release: str | None = None
    selector: Selector = field(default_factory=Selector)
    serial: int | None = None
    max_fail_percentage: int | None = None
    check_mode: bool = False
    auto_rollback: bool = False


@dataclass(frozen=True, slots=True)
class HostResult:
    """One host's counters from the run's ``playbook_on_stats`` (ansible's recap)."""

    node_id: str
    host: str
    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def status(self) -> str:
        """``failed``, ``unreachable`` or ``ok``."""
        if self.failures:
            return "failed"
        if self.unreachable:
            return "unreachable"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "host": self.host,
            "status": self.status,
            "ok": self.ok,
            "changed": self.changed,
            "failures": self.failures,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "rescued": self.rescued,
            "ignored": self.ignored,
        }


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """How one playbook run ended: the runner's status (``successful``, ``failed``,
    ``canceled``, ``timeout``; ``error`` when it could not start), its exit code, the hosts'
    counters, and the hosts a task ran on (``touched``: what a rollback has to undo)."""

    playbook: str
    status: str
    rc: int | None
    hosts: tuple[HostResult, ...] = ()
    touched: tuple[str, ...] = ()
    error: str | None = None
    #: node id -> the config version its host was given (deploy and reload).
    config_versions: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "status": self.status,
            "rc": self.rc,
            "hosts": [h.to_json() for h in self.hosts],
            "touched": list(self.touched),
            "error": self.error,
            "config_versions": dict(self.config_versions),
        }


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    playbook: str
    selector: Selector
    target_ids: tuple[str, ...]
    target_names: tuple[str, ...]
    status: str
    created_by: str
    created_at: float
    updated_at: float
    config_version: int | None = None
    release: str | None = None
    serial: int | None = None
    max_fail_percentage: int | None = None
    check_mode: bool = False
    auto_rollback: bool = False
    owner: str | None = None
    """Member id (``election_members``) of the master that claimed it."""
    claimed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    canceled_by: str | None = None
    error: str | None = None
    result: PhaseResult | None = None
    rollback: PhaseResult | None = None
    external: bool = False
    """A plain ``ansible-playbook`` run that reports itself (the ``aicdn_events`` callback):
    created ``running``, never claimed by a master; its events and end come from the run."""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def to_json(self) -> dict[str, Any]:
        """Public view: the request, the lifecycle, and per-host results."""
        return {
            "id": self.id,
            "playbook": self.playbook,
            "config_version": self.config_version,
            "release": self.release,
            "selector": self.selector.to_json(),
            "serial": self.serial,
            "max_fail_percentage": self.max_fail_percentage,
            "check_mode": self.check_mode,
            "auto_rollback": self.auto_rollback,
            "targets": [
                {"id": node_id, "name": name}
                for node_id, name in zip(self.target_ids, self.target_names, strict=True)
            ],
            "status": self.status,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "owner": self.owner,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "cancel_requested": self.cancel_requested,
            "canceled_by": self.canceled_by,
            "error": self.error,
            "result": self.result.to_json() if self.result else None,
            "rollback": self.rollback.to_json() if self.rollback else None,
            "external": self.external,
        }


@dataclass(frozen=True, slots=True)
class DeploymentEvent:
    """One event of a deployment, stored as its own document (``shared/mongo.md`` rule 3).

    ``counter`` increases by one per event of the deployment, across its playbook runs (a
    rollback's events follow the deploy's): it is the SSE event id and the replay cursor.
    ``event`` is ansible-runner's event name (``runner_on_ok``...) or one of the master's own
    (``deployment_started``, ``runner_status``, ``rollback_started``, ``deployment_finished``).
    """

    deployment_id: str
    counter: int
    event: str
    playbook: str
    created: float
    host: str | None = None
    task: str | None = None
    stdout: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment_id": self.deployment_id,
            "counter": self.counter,
            "event": self.event,
            "playbook": self.playbook,
            "created": iso(self.created),
            "host": self.host,
            "task": self.task,
            "stdout": self.stdout,
            "data": dict(self.data),
        }
