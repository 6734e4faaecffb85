"""Soak: minutes of streams opening and closing, clients aborting, and reloads, against a relay
process (edge chained to a core, over TCP or QUIC) in front of the dev origin. Prints the
relay's RSS, file descriptors, open-connection gauges and live asyncio tasks as it goes, then
compares the end with the baseline taken after a warm-up (``make soak``; issue 10).

    python -m bench.soak --duration 240 [--transport quic] [--clients 40]

Exit status 1 when something did not come back: gauges above zero, more descriptors or tasks
than at the baseline, or RSS above ``--rss-slack`` of the warm baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.pki import make_pki
from tests.conftest import core_mapping, edge_mapping, hop_node
from tests.helpers import chat, read_response, request_bytes
from tests.processes import RelayProcess, free_port, rss_kib


@dataclass
class Sample:
    at: float
    rss_kib: int
    fds: int
    #: ``aicdn_connections_active`` per service (edge: clients; core: tunnels).
    active: dict[str, float]
    tasks: int


@dataclass
class Counts:
    completed: int = 0
    aborted: int = 0
    broken: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    reloads: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def sample(relay: RelayProcess, started: float) -> Sample:
    pid = relay.proc.pid
    # Descriptors first: the admin/metrics requests below hold a socket of their own for a
    # moment, which is not a leak.
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    metrics = _get(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
    active: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("aicdn_connections_active{"):
            service = line.split('service="', 1)[1].split('"', 1)[0]
            active[service] = active.get(service, 0.0) + float(line.rsplit(" ", 1)[1])
    health = json.loads(_get(f"http://127.0.0.1:{relay.api}/healthz"))
    return Sample(
        at=time.monotonic() - started,
        rss_kib=rss_kib(pid),
        fds=fds,
        active=active,
        tasks=int(health.get("tasks", -1)),
    )


def fd_kinds(pid: int) -> dict[str, str]:
    """fd number -> what it is (``socket:[inode]``, ``anon_inode:[eventpoll]``, a path)."""
    out: dict[str, str] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out[fd.name] = str(fd.readlink())
        except OSError:
            pass
    return out


def build_config(origin: int, transport: str, pki_dir: Path) -> dict[str, Any]:
    """Edge (http) and core (relay) services in one process, chained over ``transport``."""
    core_port, edge_port = free_port(), free_port()
    core = core_mapping("tcp" if transport == "tcp" else transport, origin)["services"][0]
    core["addr"] = f"127.0.0.1:{core_port}"
    hop = hop_node("core-1", transport, core_port)
    if transport == "quic":
        pki = make_pki(pki_dir)
        core["listener"]["tls"] = {"certFile": str(pki.cert_file), "keyFile": str(pki.key_file)}
        hop["dialer"]["tls"] = {"caFile": str(pki.ca_file), "serverName": "localhost"}
    edge = edge_mapping(
        [hop], metadata={"ttfbTimeout": "5s", "idleTimeout": "5s", "keepaliveTimeout": "10s"}
    )
    edge["services"][0]["addr"] = f"127.0.0.1:{edge_port}"
    edge["services"].append(core)
    return edge


async def one_client(port: int, rng: random.Random, counts: Counts) -> None:
    """One client action, picked at random: a whole stream, a stream dropped midway (FIN or
    RST), a few keep-alive requests, a request head abandoned halfway."""
    action = rng.choices(["stream", "abort", "keepalive", "half-head"], [5, 3, 2, 1])[0]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        counts.error("connect")
        return
    try:
        if action == "stream":
            body = json.dumps(chat(rng.randint(10, 60), interval_ms=rng.choice([5, 10, 20])))
            writer.write(request_bytes("POST", "/v1/chat/completions", body.encode()))
            response = await asyncio.wait_for(read_response(reader), 30)
            if response.status == 200 and response.complete:
                counts.completed += 1
            else:
                counts.broken += 1
        elif action == "abort":
            body = json.dumps(chat(1000, interval_ms=10))
            writer.write(request_bytes("POST", "/v1/chat/completions", body.encode()))
            await asyncio.wait_for(reader.readuntil(b"data: "), 10)
            await asyncio.sleep(rng.random() * 0.5)
            if rng.random() < 0.5:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            counts.aborted += 1
        elif action == "keepalive":
            for _ in range(rng.randint(2, 5)):
                writer.write(request_bytes("GET", "/v1/models"))
                response = await asyncio.wait_for(read_response(reader), 10)
                if response.status != 200:
                    counts.broken += 1
            counts.completed += 1
        else:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\n")
            await asyncio.sleep(rng.random() * 0.3)
            counts.aborted += 1
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        counts.error(type(exc).__name__)
    finally:
        writer.close()


async def reloader(
    relay: RelayProcess, config: dict[str, Any], stop: asyncio.Event, every: float, counts: Counts
) -> None:
    """Every ``every`` seconds, change the edge's idleTimeout in the file and reload."""
    n = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass
        n += 1
        config["services"][0]["handler"]["metadata"]["idleTimeout"] = f"{5 + n % 3}s"
        relay.write(config)
        request = urllib.request.Request(f"http://127.0.0.1:{relay.api}/reload", method="POST")
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        counts.reloads += 1


async def load(port: int, clients: int, stop: asyncio.Event, counts: Counts, seed: int) -> None:
    async def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while not stop.is_set():
            await one_client(port, rng, counts)

    await asyncio.gather(*(worker(i) for i in range(clients)))


def _line(s: Sample, counts: Counts) -> str:
    return (
        f"t={s.at:6.1f}s rss={s.rss_kib / 1024:7.1f} MiB fds={s.fds:4d} "
        f"active={json.dumps(s.active)} tasks={s.tasks:4d} | done={counts.completed} "
        f"aborted={counts.aborted} broken={counts.broken} reloads={counts.reloads} "
        f"errors={counts.errors}"
    )


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aicdn-soak-"))
    origin_port = free_port()
    origin = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "dev-origin", "--listen", f"127.0.0.1:{origin_port}",
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    relay: RelayProcess | None = None
    try:
        await asyncio.to_thread(_wait, f"http://127.0.0.1:{origin_port}/healthz")
        config = build_config(origin_port, args.transport, workdir)
        relay = RelayProcess(config, workdir)
        # RelayProcess pipes stderr for tests that read it at the end; over minutes its log
        # would fill the pipe and block the relay, so it is copied to a file as it comes.
        log_path = workdir / "relay.log"
        drain = threading.Thread(target=_copy, args=(relay.proc.stderr, log_path), daemon=True)
        drain.start()
        config = yaml.safe_load(relay.path.read_text())
        edge_port = int(config["services"][0]["addr"].rsplit(":", 1)[1])
        started = time.monotonic()
        cold = sample(relay, started)
        counts = Counts()

        # Warm-up: one minute-fraction of the same load, so lazily built state (imports, pools,
        # allocator arenas) is in the baseline rather than counted as a leak.
        for phase, seconds in (("warm-up", args.warmup), ("soak", args.duration)):
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(load(edge_port, args.clients, stop, counts, args.seed)),
                asyncio.create_task(reloader(relay, config, stop, args.reload_every, counts)),
            ]
            end = time.monotonic() + seconds
            peak = sample(relay, started)
            while time.monotonic() < end:
                await asyncio.sleep(min(args.every, max(end - time.monotonic(), 0.1)))
                s = sample(relay, started)
                peak = s if s.rss_kib > peak.rss_kib else peak
                print(f"[{phase}] {_line(s, counts)}", flush=True)
            stop.set()
            await asyncio.gather(*tasks)
            # Idle keep-alives, timers and pooled tunnels run out.
            await asyncio.sleep(args.settle if phase == "soak" else args.warmup_settle)
            if phase == "warm-up":
                baseline = sample(relay, started)
                baseline_fds = fd_kinds(relay.proc.pid)
                print(f"[baseline] {_line(baseline, counts)}", flush=True)
        final = sample(relay, started)
        print(f"[final] {_line(final, counts)}", flush=True)
        report = {
            "duration_s": args.duration,
            "transport": args.transport,
            "clients": args.clients,
            "cold": cold.__dict__,
            "baseline": baseline.__dict__,
            "peak_rss_kib": peak.rss_kib,
            "final": final.__dict__,
            "completed": counts.completed,
            "aborted": counts.aborted,
            "broken": counts.broken,
            "reloads": counts.reloads,
            "errors": counts.errors,
        }
        report["log_lines"] = _log_summary(log_path)
        print(json.dumps(report, indent=2))
        problems = []
        if any(final.active.values()):
            problems.append(f"connections still active: {final.active}")
        if final.fds > baseline.fds:
            final_fds = fd_kinds(relay.proc.pid)  # (includes the sampling requests' socket)
            new = {fd: kind for fd, kind in final_fds.items() if baseline_fds.get(fd) != kind}
            problems.append(f"fds {baseline.fds} -> {final.fds} (new: {new})")
        if final.tasks > baseline.tasks:
            problems.append(f"tasks {baseline.tasks} -> {final.tasks}")
        if final.rss_kib > baseline.rss_kib * (1 + args.rss_slack):
            problems.append(f"RSS {baseline.rss_kib} -> {final.rss_kib} KiB")
        print("OK: back to baseline" if not problems else "LEAK? " + "; ".join(problems))
        return 1 if problems else 0
    finally:
        if relay is not None:
            relay.proc.send_signal(signal.SIGTERM)  # not relay.stop(): the drain reads stderr
            try:
                relay.proc.wait(15)
            except subprocess.TimeoutExpired:
                relay.proc.kill()
                relay.proc.wait()
            text = (workdir / "relay.log").read_text(errors="replace")
            if "Traceback" in text:
                print(text[-3000:], file=sys.stderr)
        origin.terminate()
        await origin.wait()


def _copy(stream: Any, path: Path) -> None:
    with path.open("wb") as out:
        for line in stream:
            out.write(line)
            out.flush()


def _log_summary(path: Path) -> dict[str, int]:
    """How many relay log lines of each level (``WARNING``...) the run produced."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            if f" {level} " in line or f'"level": "{level.lower()}"' in line.lower():
                counts[level] = counts.get(level, 0) + 1
                break
    return counts


def _wait(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=240.0, help="soak seconds (240)")
    parser.add_argument("--warmup", type=float, default=20.0, help="warm-up seconds (20)")
    parser.add_argument("--clients", type=int, default=40, help="concurrent clients (40)")
    parser.add_argument("--transport", choices=("tcp", "quic"), default="tcp")
    parser.add_argument("--reload-every", type=float, default=15.0, help="seconds (15)")
    parser.add_argument("--every", type=float, default=10.0, help="sampling seconds (10)")
    # Longer than the upstream pool's idle timeout (30 s): pooled tunnels must be gone too.
    parser.add_argument("--settle", type=float, default=40.0, help="idle seconds at the end")
    parser.add_argument(
        "--warmup-settle", type=float, default=40.0, help="idle seconds before the baseline"
    )
    parser.add_argument("--rss-slack", type=float, default=0.25, help="allowed RSS growth")
    parser.add_argument("--seed", type=int, default=1)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
