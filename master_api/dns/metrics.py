"""Prometheus metrics of ``aicdn-master dns`` (on ``dns_metrics_addr`` when set), read from the
responder's counters and the edge view at scrape time: nothing is added to the per-query path.

* ``aicdn_dns_queries_total``, ``aicdn_dns_replies_total{rcode}``, ``aicdn_dns_dropped_total``
  (unparsable input, responses, over-long names), ``aicdn_dns_truncated_total``;
* ``aicdn_dns_edges{region,tier}`` -- answerable edges in the current view (tier ``online`` or
  ``degraded``);
* ``aicdn_dns_view_age_seconds`` -- how old the view is: it grows past ``dns_refresh`` while
  the store does not answer (absent before the first read);
  ``aicdn_dns_view_refresh_failures_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from master_api.dns.edges import EdgeWatcher
from master_api.dns.responder import DnsStats

__all__ = ["DnsCollector"]


class DnsCollector(Collector):
    def __init__(
        self,
        stats: DnsStats,
        watcher: EdgeWatcher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._watcher = watcher
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        queries = CounterMetricFamily("aicdn_dns_queries", "DNS messages that parsed as queries")
        queries.add_metric([], float(stats.queries))
        yield queries
        replies = CounterMetricFamily("aicdn_dns_replies", "DNS replies by RCODE", labels=["rcode"])
        for rcode, count in sorted(dict(stats.rcodes).items()):  # a copy: the loop writes it
            replies.add_metric([rcode], float(count))
        yield replies
        dropped = CounterMetricFamily("aicdn_dns_dropped", "DNS messages dropped without a reply")
        dropped.add_metric([], float(stats.dropped))
        yield dropped
        truncated = CounterMetricFamily("aicdn_dns_truncated", "UDP replies sent truncated (TC)")
        truncated.add_metric([], float(stats.truncated))
        yield truncated
        view = self._watcher.view
        edges = GaugeMetricFamily(
            "aicdn_dns_edges", "Answerable edges in the current view", labels=["region", "tier"]
        )
        for tier, regions in (("online", view.online), ("degraded", view.degraded)):
            for region, members in sorted(regions.items()):
                edges.add_metric([region, tier], float(len(members)))
        yield edges
        if view.loaded:
            age = GaugeMetricFamily("aicdn_dns_view_age_seconds", "Age of the edge view")
            age.add_metric([], max(0.0, self._clock() - view.built_at))
            yield age
        failures = CounterMetricFamily(
            "aicdn_dns_view_refresh_failures", "Edge view refreshes the store did not answer"
        )
        failures.add_metric([], float(self._watcher.failures))
        yield failures
