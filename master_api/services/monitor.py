"""The leader's periodic checks: node liveness and alerts from reported metrics.

Default thresholds (seed §8.2, settable in ``Settings``):

========================  =====================================================  ========
alert                     fires when                                             severity
========================  =====================================================  ========
``NodeOffline``           no heartbeat for ``heartbeat_interval`` x              critical
                          ``offline_after_missed`` (10 s x 3)
``HighLatency``           reported p99 latency > ``alert_p99_latency_ms`` (100)  warning
``HighErrorRate``         reported error ratio > ``alert_error_rate`` (1%)       critical
``ConnectionExhaustion``  connections > ``alert_connection_ratio`` (90%) of the  warning
                          node's ``max_connections``
========================  =====================================================  ========

An alert resolves when its condition no longer holds (a node heartbeats again; a metric falls
back under its threshold). A node with an active metric alert is ``degraded``; it returns to
``online`` when none is left. Nodes that never sent a heartbeat are not judged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from master_api.errors import Conflict
from master_api.models import Alert, Node, NodeMetrics
from master_api.repos import Repos
from master_api.settings import Settings

__all__ = ["Monitor", "MonitorReport", "Notifier"]

log = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self, event: str, alert: Alert) -> None: ...


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    severity: str
    value: Callable[[NodeMetrics], float | None]
    threshold: Callable[[Settings], float]
    unit: str


def _connection_ratio(metrics: NodeMetrics) -> float | None:
    if metrics.connections is None or not metrics.max_connections:
        return None
    return metrics.connections / metrics.max_connections


RULES: tuple[_Rule, ...] = (
    _Rule(
        "HighLatency",
        "warning",
        lambda m: m.p99_latency_ms,
        lambda s: s.alert_p99_latency_ms,
        "ms p99 latency",
    ),
    _Rule(
        "HighErrorRate",
        "critical",
        lambda m: m.error_rate,
        lambda s: s.alert_error_rate,
        "error ratio",
    ),
    _Rule(
        "ConnectionExhaustion",
        "warning",
        _connection_ratio,
        lambda s: s.alert_connection_ratio,
        "of the connection limit in use",
    ),
)


#: Alerts this module resolves on its own; others (``NodeFailover``) belong to their raisers.
_RULE_NAMES = frozenset(rule.name for rule in RULES)


@dataclass(frozen=True, slots=True)
class MonitorReport:
    """What one pass changed."""

    went_offline: tuple[str, ...] = ()
    fired: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()


class Monitor:
    """One pass of the checks per :meth:`run_once`; meant to run on the leader only."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._notifier = notifier
        self._clock = clock

    def run_once(self, now: float | None = None) -> MonitorReport:
        """Run every check once at time ``now`` (default: the clock)."""
        now = self._clock() if now is None else now
        fired: list[str] = []
        resolved: list[str] = []
        offline = self._liveness(now, fired)
        self._metric_alerts(now, fired, resolved)
        self._resolve_stale(now, resolved)
        return MonitorReport(tuple(offline), tuple(fired), tuple(resolved))

    def _liveness(self, now: float, fired: list[str]) -> list[str]:
        cutoff = now - self._settings.offline_after
        went: list[str] = []
        for node in self._repos.nodes.stale(cutoff):
            if not self._repos.nodes.set_status(node.id, "offline", ("online", "degraded")):
                continue  # a heartbeat or another change got there first
            went.append(node.id)
            silent = now - (node.last_seen or now)
            self._fire(
                node,
                "NodeOffline",
                "critical",
                f"node {node.name} sent no heartbeat for {silent:.0f}s",
                silent,
                self._settings.offline_after,
                now,
                fired,
            )
        return went

    def _metric_alerts(self, now: float, fired: list[str], resolved: list[str]) -> None:
        for node in self._repos.nodes.reporting():
            metrics = node.metrics or NodeMetrics()
            firing = False
            for rule in RULES:
                value = rule.value(metrics)
                threshold = rule.threshold(self._settings)
                active = self._repos.alerts.get_active(rule.name, node.id)
                if value is not None and value > threshold:
                    firing = True
                    message = f"node {node.name}: {value:g} {rule.unit} > {threshold:g}"
                    if active is None:
                        self._fire(
                            node, rule.name, rule.severity, message, value, threshold, now, fired
                        )
                    else:
                        self._repos.alerts.touch(active.id, value, message, now)
                elif active is not None:
                    self._resolve(active, now, resolved)
            if firing:
                self._repos.nodes.set_status(node.id, "degraded", ("online",))
            else:
                self._repos.nodes.set_status(node.id, "online", ("degraded",))

    def _resolve_stale(self, now: float, resolved: list[str]) -> None:
        """Resolve alerts whose node came back, went away, or stopped reporting."""
        for alert in self._repos.alerts.active():
            node = self._repos.nodes.get(alert.node_id)
            if node is None:
                self._resolve(alert, now, resolved)
            elif alert.name == "NodeOffline":
                if node.status != "offline":
                    self._resolve(alert, now, resolved)
            elif alert.name in _RULE_NAMES and node.status not in ("online", "degraded"):
                self._resolve(alert, now, resolved)

    def _fire(
        self,
        node: Node,
        name: str,
        severity: str,
        message: str,
        value: float | None,
        threshold: float | None,
        now: float,
        fired: list[str],
    ) -> None:
        try:
            alert = self._repos.alerts.fire(
                name, node.id, node.name, severity, message, value, threshold, now
            )
        except Conflict:
            return  # already active (another pass or a former leader opened it)
        fired.append(f"{name}/{node.id}")
        log.warning("alert %s fired: %s", name, message)
        if self._notifier is not None:
            self._notifier.notify("fired", alert)

    def _resolve(self, alert: Alert, now: float, resolved: list[str]) -> None:
        if not self._repos.alerts.resolve(alert, now):
            return
        resolved.append(f"{alert.name}/{alert.node_id}")
        log.info("alert %s resolved for node %s", alert.name, alert.node_name)
        if self._notifier is not None:
            self._notifier.notify(
                "resolved", replace(alert, status="resolved", resolved_at=now, updated_at=now)
            )
