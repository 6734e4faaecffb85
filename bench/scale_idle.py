"""Scale: one edge node (with workers) holding N concurrent idle tunneled connections.

    python -m bench.scale_idle --connections 100000 [--transport mtcp]

Topology, all on loopback: client processes → edge (``forward`` handler, ``workers``) → core
(``relay`` handler, ``workers``) over tcp, or over mtcp (each edge worker multiplexes its
tunnels on one session per core address) → sink processes that accept and hold. Every process
stays under the 20,000 open-files limit of this machine, so connections are spread over client
processes, relay workers and sinks. A relay worker holds two descriptors per connection over
tcp and one over mtcp (the sessions are few), so an mtcp edge needs half the workers. Reports
the edge's and the core's memory per held connection (RSS of all their processes, after minus
before, divided by N) and the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PY = sys.executable
FD_BUDGET = 18_000  # per process, under the 20,000 hard limit
#: Connections to one (address, port) can use each ephemeral source port once: about 28,000
#: on Linux's default range. Each hop therefore spreads its connections over several loopback
#: addresses (all of 127.0.0.0/8 is loopback).
PER_ADDRESS = 5_000


def _addresses(n: int) -> list[str]:
    return [f"127.0.0.{i + 2}" for i in range(max(1, -(-n // PER_ADDRESS)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(ports: list[int], procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Fail loudly unless every port accepts connections while its process lives."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("a relay process exited during start-up; see its log above")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nothing listens on port {port} after {timeout:g}s") from None
                time.sleep(0.2)


def _tree_rss_kib(pid: int) -> int:
    """RSS of ``pid`` and its children (a supervisor and its workers)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    pids += [int(c) for c in children]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def _sink(port: int) -> None:
    """Accept (on every loopback address, SO_REUSEPORT) and hold every connection."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(handle, "0.0.0.0", port, reuse_port=True, backlog=65535)
    async with server:
        await server.serve_forever()


async def _clients(port: int, count: int, report: str, first: int = 0) -> None:
    """Open ``count`` connections to the edge and hold them; write progress to ``report``.
    Connection ``i`` goes to loopback address ``_addresses`` round robin from ``first``."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.Transport] = []
    failed = 0
    batch = 200
    hosts = _addresses(count * 6)  # same list in every client process

    def host(i: int) -> str:
        return hosts[(first + i) % len(hosts)]

    for start in range(0, count, batch):
        results = await asyncio.gather(
            *(loop.create_connection(asyncio.Protocol, host(start + i), port)
              for i in range(min(batch, count - start))),
            return_exceptions=True,
        )  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                failed += 1
            else:
                held.append(result[0])
    Path(report).write_text(json.dumps({"held": len(held), "failed": failed}))
    await asyncio.Event().wait()


def _relay_config(
    name: str, workers: int, listen: int, listener: str, **service: object
) -> dict[str, object]:
    return {"workers": workers, "services": [{"name": name, "addr": f"0.0.0.0:{listen}",
            "listener": {"type": listener}, **service}], "log": {"level": "warn"}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait once held")
    parser.add_argument(
        "--transport", choices=("tcp", "mtcp"), default="tcp", help="between edge and core"
    )
    args = parser.parse_args(argv)
    n = args.connections
    transport = args.transport
    # Each held connection is 2 fds in a relay worker over tcp; over mtcp, 1 in the edge (the
    # client's) and 1 in the core (the sink's). The core keeps tcp's count: sessions land on
    # its workers by SO_REUSEPORT's hash, so some workers take more than their share.
    core_workers = max(1, -(-2 * n // FD_BUDGET))
    edge_workers = core_workers if transport == "tcp" else max(1, -(-n // FD_BUDGET))
    procs = max(1, -(-n // FD_BUDGET))
    edge_port, core_port, sink_port = _free_port(), _free_port(), _free_port()
    auth = {"username": "edge", "password": "bench"}
    started: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="aicdn-scale-"))
    try:
        for _ in range(procs):
            started.append(
                subprocess.Popen(
                    [
                        PY,
                        "-c",
                        f"import asyncio,bench.scale_idle as s; asyncio.run(s._sink({sink_port}))",
                    ]
                )
            )
        spread = list(enumerate(_addresses(n)))
        sinks = [{"name": f"sink-{i}", "addr": f"{a}:{sink_port}"} for i, a in spread]
        core_cfg = _relay_config(
            "core", core_workers, core_port, transport,
            handler={"type": "relay", "auth": auth}, forwarder={"nodes": sinks},
        )  # fmt: skip
        cores = [
            {"name": f"core-{i}", "addr": f"{a}:{core_port}",
             "connector": {"type": "relay", "auth": auth}, "dialer": {"type": transport}}
            for i, a in spread
        ]  # fmt: skip
        edge_cfg = _relay_config(
            "edge", edge_workers, edge_port, "tcp", handler={"type": "forward", "chain": "c"}
        )
        edge_cfg["chains"] = [{"name": "c", "hops": [{"name": "core", "nodes": cores}]}]
        (tmp / "core.yaml").write_text(yaml.safe_dump(core_cfg))
        (tmp / "edge.yaml").write_text(yaml.safe_dump(edge_cfg))
        core = subprocess.Popen([PY, "-m", "relay", "run", "-C", str(tmp / "core.yaml")])
        edge = subprocess.Popen([PY, "-m", "relay", "run", "-C", str(tmp / "edge.yaml")])
        started += [core, edge]
        workers = max(edge_workers, core_workers)
        _wait_listening([core_port, edge_port], [edge, core], timeout=30 + workers)
        time.sleep(workers * 0.3)  # the other workers of each supervisor
        base_edge, base_core = _tree_rss_kib(edge.pid), _tree_rss_kib(core.pid)
        t0 = time.monotonic()
        per_client = -(-n // procs)
        reports = []
        for i in range(procs):
            report = tmp / f"clients-{i}.json"
            reports.append(report)
            count = min(per_client, n - i * per_client)
            code = (
                f"import asyncio,bench.scale_idle as s; "
                f"asyncio.run(s._clients({edge_port}, {count}, {str(report)!r}, {i * per_client}))"
            )
            started.append(subprocess.Popen([PY, "-c", code]))
        while not all(r.exists() for r in reports):
            time.sleep(0.5)
        opened = time.monotonic() - t0
        held = sum(json.loads(r.read_text())["held"] for r in reports)
        failed = sum(json.loads(r.read_text())["failed"] for r in reports)
        time.sleep(args.settle)
        edge_kib, core_kib = _tree_rss_kib(edge.pid), _tree_rss_kib(core.pid)
        result = {
            "connections_asked": n,
            "held": held,
            "failed": failed,
            "seconds_to_open": round(opened, 1),
            "transport": transport,
            "edge_workers": edge_workers,
            "core_workers": core_workers,
            "client_processes": procs,
            "edge_rss_mib": round(edge_kib / 1024, 1),
            "edge_kib_per_connection": round((edge_kib - base_edge) / max(held, 1), 2),
            "core_rss_mib": round(core_kib / 1024, 1),
            "core_kib_per_connection": round((core_kib - base_core) / max(held, 1), 2),
        }
        print(json.dumps(result, indent=2))
        name = "scale-idle.json" if transport == "tcp" else f"scale-idle-{transport}.json"
        out = Path(__file__).parent / "results" / name
        out.write_text(
            json.dumps(
                {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result}, indent=2
            )
        )
    finally:
        for proc in reversed(started):
            proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
