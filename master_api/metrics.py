"""Prometheus metrics of the master, in a registry of its own (not the process-global one, so
several apps in one process -- tests -- do not collide).

* ``aicdn_master_http_requests_total{method,endpoint,code}`` and
  ``aicdn_master_http_request_duration_seconds{method,endpoint}`` -- API traffic and latency;
  ``endpoint`` is the route name (bounded), never the raw path;
* ``aicdn_master_nodes{status}``, ``aicdn_master_active_config_versions`` -- read from the
  store at scrape time; ``aicdn_master_store_up`` is 0 (and those two absent) when it is down;
* ``aicdn_master_leader`` -- 1 on the leading master;
* ``aicdn_master_failover_nodes{state}`` -- nodes in failover ``backup`` / ``out``;
* ``aicdn_master_autoscale_decisions{action}`` -- autoscale decisions taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from master_api.errors import StoreUnavailable
from master_api.repos import Repos

__all__ = ["CONTENT_TYPE", "MasterMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StoreCollector(Collector):
    def __init__(self, repos: Callable[[], Repos], is_leader: Callable[[], bool]) -> None:
        self._repos = repos
        self._is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("aicdn_master_leader", "1 when this master is the leader")
        leader.add_metric([], 1.0 if self._is_leader() else 0.0)
        yield leader
        up = GaugeMetricFamily("aicdn_master_store_up", "1 when the database answers")
        try:
            repos = self._repos()
            by_status = repos.nodes.count_by_status()
            by_failover = repos.nodes.count_by_failover()
            decisions = repos.autoscale_decisions.count_by_action()
            active = {p.version_id for p in repos.config_active.all()}
        except StoreUnavailable:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        nodes = GaugeMetricFamily("aicdn_master_nodes", "Nodes by status", labels=["status"])
        for status in ("online", "offline", "degraded", "draining", "standby"):
            nodes.add_metric([status], float(by_status.get(status, 0)))
        yield nodes
        failover = GaugeMetricFamily(
            "aicdn_master_failover_nodes",
            "Nodes the failover has moved to backup or taken out",
            labels=["state"],
        )
        for state in ("backup", "out"):
            failover.add_metric([state], float(by_failover.get(state, 0)))
        yield failover
        scale = GaugeMetricFamily(
            "aicdn_master_autoscale_decisions",
            "Autoscale decisions taken, by action (their reasons: GET /api/v1/autoscale)",
            labels=["action"],
        )
        for action in ("scale_up", "scale_down"):
            scale.add_metric([action], float(decisions.get(action, 0)))
        yield scale
        versions = GaugeMetricFamily(
            "aicdn_master_active_config_versions", "Distinct config versions active somewhere"
        )
        versions.add_metric([], float(len(active)))
        yield versions


class MasterMetrics:
    """The registry and request instrumentation of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "aicdn_master_http_requests_total",
            "API requests by route and status code",
            ["method", "endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aicdn_master_http_request_duration_seconds",
            "API request latency by route",
            ["method", "endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.is_leader: Callable[[], bool] = lambda: False

    def init_app(self, app: Flask, repos: Callable[[], Repos]) -> None:
        """Instrument ``app``'s requests and register the store-reading collector."""
        app.extensions["aicdn_metrics"] = self
        self.registry.register(_StoreCollector(repos, lambda: self.is_leader()))
        app.before_request(self._start)
        app.after_request(self._finish)

    @staticmethod
    def get(app: Flask) -> MasterMetrics:
        value: MasterMetrics = app.extensions["aicdn_metrics"]
        return value

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _start(self) -> None:
        g.aicdn_started = time.perf_counter()

    def _finish(self, response: Response) -> Response:
        started = g.get("aicdn_started")
        endpoint = request.endpoint or "unknown"
        self.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        if started is not None:
            self.latency.labels(request.method, endpoint).observe(time.perf_counter() - started)
        return response
