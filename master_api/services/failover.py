"""Health failover: the leader takes unhealthy nodes out of their peers' chains and puts them
back once they have been healthy for a while (issue 11; seed ``health/failover.go``).

Each pass (:meth:`FailoverController.run_once`, a leader job after the monitor) judges every
node of ``Settings.failover_node_types`` (cores: what edges chain to) from what the monitor
and the heartbeats left on it:

==============  ===========================================================================
health          when
==============  ===========================================================================
``offline``     the monitor marked it offline (``offline_after_missed`` heartbeats missed)
``degraded``    the monitor marked it degraded (a metric alert: error rate, p99 latency ...)
``healthy``     online, and its reported error rate and p99 latency are below
                ``failover_recover_ratio`` of their alert thresholds (hysteresis: a node
                hovering at a threshold does not count as recovered)
``recovering``  anything between: neither taken out nor counted towards the hold-down
==============  ===========================================================================

and moves its failover state (:class:`~master_api.models.FailoverState`, kept on the node):

* ``offline`` -> ``out`` at once: peers stop chaining to it;
* ``degraded`` -> ``backup`` (from ``in``): peers list it after every healthy node, so it only
  carries traffic when they all fail; not sooner than ``failover_min_interval`` after its last
  change;
* back to ``in`` once it has been ``healthy`` for ``failover_hold_down`` without a break, and
  ``failover_min_interval`` after its last change. A break (any other health) restarts the
  hold-down.

The renderer honours the state (``Node.render_status``), whatever the node's own status says
meanwhile. A change takes effect by publishing, for each active config version whose ``peers``
hops chain to the node's type, a new version with the same ``config_data``: the agents of the
affected nodes see a new desired version on their next heartbeat and fetch it, rendered with
the node out (or last, or back). Every change is recorded three ways: a ``config_history``
entry with action ``failover`` naming the version it produced, an ``audit_log`` entry (actor
``failover``), and a ``NodeFailover`` alert that stays active while the node is not ``in``.

Known limit: taking out the last healthy core leaves edges with nothing to chain to; their
render then fails (409 on PushConfig) and they keep the config they run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from master_api.errors import Conflict
from master_api.models import AuditEntry, FailoverState, Node
from master_api.repos import NodeFilter, Repos
from master_api.services.configs import ConfigService
from master_api.services.monitor import Notifier
from master_api.services.republish import republish_peers
from master_api.settings import Settings

__all__ = ["ACTOR", "FailoverChange", "FailoverController", "decide", "health_of"]

log = logging.getLogger(__name__)

#: Who the history, audit and config versions name as having made a failover change.
ACTOR = "failover"
ALERT = "NodeFailover"


@dataclass(frozen=True, slots=True)
class FailoverChange:
    """One node's state change in a pass."""

    node_id: str
    node_name: str
    from_state: str
    to_state: str
    reason: str
    versions: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "node_name": self.node_name,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "versions": list(self.versions),
        }


def health_of(node: Node, settings: Settings) -> tuple[str, str]:
    """(health, why): ``offline``, ``degraded``, ``healthy`` or ``recovering`` (module doc)."""
    if node.status == "offline":
        return "offline", "offline: no heartbeat"
    metrics = node.metrics
    if node.status == "degraded":
        return "degraded", "degraded: a metric alert is active"
    ratio = settings.failover_recover_ratio
    if metrics is not None:
        errors = metrics.error_rate
        if errors is not None and errors > ratio * settings.alert_error_rate:
            return "recovering", f"error rate {errors:g} not yet low enough"
        latency = metrics.p99_latency_ms
        if latency is not None and latency > ratio * settings.alert_p99_latency_ms:
            return "recovering", f"p99 latency {latency:g}ms not yet low enough"
    return "healthy", "healthy"


def decide(node: Node, settings: Settings, now: float) -> FailoverState | None:
    """The node's failover record after judging it at ``now``; None when nothing changes
    (not even the hold-down clock). Pure: no I/O."""
    if node.status not in ("online", "offline", "degraded") or node.last_seen is None:
        return None  # draining, standby, never heard from: not the failover's business
    current = node.failover or FailoverState("in", "", 0.0)
    health, why = health_of(node, settings)
    since_change = now - current.changed_at
    settled = since_change >= settings.failover_min_interval
    if health == "offline":
        if current.state == "out":
            return None if current.healthy_since is None else replace(current, healthy_since=None)
        return FailoverState("out", why, now)
    if health == "degraded":
        if current.state == "in":
            return FailoverState("backup", why, now) if settled else None
        return None if current.healthy_since is None else replace(current, healthy_since=None)
    if current.state == "in":
        return None
    if health == "recovering":
        return None if current.healthy_since is None else replace(current, healthy_since=None)
    healthy_since = current.healthy_since if current.healthy_since is not None else now
    if now - healthy_since >= settings.failover_hold_down and settled:
        held = now - healthy_since
        # healthy_since stays on the record: the proof of the hold-down (audit, tests).
        return FailoverState("in", f"healthy for {held:.0f}s", now, healthy_since)
    if current.healthy_since is None:
        return replace(current, healthy_since=healthy_since)
    return None


class FailoverController:
    """One failover pass per :meth:`run_once`; meant to run on the leader only."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        configs: ConfigService,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._configs = configs
        self._notifier = notifier
        self._clock = clock
        self._sleep = sleep

    def run_once(self, now: float | None = None) -> list[FailoverChange]:
        """Judge every watched node once; returns the state changes made (and published)."""
        if not self._settings.failover_enabled:
            return []
        now = self._clock() if now is None else now
        changes: list[tuple[Node, FailoverState]] = []
        for node in self._repos.nodes.find(NodeFilter()):
            if node.type not in self._settings.failover_node_types:
                continue
            record = decide(node, self._settings, now)
            if record is None:
                continue
            before = node.failover.state if node.failover else "in"
            if record.state != before:
                changes.append((node, record))
            self._repos.nodes.set_failover(node.id, record)
        if not changes:
            return []
        description = "failover: " + "; ".join(
            f"{node.name} {record.state} ({record.reason})" for node, record in changes
        )
        # Published only once every agent's inventory snapshot has seen the states written
        # above (``republish_peers``), so no render of the new version has the node as it was.
        versions = republish_peers(
            self._configs,
            {node.type for node, _ in changes},
            description,
            ACTOR,
            settle=self._settings.agent_snapshot_ttl,
            sleep=self._sleep,
        )
        done: list[FailoverChange] = []
        for node, record in changes:
            before = node.failover.state if node.failover else "in"
            record = replace(record, versions=versions)
            self._repos.nodes.set_failover(node.id, record)
            change = FailoverChange(
                node.id, node.name, before, record.state, record.reason, versions
            )
            self._record(node, change, now)
            done.append(change)
        return done

    def _record(self, node: Node, change: FailoverChange, now: float) -> None:
        versions = ", ".join(str(v) for v in change.versions) or "none"
        message = (
            f"node {node.name} {change.from_state} -> {change.to_state}: {change.reason}; "
            f"config versions {versions}"
        )
        log.warning("failover: %s", message)
        self._repos.audit_log.record(
            AuditEntry(
                actor=ACTOR,
                role=None,
                method="FAILOVER",
                path=f"/api/v1/nodes/{node.id}",
                endpoint=f"failover.{change.to_state}",
                status=200,
                ip=None,
                at=now,
                target=message[:500],
            )
        )
        active = self._repos.alerts.get_active(ALERT, node.id)
        if change.to_state == "in":
            resolved = active is not None and self._repos.alerts.resolve(active, now)
            if resolved and active is not None and self._notifier is not None:
                self._notifier.notify(
                    "resolved",
                    replace(active, status="resolved", resolved_at=now, updated_at=now),
                )
            return
        if active is not None:
            self._repos.alerts.touch(active.id, None, message, now)
            return
        severity = "critical" if change.to_state == "out" else "warning"
        try:
            alert = self._repos.alerts.fire(
                ALERT, node.id, node.name, severity, message, None, None, now
            )
        except Conflict:
            return
        if self._notifier is not None:
            self._notifier.notify("fired", alert)


def changes_json(changes: Sequence[FailoverChange]) -> list[dict[str, object]]:
    return [change.to_json() for change in changes]
