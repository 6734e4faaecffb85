"""Scenarios: what load to put through a started contender, and the figures that come out.

A scenario is a frozen spec (parsed from ``--scenarios`` words such as ``sse:2000x50x200``) with
``applies(contender)`` and ``run(running, ctx) -> result``. Results are typed dataclasses of
plain numbers, one per (repeat, scenario, contender); ratios to the direct baseline are made
later, in ``bench.report``, from results of the same repeat.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from bench.clients import (
    CAPPED,
    SseLoad,
    SseRun,
    download,
    hold_idle,
    run_wrk,
    wrk_available,
)
from bench.contenders import Contender, Running, relay_config_versions
from bench.system import cpu_seconds, rss_kib


@dataclass(frozen=True)
class Ctx:
    """Run-wide settings the scenarios need."""

    workdir: Path
    #: Streams (or idle connections) per load generator process.
    per_worker: int = 2500


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ramp(streams: int) -> float:
    """Seconds over which to open ``streams`` connections: ~2,000 a second, 0.5 s at least."""
    return min(5.0, max(0.5, streams / 2000.0))


class _Cpu:
    """utime+stime of a contender's processes (workers included) across a measurement."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.pids = running.pids()
        self.start = cpu_seconds(self.pids)

    def used(self) -> float:
        pids = sorted(set(self.pids) | set(self.running.pids()))
        return cpu_seconds(pids) - self.start


# --- results ------------------------------------------------------------------------------------


@dataclass
class SseResult:
    streams: int
    ok: int
    failed: int
    errors: dict[str, int]
    delay_p50_ms: float
    delay_p99_ms: float
    delay_p999_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    tokens_per_s: float
    #: Proxy CPU (all its processes) per token; 0 for direct (no proxy).
    cpu_us_per_token: float
    #: CPU the load generator used, in cores: a check that the client was not the bottleneck.
    client_cores: float
    events: int

    def brief(self) -> str:
        return (
            f"ok {self.ok}/{self.streams}  delay p50 {self.delay_p50_ms:.2f} "
            f"p99 {self.delay_p99_ms:.2f} p99.9 {self.delay_p999_ms:.2f} ms  "
            f"ttfb p50 {self.ttfb_p50_ms:.1f} ms  {self.tokens_per_s:.0f} tok/s  "
            f"cpu {self.cpu_us_per_token:.1f} us/token"
        )


@dataclass
class SmallResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: dict[str, int]

    def brief(self) -> str:
        return (
            f"{self.requests_per_s:.0f} req/s  p50 {self.p50_ms:.2f} p99 {self.p99_ms:.2f} ms  "
            f"cpu {self.cpu_us_per_request:.1f} us/req"
        )


@dataclass
class BulkResult:
    mib_per_s: float
    cpu_s_per_gib: float
    bytes: int
    rounds: int
    complete: bool
    error: str

    def brief(self) -> str:
        state = f"  ({self.error})" if self.error else ""
        return (
            f"{self.mib_per_s:.0f} MiB/s  cpu {self.cpu_s_per_gib:.2f} s/GiB  "
            f"({self.rounds} download(s)){state}"
        )


@dataclass
class IdleResult:
    conns: int
    held: int
    failed: int
    rss_before_kib: int
    rss_after_kib: int
    kib_per_conn: float
    errors: dict[str, int]

    def brief(self) -> str:
        return (
            f"held {self.held}/{self.conns}  RSS {self.rss_before_kib / 1024:.1f} -> "
            f"{self.rss_after_kib / 1024:.1f} MiB  {self.kib_per_conn:.2f} KiB/conn"
        )


@dataclass
class ReloadResult:
    streams: int
    ok: int
    broken: int
    reloads: int
    #: ``aicdn_config_version`` of each relay process afterwards (== reloads when all applied).
    versions: list[int]
    errors: dict[str, int]
    delay_p99_ms: float
    ttfb_p99_ms: float

    @property
    def applied(self) -> bool:
        return bool(self.versions) and all(v == self.reloads for v in self.versions)

    def brief(self) -> str:
        return (
            f"broken {self.broken}/{self.streams} over {self.reloads} reloads  "
            f"versions {self.versions}  delay p99 {self.delay_p99_ms:.2f} ms"
        )


Result = SseResult | SmallResult | BulkResult | IdleResult | ReloadResult


class Scenario(Protocol):
    kind: ClassVar[str]

    @property
    def key(self) -> str:
        """The word it was given as on the command line (unique within a run)."""

    def title(self) -> str: ...

    def applies(self, contender: Contender) -> bool: ...

    def run(self, running: Running, ctx: Ctx) -> Result: ...


# --- SSE ----------------------------------------------------------------------------------------


def _sse_result(run: SseRun, cpu_s: float, proxied: bool) -> SseResult:
    span = max(1e-9, run.last_arrival - run.first_start)
    tokens = max(0, run.events - run.ok)  # every complete stream also carries one stop event
    return SseResult(
        streams=run.streams,
        ok=run.ok,
        failed=run.failed,
        errors=run.errors,
        delay_p50_ms=percentile(run.delays, 0.50) * 1e3,
        delay_p99_ms=percentile(run.delays, 0.99) * 1e3,
        delay_p999_ms=percentile(run.delays, 0.999) * 1e3,
        ttfb_p50_ms=percentile(run.ttfb, 0.50) * 1e3,
        ttfb_p99_ms=percentile(run.ttfb, 0.99) * 1e3,
        tokens_per_s=tokens / span,
        cpu_us_per_token=cpu_s / max(1, tokens) * 1e6 if proxied else 0.0,
        client_cores=run.client_cpu_s / max(1e-9, run.client_wall_s),
        events=run.events,
    )


@dataclass(frozen=True)
class SseScenario:
    key: str
    streams: int
    tokens: int
    interval_ms: float
    kind: ClassVar[str] = "sse"

    def title(self) -> str:
        return f"SSE {self.streams} streams x {self.tokens} tokens x {self.interval_ms:g} ms"

    def applies(self, contender: Contender) -> bool:
        return True

    def run(self, running: Running, ctx: Ctx) -> Result:
        cpu = _Cpu(running)
        load = SseLoad(
            running.port,
            self.streams,
            self.tokens,
            self.interval_ms,
            _ramp(self.streams),
            ctx.per_worker,
            ctx.workdir,
        )
        run = load.wait()
        return _sse_result(run, cpu.used(), bool(running.procs))


# --- small requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SmallScenario:
    key: str
    seconds: float
    connections: int
    kind: ClassVar[str] = "small"

    def title(self) -> str:
        return (
            f"Small requests: wrk GET /v1/models, {self.connections} keep-alive conns, "
            f"{self.seconds:g} s"
        )

    def applies(self, contender: Contender) -> bool:
        return wrk_available()

    def run(self, running: Running, ctx: Ctx) -> Result:
        cpu = _Cpu(running)
        wrk = run_wrk(running.port, self.seconds, self.connections)
        used = cpu.used()
        return SmallResult(
            requests_per_s=wrk.requests_per_s,
            p50_ms=wrk.p50_ms,
            p99_ms=wrk.p99_ms,
            cpu_us_per_request=used / max(1, wrk.requests) * 1e6 if running.procs else 0.0,
            errors=wrk.errors,
        )


# --- bulk ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkScenario:
    key: str
    mib: int
    #: A slow contender's download is stopped here and its rate so far is its figure.
    max_seconds: float = 15.0
    kind: ClassVar[str] = "bulk"

    def title(self) -> str:
        return (
            f"Bulk: one connection, GET /bytes?n={self.mib} MiB (repeated on the connection"
            f" until 1 s has passed; stopped at {self.max_seconds:g} s)"
        )

    def applies(self, contender: Contender) -> bool:
        return True

    def run(self, running: Running, ctx: Ctx) -> Result:
        cpu = _Cpu(running)
        size = self.mib << 20
        run = download(running.port, size, self.max_seconds)
        used = cpu.used()
        gib = max(1, run.bytes) / (1 << 30)
        return BulkResult(
            mib_per_s=run.bytes / (1 << 20) / max(1e-9, run.seconds),
            cpu_s_per_gib=used / gib if running.procs else 0.0,
            bytes=run.bytes,
            rounds=run.rounds,
            complete=run.complete or run.error == CAPPED,
            error=run.error,
        )


# --- idle connections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleScenario:
    key: str
    conns: int
    kind: ClassVar[str] = "idle"

    def title(self) -> str:
        return f"Idle: {self.conns} streams held open after their first token"

    def applies(self, contender: Contender) -> bool:
        return contender.kind != "direct"

    def run(self, running: Running, ctx: Ctx) -> Result:
        time.sleep(0.3)
        before = rss_kib(running.pids())

        def measure() -> int:
            time.sleep(1.0)  # let buffers and allocators settle
            return rss_kib(running.pids())

        run = hold_idle(
            running.port, self.conns, _ramp(self.conns), ctx.per_worker, ctx.workdir, measure
        )
        after = int(run.measured) if isinstance(run.measured, int) else before
        return IdleResult(
            conns=self.conns,
            held=run.held,
            failed=run.failed,
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_conn=(after - before) / max(1, run.held),
            errors=run.errors,
        )


# --- hot reload under load ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadScenario:
    key: str
    streams: int
    tokens: int
    interval_ms: float
    reloads: int = 5
    kind: ClassVar[str] = "reload"

    def title(self) -> str:
        return (
            f"Hot reload: {self.reloads} x SIGHUP during {self.streams} streams x "
            f"{self.tokens} tokens x {self.interval_ms:g} ms (relay only)"
        )

    def applies(self, contender: Contender) -> bool:
        return contender.kind == "relay"

    def run(self, running: Running, ctx: Ctx) -> Result:
        assert running.reloader is not None
        # Streams keep opening during the reloads: both open and new connections are tested.
        load = SseLoad(
            running.port,
            self.streams,
            self.tokens,
            self.interval_ms,
            _ramp(self.streams) * 2,
            ctx.per_worker,
            ctx.workdir,
        )
        first = load.start_at + 0.2
        last = load.start_at + load.duration * 0.8
        for version in range(1, self.reloads + 1):
            at = first + (last - first) * (version - 1) / max(1, self.reloads - 1)
            time.sleep(max(0.0, at - time.time()))
            running.reloader(version)
        run = load.wait()
        time.sleep(0.2)
        versions = relay_config_versions(running)
        errors = dict(run.errors)
        if (why := running.dead()) is not None:
            errors[why] = 1
        return ReloadResult(
            streams=run.streams,
            ok=run.ok,
            broken=run.failed,
            reloads=self.reloads,
            versions=versions,
            errors=errors,
            delay_p99_ms=percentile(run.delays, 0.99) * 1e3,
            ttfb_p99_ms=percentile(run.ttfb, 0.99) * 1e3,
        )


# --- parsing ``--scenarios`` words --------------------------------------------------------------

#: Defaults per name: quick, then full. ``sse-max`` is sized from the fd limit at run time.
QUICK_DEFAULTS = ("sse", "small", "bulk", "idle", "reload")
FULL_DEFAULTS = ("sse", "sse-2k", "small", "bulk", "idle", "reload")
SIZES: dict[str, tuple[str, str]] = {
    "sse": ("200x100x20", "200x100x20"),
    "sse-2k": ("2000x50x200", "2000x50x200"),
    "sse-max": ("max", "max"),
    "small": ("3x64", "10x64"),
    "bulk": ("256", "1024"),
    "idle": ("1000", "5000"),
    "reload": ("200x150x20x5", "500x250x20x5"),
}


@dataclass(frozen=True)
class ScenarioError(ValueError):
    word: str
    why: str = field(default="")

    def __str__(self) -> str:
        return f"--scenarios {self.word!r}: {self.why}"


def _numbers(word: str, text: str, count: tuple[int, ...]) -> list[float]:
    try:
        values = [float(part) for part in text.split("x")]
    except ValueError:
        raise ScenarioError(word, "sizes are numbers joined by 'x'") from None
    if len(values) not in count or any(v <= 0 for v in values):
        raise ScenarioError(word, f"expected {' or '.join(map(str, count))} positive numbers")
    return values


def max_streams(fd_limit: int) -> int:
    """Streams a one-process proxy hop can hold: two fds each (client side, upstream side)."""
    return (fd_limit - 200) // 2


def parse(word: str, quick: bool, fd_limit: int) -> Scenario:
    """``name`` or ``name:SIZES`` -> a scenario (see ``SIZES`` for names and defaults)."""
    name, _, sizes = word.partition(":")
    base = name
    if name.startswith("sse-") and name not in SIZES:
        base = "sse"  # e.g. sse-5k:5000x20x500
    if base not in SIZES:
        raise ScenarioError(word, f"unknown scenario; expected one of {', '.join(SIZES)}")
    sizes = sizes or SIZES[base][0 if quick else 1]
    if base.startswith("sse"):
        if sizes == "max":
            return SseScenario(word, max_streams(fd_limit), 20, 1000.0)
        streams, tokens, interval = _numbers(word, sizes, (3,))
        return SseScenario(word, int(streams), int(tokens), interval)
    if base == "small":
        values = _numbers(word, sizes, (1, 2))
        return SmallScenario(word, values[0], int(values[1]) if len(values) > 1 else 64)
    if base == "bulk":
        return BulkScenario(word, int(_numbers(word, sizes, (1,))[0]), 10.0 if quick else 30.0)
    if base == "idle":
        return IdleScenario(word, int(_numbers(word, sizes, (1,))[0]))
    values = _numbers(word, sizes, (3, 4))
    reloads = int(values[3]) if len(values) > 3 else 5
    return ReloadScenario(word, int(values[0]), int(values[1]), values[2], reloads)
