"""Autoscale from standby nodes (issue 11; seed ``health/autoscale.go``): the leader activates
``standby`` nodes when load per active node stays high and drains active ones back to standby
when it stays low.

Each pass (:meth:`Autoscaler.run_once`, a leader job) works per *group*: the nodes of one type
and region. Active nodes are the ``online`` and ``degraded`` ones; their load is what their
agents report in heartbeats: open ``connections`` and, from successive ``requests_total``
counters, requests per second. The pass

1. follows up open decisions: an activation whose deployment succeeded (it passed the deploy
   playbook's health gate) puts its node ``online`` and republishes its peers' configs (edges
   then chain to a new core); one whose deployment failed leaves the node ``standby``. A
   draining node whose reported connections reached zero (two heartbeat intervals after the
   decision at the earliest), or whose ``autoscale_drain_time`` ran out, goes back to
   ``standby``;
2. samples each group's mean load per active node, keeping ``autoscale_window`` of samples;
3. decides, for a group with no open decision and out of its ``autoscale_cooldown``:

   * **scale up** (activate the first standby node by name, through a ``deploy`` deployment of
     the deployments machinery with its health gate and automatic rollback) when every sample
     of a full window is above ``autoscale_up_connections`` (or ``autoscale_up_rps``), and the
     group is below its maximum; or at once when the group is below its minimum;
   * **scale down** (drain the least loaded active node: status ``draining``, peers
     republished without it, then ``standby`` once drained) when every sample of a full window
     is below ``autoscale_down_connections`` (and ``autoscale_down_rps`` when set), and the
     group is above its minimum.

Every decision is a document in ``autoscale_decisions`` with its reason, the load that drove
it and its progress (``GET /api/v1/autoscale``; ``aicdn_master_autoscale_*`` metrics). Samples
live in the leader's memory: a new leader watches a full window before deciding.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from master_api.deployment_models import DeploymentRequest, Selector
from master_api.errors import ApiError
from master_api.models import Node, ScaleDecision
from master_api.repos import NodeFilter, Repos
from master_api.services.configs import ConfigService
from master_api.services.deployments import DeploymentService
from master_api.services.republish import republish_peers
from master_api.settings import Settings

__all__ = ["ACTOR", "Autoscaler", "Bounds", "GroupState", "bounds_for"]

log = logging.getLogger(__name__)

ACTOR = "autoscale"
_ACTIVE = ("online", "degraded")
_FAILED_DEPLOYMENTS = ("failed", "canceled", "rolled_back", "interrupted")
_BOUND_RE = re.compile(r"(edge|core)(?::([A-Za-z0-9_.-]+))?=(\d+)-(\d+)")


@dataclass(frozen=True, slots=True)
class Bounds:
    minimum: int = 1
    maximum: int = 1000


def bounds_for(settings: Settings, node_type: str, region: str) -> Bounds:
    """The bounds of a group: a ``type:region`` entry, else a ``type`` one, else 1-1000."""
    general: Bounds | None = None
    for item in settings.autoscale_bounds:
        match = _BOUND_RE.fullmatch(item)
        if match is None or match.group(1) != node_type:
            continue
        bounds = Bounds(int(match.group(3)), int(match.group(4)))
        if match.group(2) == region:
            return bounds
        if match.group(2) is None:
            general = bounds
    return general or Bounds()


@dataclass(slots=True)
class GroupState:
    """What the leader knows of one group (type, region) right now."""

    node_type: str
    region: str
    active: int = 0
    standby: int = 0
    connections: float = 0.0
    """Mean open connections per active node, last sample."""
    rps: float = 0.0
    """Mean requests per second per active node, last sample."""
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(time, connections, rps) of the last window."""
    since: float | None = None
    """Since when the group has been sampled without a break (None: not now)."""
    last_reason: str = ""
    """Why the last pass decided what it did (or nothing)."""

    def to_json(self, settings: Settings) -> dict[str, object]:
        bounds = bounds_for(settings, self.node_type, self.region)
        return {
            "node_type": self.node_type,
            "region": self.region,
            "active": self.active,
            "standby": self.standby,
            "min_active": bounds.minimum,
            "max_active": bounds.maximum,
            "connections_per_node": round(self.connections, 3),
            "rps_per_node": round(self.rps, 3),
            "window_samples": len(self.samples),
            "reason": self.last_reason,
        }


class Autoscaler:
    """One autoscale pass per :meth:`run_once`; meant to run on the leader only."""

    def __init__(
        self,
        repos: Repos,
        settings: Settings,
        configs: ConfigService,
        deployments: DeploymentService,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._configs = configs
        self._deployments = deployments
        self._clock = clock
        self._sleep = sleep
        self.groups: dict[tuple[str, str], GroupState] = {}
        self._counters: dict[str, tuple[float, int]] = {}  # node id -> (time, requests_total)

    def run_once(self, now: float | None = None) -> list[ScaleDecision]:
        """Follow up, sample, decide; returns the decisions made in this pass."""
        if not self._settings.autoscale_enabled:
            return []
        now = self._clock() if now is None else now
        self._follow_up(now)
        nodes = self._repos.nodes.find(NodeFilter())
        open_groups = {(d.node_type, d.region) for d in self._repos.autoscale_decisions.open()}
        made: list[ScaleDecision] = []
        for key, members in _groups(nodes).items():
            state = self._sample(key, members, now)
            if key in open_groups:
                state.last_reason = "a decision is in progress"
                continue
            decision = self._decide(state, members, now)
            if decision is not None:
                made.append(decision)
                state.samples.clear()  # the next decision needs a fresh window
                state.since = None
        return made

    # --- sampling ------------------------------------------------------------------------------

    def _sample(self, key: tuple[str, str], members: list[Node], now: float) -> GroupState:
        state = self.groups.setdefault(key, GroupState(*key))
        active = [n for n in members if n.status in _ACTIVE]
        state.active = len(active)
        state.standby = sum(1 for n in members if n.status == "standby")
        connections = 0.0
        rps = 0.0
        for node in active:
            metrics = node.metrics
            if metrics is None:
                continue
            connections += metrics.connections or 0
            rps += self._rate(node, now)
        state.connections = connections / len(active) if active else 0.0
        state.rps = rps / len(active) if active else 0.0
        if active:
            state.samples.append((now, state.connections, state.rps))
            if state.since is None:
                state.since = now
        else:
            state.samples.clear()
            state.since = None
        while state.samples and state.samples[0][0] < now - self._settings.autoscale_window:
            state.samples.popleft()
        return state

    def _rate(self, node: Node, now: float) -> float:
        total = node.metrics.requests_total if node.metrics else None
        if total is None:
            return 0.0
        previous = self._counters.get(node.id)
        self._counters[node.id] = (now, total)
        if previous is None or now <= previous[0] or total < previous[1]:
            return 0.0  # first sample, or the relay restarted (counter reset)
        return (total - previous[1]) / (now - previous[0])

    # --- deciding ------------------------------------------------------------------------------

    def _window_full(self, state: GroupState, now: float) -> bool:
        """True once the group has been watched for a whole window (the samples kept are the
        window's)."""
        return (
            bool(state.samples)
            and state.since is not None
            and state.since <= now - self._settings.autoscale_window
        )

    def _decide(self, state: GroupState, members: list[Node], now: float) -> ScaleDecision | None:
        s = self._settings
        bounds = bounds_for(s, state.node_type, state.region)
        last = self._repos.autoscale_decisions.last(state.node_type, state.region)
        standby = sorted((n for n in members if n.status == "standby"), key=lambda n: n.name)
        if state.active < bounds.minimum and standby:
            reason = f"{state.active} active {state.node_type} node(s) < minimum {bounds.minimum}"
            return self._scale_up(state, standby[0], reason, now)
        if last is not None and now - last.at < s.autoscale_cooldown:
            state.last_reason = f"cooldown until {last.at + s.autoscale_cooldown - now:.0f}s"
            return None
        if not self._window_full(state, now):
            state.last_reason = "watching a full window"
            return None
        window = f"for {s.autoscale_window:g}s"
        high = [
            reason
            for limit, index, unit in (
                (s.autoscale_up_connections, 1, "connections"),
                (s.autoscale_up_rps, 2, "requests/s"),
            )
            if limit > 0 and all(sample[index] > limit for sample in state.samples)
            for reason in [f"> {limit:g} {unit} per active node {window}"]
        ]
        if high:
            if state.active >= bounds.maximum:
                state.last_reason = f"load high, but {state.active} active = maximum"
                return None
            if not standby:
                state.last_reason = "load high, but no standby node left"
                return None
            return self._scale_up(state, standby[0], "; ".join(high), now)
        low_connections = all(sample[1] < s.autoscale_down_connections for sample in state.samples)
        low_rps = s.autoscale_down_rps <= 0 or all(
            sample[2] < s.autoscale_down_rps for sample in state.samples
        )
        if low_connections and low_rps:
            if state.active <= bounds.minimum:
                state.last_reason = f"load low, but {state.active} active = minimum"
                return None
            active = [n for n in members if n.status in _ACTIVE]
            # The least loaded goes; among equals the last by name (the first activated stay).
            victim = min(
                active,
                key=lambda n: ((n.metrics.connections or 0) if n.metrics else 0, _desc(n.name)),
            )
            reason = f"< {s.autoscale_down_connections:g} connections per active node {window}" + (
                f" and < {s.autoscale_down_rps:g} requests/s" if s.autoscale_down_rps else ""
            )
            return self._scale_down(state, victim, reason, now)
        state.last_reason = "load within bounds"
        return None

    def _scale_up(
        self, state: GroupState, node: Node, reason: str, now: float
    ) -> ScaleDecision | None:
        try:
            deployment = self._deployments.create(
                DeploymentRequest(
                    playbook="deploy",
                    release=self._settings.autoscale_release,
                    selector=Selector(nodes=(node.id,)),
                    auto_rollback=True,
                ),
                ACTOR,
            )
        except ApiError as exc:
            state.last_reason = f"could not deploy {node.name}: {exc.message}"
            log.error("autoscale: %s", state.last_reason)
            return None
        decision = self._repos.autoscale_decisions.record(
            ScaleDecision(
                id="",
                node_type=state.node_type,
                region=state.region,
                action="scale_up",
                node_id=node.id,
                node_name=node.name,
                reason=reason,
                status="deploying",
                active_before=state.active,
                load=state.connections,
                at=now,
                updated_at=now,
                deployment_id=deployment.id,
            )
        )
        state.last_reason = f"activating {node.name}: {reason}"
        log.warning("autoscale: %s (deployment %s)", state.last_reason, deployment.id)
        return decision

    def _scale_down(
        self, state: GroupState, node: Node, reason: str, now: float
    ) -> ScaleDecision | None:
        if not self._repos.nodes.set_status(node.id, "draining", _ACTIVE):
            return None  # it changed meanwhile; judge again next pass
        versions = self._republish(node.type, f"autoscale: {node.name} draining ({reason})")
        decision = self._repos.autoscale_decisions.record(
            ScaleDecision(
                id="",
                node_type=state.node_type,
                region=state.region,
                action="scale_down",
                node_id=node.id,
                node_name=node.name,
                reason=reason,
                status="draining",
                active_before=state.active,
                load=state.connections,
                at=now,
                updated_at=now,
                versions=versions,
            )
        )
        state.last_reason = f"draining {node.name}: {reason}"
        log.warning("autoscale: %s", state.last_reason)
        return decision

    # --- following up --------------------------------------------------------------------------

    def _follow_up(self, now: float) -> None:
        for decision in self._repos.autoscale_decisions.open():
            node = self._repos.nodes.get(decision.node_id)
            if node is None:
                self._repos.autoscale_decisions.set_status(decision.id, "failed", now)
                continue
            if decision.status == "deploying":
                self._follow_deployment(decision, node, now)
            elif decision.status == "draining":
                self._follow_drain(decision, node, now)

    def _follow_deployment(self, decision: ScaleDecision, node: Node, now: float) -> None:
        deployment = (
            self._repos.deployments.get(decision.deployment_id) if decision.deployment_id else None
        )
        if deployment is None or deployment.status in _FAILED_DEPLOYMENTS:
            self._repos.autoscale_decisions.set_status(decision.id, "failed", now)
            log.error("autoscale: activating %s failed (deployment %s)",
                      node.name, decision.deployment_id)  # fmt: skip
            return
        if deployment.status != "successful":
            return
        self._repos.nodes.set_status(node.id, "online", ("standby",))
        self._republish(node.type, f"autoscale: {node.name} activated")
        self._repos.autoscale_decisions.set_status(decision.id, "active", now)
        log.warning("autoscale: %s is active", node.name)

    def _follow_drain(self, decision: ScaleDecision, node: Node, now: float) -> None:
        connections = node.metrics.connections if node.metrics else None
        # Two heartbeats at least: the peers must have applied the config without it first.
        settled = now - decision.at >= 2 * self._settings.heartbeat_interval
        drained = settled and connections == 0
        if not drained and now - decision.at < self._settings.autoscale_drain_time:
            return
        self._repos.nodes.set_status(node.id, "standby", ("draining",))
        self._repos.autoscale_decisions.set_status(decision.id, "standby", now)
        log.warning("autoscale: %s drained to standby", node.name)

    def _republish(self, node_type: str, description: str) -> tuple[int, ...]:
        return republish_peers(
            self._configs,
            {node_type},
            description,
            ACTOR,
            settle=self._settings.agent_snapshot_ttl,
            sleep=self._sleep,
        )


def _groups(nodes: list[Node]) -> dict[tuple[str, str], list[Node]]:
    groups: dict[tuple[str, str], list[Node]] = {}
    for node in nodes:
        groups.setdefault((node.type, node.region), []).append(node)
    return groups


def _desc(name: str) -> tuple[int, ...]:
    """Sort key putting names in descending order."""
    return tuple(-ord(c) for c in name)
