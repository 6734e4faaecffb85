"""Prometheus metrics of a relay process (DESIGN §3.3).

Everything the data path counts lives in plain Python numbers on ``ServiceStats`` that a
custom collector reads at scrape time: bytes moved (one integer addition per chunk), requests
by status code and the per-request and per-connection histograms (``LiveHistogram``: one
bisect and two additions). prometheus_client's own Counter and Histogram take a lock per
increment and several per observation, which cost ~10 µs of a ~100 µs request; the relay's
event loop is single-threaded, so the locks bought nothing. Rare events (upstream errors,
reloads) keep prometheus_client's types.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from relay.access_log import AccessLog
    from relay.usage import UsageMeter

#: LLM streams are long: duration buckets reach 30 minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800,
)  # fmt: skip
SIZE_BUCKETS = tuple(float(4**i) for i in range(4, 16))  # 256 B .. 1 GiB


class LiveHistogram:
    """A histogram for one event loop: no locks, read at scrape time (see the module doc)."""

    __slots__ = ("bounds", "counts", "labels", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: ``le`` as prometheus_client writes it, so the series read as they always did.
        self.labels = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        #: Observations per bucket, not cumulative; the last one is above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. the bucket ``le`` that value falls in.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs as the exposition format wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for label, count in zip(self.labels, self.counts, strict=False):
            total += count
            out.append((label, total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class ServiceStats:
    """Live counters of one service; mutated on the hot path, read at scrape time."""

    __slots__ = (
        "blocked",
        "bytes_in",
        "bytes_out",
        "connection_duration",
        "connections_active",
        "connections_total",
        "handler",
        "name",
        "request_duration",
        "request_size",
        "requests",
        "response_size",
        "ttfb",
    )

    def __init__(self, name: str, handler: str, metrics: RelayMetrics) -> None:
        self.name = name
        self.handler = handler
        self.connections_active = 0
        self.connections_total = 0
        #: Bytes from clients toward upstreams, and from upstreams back to clients.
        self.bytes_in = 0
        self.bytes_out = 0
        self.blocked: dict[str, int] = {}
        self.connection_duration = LiveHistogram(DURATION_BUCKETS)
        self.request_duration = LiveHistogram(DURATION_BUCKETS)
        self.ttfb = LiveHistogram(DURATION_BUCKETS)
        self.request_size = LiveHistogram(SIZE_BUCKETS)
        self.response_size = LiveHistogram(SIZE_BUCKETS)
        #: Answered requests by status code.
        self.requests: dict[int, int] = {}

    def count_request(self, status: int) -> None:
        """Count an answered request."""
        requests = self.requests
        requests[status] = requests.get(status, 0) + 1


class ResumeStats:
    """Resumable streams of one side (``edge`` resumes, ``core`` parks and replays); plain
    integers read at scrape time, like ``ServiceStats``."""

    __slots__ = (
        "attempts", "buffered_bytes", "failures", "parked", "replayed_bytes", "side",
        "streams_lost", "successes",
    )  # fmt: skip

    def __init__(self, side: str) -> None:
        self.side = side
        #: Resume handshakes tried (edge) or received (core).
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        #: Payload bytes sent again after a resume.
        self.replayed_bytes = 0
        #: Streams a break ended: not resumed within the window, or refused.
        self.streams_lost = 0
        #: Core: streams waiting for their edge to resume them.
        self.parked = 0
        #: Core: bytes held for replay by parked streams.
        self.buffered_bytes = 0


class RelayMetrics:
    """All metrics of one relay process, in a registry of its own (tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.services: dict[str, ServiceStats] = {}
        self.upstream_errors = Counter(
            "aicdn_upstream_errors",
            "Failures reaching or talking to an upstream node.",
            ["service", "node", "reason"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "aicdn_config_reloads",
            "Config reloads, by result (a failed one leaves the running config in place).",
            ["result"],
            registry=self.registry,
        )
        self.config_version = Gauge(
            "aicdn_config_version", "Version of the running config.", registry=self.registry
        )
        self.resume = {"edge": ResumeStats("edge"), "core": ResumeStats("core")}
        #: Set by the node (issue 12): read at scrape time for their counters.
        self.usage_meter: UsageMeter | None = None
        self.access_log: AccessLog | None = None
        self.registry.register(_LiveCollector(self))

    def service(self, name: str, handler: str) -> ServiceStats:
        """The stats object of a service; the same one across reloads, so counters continue."""
        stats = self.services.get(name)
        if stats is None or stats.handler != handler:
            stats = ServiceStats(name, handler, self)
            self.services[name] = stats
        return stats

    def upstream_error(self, service: str, node: str, reason: str) -> None:
        self.upstream_errors.labels(service, node, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: RelayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "aicdn_connections_active", "Open client connections.", labels=["service", "handler"]
        )
        total = CounterMetricFamily(
            "aicdn_connections", "Client connections accepted.", labels=["service", "handler"]
        )
        transfer = CounterMetricFamily(
            "aicdn_transfer_bytes",
            "Bytes relayed, counted as they flow (in: client to upstream; out: back).",
            labels=["service", "direction"],
        )
        blocked = CounterMetricFamily(
            "aicdn_blocked", "Connections and requests refused by a policy.",
            labels=["service", "reason"],
        )  # fmt: skip
        for stats in list(self._metrics.services.values()):
            active.add_metric([stats.name, stats.handler], stats.connections_active)
            total.add_metric([stats.name, stats.handler], stats.connections_total)
            transfer.add_metric([stats.name, "in"], stats.bytes_in)
            transfer.add_metric([stats.name, "out"], stats.bytes_out)
            for reason, count in stats.blocked.items():
                blocked.add_metric([stats.name, reason], count)
        yield from (active, total, transfer, blocked)
        yield from _request_families(self._metrics.services.values())
        yield from _resume_metrics(self._metrics.resume.values())
        yield from self._usage_families()

    def _usage_families(self) -> Iterator[Metric]:
        meter = self._metrics.usage_meter
        if meter is not None:
            yield CounterMetricFamily(
                "aicdn_usage_overflow",
                "Requests counted under the overflow key: an interval held too many keys.",
                value=meter.overflowed,
            )
            yield GaugeMetricFamily(
                "aicdn_usage_pending_entries",
                "Usage entries (key, hour) counted and not yet acknowledged by the master.",
                value=meter.pending_entries(),
            )
            yield GaugeMetricFamily(
                "aicdn_usage_blocked_keys", "API keys refused as over quota.",
                value=len(meter.blocked),
            )  # fmt: skip
        access_log = self._metrics.access_log
        if access_log is not None:
            yield CounterMetricFamily(
                "aicdn_access_log_lines", "Access log lines written.", value=access_log.written
            )
            yield CounterMetricFamily(
                "aicdn_access_log_dropped",
                "Access log lines dropped by ratePerSecond or a full queue.",
                value=access_log.dropped,
            )

    def describe(self) -> Iterator[Metric]:
        return iter(())


#: (family name, help, ServiceStats attribute, per-service or per-(service, handler) labels).
_HISTOGRAMS = (
    ("aicdn_connection_duration_seconds", "Lifetime of client connections.",
     "connection_duration", True),
    ("aicdn_request_duration_seconds", "HTTP request start to response end.",
     "request_duration", False),
    ("aicdn_time_to_first_byte_seconds", "Request sent upstream to first response byte.",
     "ttfb", False),
    ("aicdn_request_size_bytes", "HTTP request body sizes.", "request_size", False),
    ("aicdn_response_size_bytes", "HTTP response body sizes.", "response_size", False),
)  # fmt: skip


def _request_families(services: Iterable[ServiceStats]) -> Iterator[Metric]:
    services = list(services)
    requests = CounterMetricFamily(
        "aicdn_requests", "HTTP requests answered, by status code.", labels=["service", "code"]
    )
    for stats in services:
        for code, count in sorted(stats.requests.items()):
            requests.add_metric([stats.name, str(code)], count)
    yield requests
    for name, doc, attr, by_handler in _HISTOGRAMS:
        labels = ["service", "handler"] if by_handler else ["service"]
        family = HistogramMetricFamily(name, doc, labels=labels)
        for stats in services:
            histogram: LiveHistogram = getattr(stats, attr)
            values = [stats.name, stats.handler] if by_handler else [stats.name]
            family.add_metric(values, histogram.buckets(), histogram.sum)
        yield family


def _resume_metrics(sides: Iterable[ResumeStats]) -> Iterator[Metric]:
    counters = {
        "attempts": ("aicdn_resume_attempts", "Resume handshakes tried (edge) or received (core)."),
        "successes": ("aicdn_resume_successes", "Broken tunneled streams resumed."),
        "failures": ("aicdn_resume_failures", "Resume handshakes that failed or were refused."),
        "replayed_bytes": ("aicdn_resume_replayed_bytes", "Bytes sent again after a resume."),
        "streams_lost": ("aicdn_resume_streams_lost", "Broken streams that could not resume."),
    }
    gauges = {
        "parked": ("aicdn_resume_streams_parked", "Broken streams held for a resume."),
        "buffered_bytes": ("aicdn_resume_buffered_bytes", "Bytes parked streams hold."),
    }
    sides = list(sides)
    for attr, (name, doc) in counters.items():
        family = CounterMetricFamily(name, doc, labels=["side"])
        for side in sides:
            family.add_metric([side.side], getattr(side, attr))
        yield family
    for attr, (name, doc) in gauges.items():
        gauge = GaugeMetricFamily(name, doc, labels=["side"])
        for side in sides:
            gauge.add_metric([side.side], getattr(side, attr))
        yield gauge
