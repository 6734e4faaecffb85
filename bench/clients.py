"""Client side of each scenario, run from the bench process: load generator workers, wrk, bulk.

Nothing here knows about contenders: every function takes the entry port and returns raw
figures in typed dataclasses; ``bench.scenarios`` turns them into results.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Proc, wait_exit


@dataclass
class SseRun:
    """All workers of one SSE run, merged."""

    streams: int
    ok: int
    errors: dict[str, int]
    events: int
    bad_numbers: int
    #: Per-token delays (arrival - sent_at), seconds, sorted.
    delays: list[float]
    #: Per-stream time from connect to the first response byte, seconds, sorted.
    ttfb: list[float]
    first_start: float
    last_arrival: float
    client_cpu_s: float
    client_wall_s: float
    workers: int

    @property
    def failed(self) -> int:
        return self.streams - self.ok


def split(total: int, per_worker: int) -> list[int]:
    """``total`` streams over ``ceil(total / per_worker)`` workers, as evenly as possible."""
    workers = max(1, math.ceil(total / max(1, per_worker)))
    base, extra = divmod(total, workers)
    return [base + (1 if k < extra else 0) for k in range(workers)]


def _worker_argv(mode: str, port: int, streams: int, ramp: float, start_at: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.loadgen",
        mode,
        "--port",
        str(port),
        "--streams",
        str(streams),
        "--ramp",
        f"{ramp:.3f}",
        "--start-at",
        f"{start_at:.3f}",
    ]


@dataclass
class WorkerSummary:
    """The JSON line a load generator worker prints at the end (see ``bench.loadgen``)."""

    streams: int
    ok: int
    events: int
    bad_numbers: int
    errors: dict[str, int]
    first_start: float
    last_arrival: float
    cpu_s: float
    wall_s: float
    ttfb: list[float]


def _summary(text: str) -> WorkerSummary:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            doc = json.loads(line)
            return WorkerSummary(
                streams=int(doc["streams"]),
                ok=int(doc["ok"]),
                events=int(doc["events"]),
                bad_numbers=int(doc["bad_numbers"]),
                errors={str(k): int(v) for k, v in doc["errors"].items()},
                first_start=float(doc["first_start"]),
                last_arrival=float(doc["last_arrival"]),
                cpu_s=float(doc["cpu_s"]),
                wall_s=float(doc["wall_s"]),
                ttfb=[float(x) for x in doc["ttfb"]],
            )
    raise ValueError("no JSON summary from the load generator")


class SseLoad:
    """An SSE run in progress: started by ``start``, collected by ``wait``.

    Split in two so the reload scenario can act on the relay while streams are running.
    """

    def __init__(
        self,
        port: int,
        streams: int,
        tokens: int,
        interval_ms: float,
        ramp: float,
        per_worker: int,
        workdir: Path,
    ) -> None:
        self.start_at = time.time() + 0.8  # workers import uvloop and start together
        self.ramp = ramp
        self.duration = ramp + tokens * interval_ms / 1000.0
        # Healthy streams end at ``duration`` plus their own added delay; a stuck one is
        # counted as failed ("timeout") at the deadline.
        deadline = self.duration * 1.5 + 10.0
        self.workers: list[tuple[Proc, Path]] = []
        for k, count in enumerate(split(streams, per_worker)):
            out = workdir / f"delays-{k}.bin"
            argv = [
                *_worker_argv("sse", port, count, ramp, self.start_at),
                *("--tokens", str(tokens), "--interval-ms", str(interval_ms)),
                *("--deadline", f"{deadline:.1f}", "--out", str(out)),
            ]
            proc = Proc(f"loadgen-{k}", argv, workdir, stdout=subprocess.PIPE)
            self.workers.append((proc, out))
        self.timeout = deadline + 30.0

    def wait(self) -> SseRun:
        delays = array("d")
        ttfb: list[float] = []
        errors: Counter[str] = Counter()
        streams = ok = events = bad = 0
        first, last, cpu, wall = math.inf, 0.0, 0.0, 0.0
        for proc, out in self.workers:
            try:
                stdout, _ = proc.popen.communicate(timeout=self.timeout)
                summary = _summary(stdout.decode())
            except (subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                errors[f"load generator: {type(exc).__name__} {proc.log_tail(2)}"] += 1
                continue
            finally:
                proc.stop()
            streams += summary.streams
            ok += summary.ok
            events += summary.events
            bad += summary.bad_numbers
            errors.update(summary.errors)
            first = min(first, summary.first_start)
            last = max(last, summary.last_arrival)
            cpu += summary.cpu_s
            wall = max(wall, summary.wall_s)
            ttfb.extend(summary.ttfb)
            with out.open("rb") as handle:
                delays.frombytes(handle.read())
            out.unlink(missing_ok=True)
        return SseRun(
            streams=streams,
            ok=ok,
            errors=dict(errors),
            events=events,
            bad_numbers=bad,
            delays=sorted(delays),
            ttfb=sorted(ttfb),
            first_start=first if first != math.inf else 0.0,
            last_arrival=last,
            client_cpu_s=cpu,
            client_wall_s=wall,
            workers=len(self.workers),
        )


@dataclass
class IdleRun:
    wanted: int
    held: int
    failed: int
    errors: dict[str, int]
    #: Whatever ``measure`` returned while the connections were held.
    measured: object = None


def hold_idle(
    port: int,
    conns: int,
    ramp: float,
    per_worker: int,
    workdir: Path,
    measure: Callable[[], object],
) -> IdleRun:
    """Open ``conns`` streams that got their first token and then idle; call ``measure``
    while all are held; then close them."""
    start_at = time.time() + 0.8
    procs = [
        Proc(
            f"idle-{k}",
            [*_worker_argv("idle", port, count, ramp, start_at), "--deadline", f"{ramp + 30:.0f}"],
            workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for k, count in enumerate(split(conns, per_worker))
    ]
    held = failed = 0
    errors: Counter[str] = Counter()
    try:
        for proc in procs:
            assert proc.popen.stdout is not None
            line = proc.popen.stdout.readline().decode().split()
            if len(line) == 3 and line[0] == "ready":
                held += int(line[1])
                failed += int(line[2])
            else:
                errors[f"load generator: {proc.log_tail(2)}"] += 1
        measured = measure()
        for proc in procs:
            assert proc.popen.stdin is not None
            try:
                proc.popen.stdin.write(b"close\n")
                proc.popen.stdin.flush()
            except BrokenPipeError:
                pass
        for proc in procs:
            try:
                stdout, _ = proc.popen.communicate(timeout=30)
                errors.update(_summary(stdout.decode()).errors)
            except (subprocess.TimeoutExpired, ValueError, KeyError):
                errors["load generator did not finish"] += 1
    finally:
        wait_exit(procs, 5)
        for proc in procs:
            proc.stop()
    return IdleRun(conns, held, failed, dict(errors), measured)


@dataclass
class WrkRun:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, seconds: float, connections: int, threads: int = 1) -> WrkRun:
    """``wrk`` against ``GET /v1/models`` over keep-alive connections."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "5s",
        "--latency",
        f"http://127.0.0.1:{port}/v1/models",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"wrk output not understood: {(out + done.stderr)[-300:]}")
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for name, value in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            if int(value):
                errors[f"socket {name}"] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors["non-2xx"] = int(non2xx.group(1))
    return WrkRun(
        float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), errors, out
    )


#: ``BulkRun.error`` when the download was stopped at its time cap (not a failure).
CAPPED = "stopped at the time cap"


@dataclass
class BulkRun:
    bytes: int
    seconds: float
    complete: bool
    error: str = ""
    #: Downloads made on the connection (more than one when one took under ``min_seconds``).
    rounds: int = 0


def _read_body(
    sock: socket.socket, size: int, view: memoryview, deadline: float
) -> tuple[int, str]:
    """Read one ``/bytes`` response of ``size`` body bytes; returns (body bytes, error)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, "closed in headers"
        head += chunk
    header, _, rest = head.partition(b"\r\n\r\n")
    if not header.startswith(b"HTTP/1.1 200"):
        return 0, header[:40].decode("latin-1")
    received = len(rest)
    while received < size:
        n = sock.recv_into(view[: min(len(view), size - received)])
        if not n:
            return received, "short"
        received += n
        if time.perf_counter() > deadline:
            return received, CAPPED
    return received, ""


def download(port: int, size: int, max_seconds: float, min_seconds: float = 1.0) -> BulkRun:
    """One keep-alive connection: ``GET /bytes?n=size`` read to the end, timed from the request.

    Repeated on the same connection until ``min_seconds`` have passed, so a fast direct run is
    not a 0.1 s measurement made mostly of noise. A download still running after
    ``max_seconds`` is stopped there (``error == CAPPED``): the rate so far is the figure.
    """
    view = memoryview(bytearray(1 << 20))
    request = f"GET /bytes?n={size} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    total = rounds = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            while True:
                sock.sendall(request)
                received, error = _read_body(sock, size, view, deadline)
                total += received
                rounds += 1
                elapsed = time.perf_counter() - start
                if error:
                    return BulkRun(total, elapsed, False, error, rounds)
                if elapsed >= min_seconds or rounds >= 64:
                    return BulkRun(total, elapsed, True, "", rounds)
    except OSError as exc:
        return BulkRun(total, time.perf_counter() - start, False, str(exc), rounds)
