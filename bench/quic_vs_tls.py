"""Tokens/s and relay CPU per token over QUIC against TLS, for one edge → core pair.

``python -m bench.quic_vs_tls [--streams 100] [--rate 50] [--seconds 10] [--repeats 3]``

Edge, core and the dev origin each run in their own process (as ``aicdn-relay`` runs them); the
client runs here. Per transport and repeat: ``--streams`` concurrent SSE streams, each asking the
origin for ``--rate`` tokens per second, for ``--seconds``; then the same with no pause between
tokens (saturation). Reported: tokens delivered per second, and CPU seconds the edge and the core
used (from /proc) per 1000 tokens. The client and the origin share the machine: on a small box
the saturation figures measure the box as much as the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import yaml

from relay.dev_pki import issue, make_ca
from tests.processes import RELAY, free_port, wait_http

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _start(config: dict[str, Any], directory: Path, name: str) -> subprocess.Popen[bytes]:
    api = free_port()
    config = {**config, "api": {"addr": f"127.0.0.1:{api}"}, "log": {"level": "warn"}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*RELAY, "run", "-C", str(path)])
    wait_http(f"http://127.0.0.1:{api}/healthz")
    return proc


def _pair(transport: str, origin: int, directory: Path) -> tuple[Any, Any, int]:
    (directory / transport).mkdir()
    ca = make_ca(directory / transport)
    cert = issue(ca, "localhost")
    core_port, edge_port = free_port(), free_port()
    tls = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    core = {
        "services": [
            {
                "name": "core",
                "addr": f"127.0.0.1:{core_port}",
                "listener": {"type": transport, "tls": tls},
                "handler": {"type": "relay", "auth": {"username": "e", "password": "p"}},
                "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin}"}]},
            }
        ]
    }
    hop = {
        "name": "core-1",
        "addr": f"127.0.0.1:{core_port}",
        "connector": {"type": "relay", "auth": {"username": "e", "password": "p"}},
        "dialer": {
            "type": transport,
            "tls": {"caFile": str(ca.cert_file), "serverName": "localhost"},
        },
    }
    edge = {
        "services": [
            {
                "name": "edge",
                "addr": f"127.0.0.1:{edge_port}",
                "listener": {"type": "tcp"},
                "handler": {"type": "http", "chain": "to-core"},
            }
        ],
        "chains": [{"name": "to-core", "hops": [{"name": "core", "nodes": [hop]}]}],
    }
    core_proc = _start(core, directory, f"core-{transport}")
    edge_proc = _start(edge, directory, f"edge-{transport}")
    return edge_proc, core_proc, edge_port


async def _stream(port: int, tokens: int, interval_ms: float, stop_at: float) -> int:
    """Ask for streams back to back until ``stop_at``; count the token events received."""
    body = json.dumps(
        {"model": "m", "messages": [], "stream": True, "max_tokens": tokens,
         "interval_ms": interval_ms}
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    received = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            writer.write(head + body)
            await reader.readuntil(b"\r\n\r\n")
            while True:  # chunked body: count the events, stop at the last chunk
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunk = await reader.readexactly(size + 2)
                received += chunk.count(b'"delta"')
    finally:
        writer.close()
    return received


async def _measure(
    port: int,
    pids: tuple[int, int, int],
    streams: int,
    tokens: int,
    interval_ms: float,
    seconds: float,
) -> dict[str, float]:
    await _stream(port, 5, 0, time.monotonic() + 0.5)  # warm: connection, session, caches
    cpu_before = [_cpu_seconds(pid) for pid in pids]
    client_before = time.process_time()
    started = time.monotonic()
    counts = await asyncio.gather(
        *(_stream(port, tokens, interval_ms, started + seconds) for _ in range(streams))
    )
    wall = time.monotonic() - started
    edge_cpu, core_cpu, origin_cpu = (
        _cpu_seconds(p) - b for p, b in zip(pids, cpu_before, strict=True)
    )
    total = sum(counts)
    return {
        "tokens_per_s": total / wall,
        "edge_cpu_us_per_token": 1e6 * edge_cpu / total,
        "core_cpu_us_per_token": 1e6 * core_cpu / total,
        "edge_cpu_pct": 100 * edge_cpu / wall,
        "core_cpu_pct": 100 * core_cpu / wall,
        "origin_cpu_pct": 100 * origin_cpu / wall,
        "client_cpu_pct": 100 * (time.process_time() - client_before) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="quic-bench-"))
    origin_port = free_port()
    origin = subprocess.Popen([*RELAY, "dev-origin", "--listen", f"127.0.0.1:{origin_port}"])
    wait_http(f"http://127.0.0.1:{origin_port}/healthz")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    pairs: dict[str, tuple[Any, Any, int]] = {}
    try:
        for transport in ("tls", "quic"):
            pairs[transport] = _pair(transport, origin_port, directory)
        loads = {
            f"{args.streams}x{args.rate:g} tok/s": (200, 1000.0 / args.rate),
            "saturation": (200, 0.0),
        }
        for _ in range(args.repeats):
            for load, (tokens, interval) in loads.items():
                for transport, (edge, core, port) in pairs.items():
                    result = uvloop.run(
                        _measure(port, (edge.pid, core.pid, origin.pid), args.streams, tokens,
                                 interval, args.seconds)
                    )  # fmt: skip
                    results.setdefault((load, transport), []).append(result)
                    print(load, transport, {k: round(v, 1) for k, v in result.items()},
                          file=sys.stderr)  # fmt: skip
    finally:
        for edge, core, _ in pairs.values():
            edge.terminate()
            core.terminate()
        origin.terminate()
    print("\n| load | transport | tokens/s | edge CPU µs/token | core CPU µs/token |"
          " edge CPU % | core CPU % | origin CPU % | client CPU % |\n"
          "|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for (load, transport), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {load} | {transport} | {med['tokens_per_s']:.0f} | "
            f"{med['edge_cpu_us_per_token']:.1f} | {med['core_cpu_us_per_token']:.1f} | "
            f"{med['edge_cpu_pct']:.0f} | {med['core_cpu_pct']:.0f} | "
            f"{med['origin_cpu_pct']:.0f} | {med['client_cpu_pct']:.0f} |"
        )


if __name__ == "__main__":
    main()
