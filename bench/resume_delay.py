"""The delay a resume adds to a stream: from the tunnel breaking to the first byte after it.

``python -m bench.resume_delay [--streams 20] [--rounds 5] [--interval-ms 10]``

An edge (``http``, chained with ``resume: true``), a core (``relay``) and the dev origin run in
this process, on loopback, with real sockets and real QUIC. ``--streams`` SSE streams run
through the edge; each round breaks every tunnel under them at once. Reported per stream:

* ``break_to_first_replayed_byte_ms``: from the edge seeing its tunnel lost to the first byte
  the edge gets over the resumed tunnel (timed inside the edge process, bench-only wrappers).
* ``client_longest_gap_ms``: the longest silence between two arrivals at the client, the stall
  the user sees; without a break it is the token interval (``--interval-ms``).

Breaks:
* ``tcp-reset``: a TCP forwarder between edge and core resets both sockets of every tunnel
  (what a middlebox dropping the flows does); the edge resumes over a new TCP connection.
* ``quic-close``: the edge's QUIC connection is closed with every stream on it; the edge
  resumes over a new QUIC connection (one handshake for all the streams).
* ``quic-to-wss``: the core's QUIC port goes away (UDP blocked); the edge's QUIC re-dial fails
  and the streams resume over the core's WSS listener. The QUIC dial timeout (``--quic-timeout``)
  bounds the wait for the failing QUIC dial, so it dominates this figure.

Every token of every stream is checked to arrive exactly once and in order. Detection is
immediate in all three (a reset, a CONNECTION_CLOSE); a path that goes silent is detected by
the transport's own keepalive/idle timeout first, which comes on top of these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from relay.config import config_from_mapping
from relay.dev_origin import serve_origin
from relay.resume.edge import ResumableTunnel
from relay.server import RelayNode
from relay.transports.quic import tunnel_pool
from tests.certs import issue, make_ca
from tests.conftest import core_mapping, edge_mapping, hop_node
from tests.cut_proxy import CutProxy
from tests.helpers import chat, read_head, request_bytes

SCENARIOS = ("tcp-reset", "quic-close", "quic-to-wss")


class EdgeProbe:
    """Times, per resumable tunnel on the edge, the break it saw and the first replayed byte
    it delivered after the resume (bench-only instrumentation: wraps three methods)."""

    def __init__(self) -> None:
        self.broke: dict[int, float] = {}
        self.attached: set[int] = set()
        self.first_replayed: dict[int, float] = {}
        self._saved: list[tuple[str, Any]] = []

    def install(self) -> None:
        probe = self
        lost, attach, data = (
            ResumableTunnel.inner_lost, ResumableTunnel._attach, ResumableTunnel.inner_data
        )  # fmt: skip

        def inner_lost(self: ResumableTunnel, generation: int, exc: Exception | None) -> None:
            probe.broke.setdefault(id(self), time.perf_counter())
            lost(self, generation, exc)

        def _attach(self: ResumableTunnel, *args: Any) -> None:
            probe.attached.add(id(self))
            attach(self, *args)

        def inner_data(self: ResumableTunnel, generation: int, chunk: bytes) -> None:
            key = id(self)
            if key in probe.attached and key not in probe.first_replayed:
                probe.first_replayed[key] = time.perf_counter()
            data(self, generation, chunk)

        self._saved = [("inner_lost", lost), ("_attach", attach), ("inner_data", data)]
        for name, method in (("inner_lost", inner_lost), ("_attach", _attach),
                             ("inner_data", inner_data)):  # fmt: skip
            setattr(ResumableTunnel, name, method)

    def uninstall(self) -> None:
        for name, method in self._saved:
            setattr(ResumableTunnel, name, method)

    def delays(self) -> list[float]:
        """Break seen by the edge -> first replayed byte, per resumed tunnel."""
        return [self.first_replayed[k] - self.broke[k] for k in self.first_replayed]


class Stream:
    """One SSE stream; records arrival times of its chunks and the token indices."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.seqs: list[int] = []
        self.done = False

    async def run(self, port: int, tokens: int, interval_ms: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(chat(tokens, interval_ms)).encode()
        writer.write(request_bytes("POST", "/v1/chat/completions", body))
        status, _ = await read_head(reader)
        assert status == 200, status
        pending = b""
        try:
            while b"data: [DONE]" not in pending:
                data = await reader.read(65536)
                if not data:
                    raise AssertionError("stream broke off")
                self.arrivals.append(time.perf_counter())
                pending += data
                while b'"seq":' in pending:
                    _, _, rest = pending.partition(b'"seq":')
                    digits = rest.split(b"}", 1)[0]
                    if b"}" not in rest:
                        break
                    self.seqs.append(int(digits))
                    pending = rest[len(digits) :]
            self.done = True
        finally:
            writer.close()

    def longest_gap(self) -> float:
        return max(b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False))

    def first_after(self, moment: float) -> float | None:
        later = [t for t in self.arrivals if t > moment]
        return later[0] - moment if later else None


async def _nodes(scenario: str, origin: int, tmp: Path, quic_timeout: float) -> tuple[
    RelayNode, RelayNode, Callable[[], Awaitable[None]], CutProxy | None
]:  # fmt: skip
    ca = make_ca(tmp)
    cert = issue(ca, "localhost", ("localhost", "127.0.0.1"))
    proxy: CutProxy | None = None
    if scenario == "tcp-reset":
        core = RelayNode(config_from_mapping(core_mapping("tcp", origin)))
        await core.start()
        proxy = CutProxy(core.bound_port("core"))
        nodes = [hop_node("core-1", "tcp", await proxy.start())]
    else:
        quic = core_mapping("quic", origin)["services"][0]
        quic["name"] = "core-quic"
        quic["listener"]["tls"] = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
        wss = core_mapping("wss", origin, cert)["services"][0]
        wss["name"] = "core-wss"
        core = RelayNode(config_from_mapping({"services": [quic, wss]}))
        await core.start()
        quic_node = hop_node("core-quic", "quic", core.bound_port("core-quic"))
        quic_node["dialer"]["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost"}
        quic_node["dialer"]["metadata"] = {"timeout": f"{quic_timeout}s"}
        nodes = [quic_node, hop_node("core-wss", "wss", core.bound_port("core-wss"), ca)]
    for node in nodes:
        node["connector"]["metadata"] = {"resume": True, "resumeWindow": "30s"}
    edge = RelayNode(
        config_from_mapping(edge_mapping(nodes, selector={"strategy": "fifo"}), base_dir=str(tmp))
    )
    await edge.start()

    async def cut() -> None:
        if proxy is not None:
            proxy.cut()
        elif scenario == "quic-close":
            for tunnel in list(tunnel_pool().tunnels.values()):
                tunnel.close()
        else:
            core.listener("core-quic").close()

    return edge, core, cut, proxy


async def one_round(scenario: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = await serve_origin("127.0.0.1", 0)
    origin = int(server.sockets[0].getsockname()[1])
    edge, core, cut, proxy = await _nodes(scenario, origin, tmp, args.quick_timeout)
    tokens = int(args.seconds * 1000 / args.interval_ms)
    probe = EdgeProbe()
    probe.install()
    streams = [Stream() for _ in range(args.streams)]
    tasks = [
        asyncio.create_task(s.run(edge.bound_port("edge"), tokens, args.interval_ms))
        for s in streams
    ]
    try:
        while not all(s.arrivals for s in streams):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        broke_at = time.perf_counter()
        await cut()
        await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + 60)
    finally:
        probe.uninstall()
        for task in tasks:
            task.cancel()
        await edge.stop(0)
        await core.stop(0)
        tunnel_pool().close()
        if proxy is not None:
            proxy.close()
        server.close()
    for stream in streams:
        assert stream.done and stream.seqs == list(range(tokens + 1)), "lost or repeated tokens"
    delays = [d for s in streams if (d := s.first_after(broke_at)) is not None]
    stats = edge.metrics.resume["edge"]
    return {
        "scenario": scenario,
        "interval_ms": args.interval_ms,
        "streams": len(streams),
        "resumed": stats.successes,
        "break_to_first_replayed_byte_ms": sorted(round(d * 1000, 2) for d in probe.delays()),
        "client_first_byte_after_cut_ms": sorted(round(d * 1000, 2) for d in delays),
        "longest_gap_ms": sorted(round(s.longest_gap() * 1000, 2) for s in streams),
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        mine = [r for r in rounds if r["scenario"] == scenario]
        if not mine:
            continue
        delays = [d for r in mine for d in r["break_to_first_replayed_byte_ms"]]
        gaps = [d for r in mine for d in r["longest_gap_ms"]]
        out[scenario] = {
            "rounds": len(mine),
            "streams_per_round": mine[0]["streams"],
            "resumed": sum(r["resumed"] for r in mine),
            "break_to_first_replayed_byte_ms": {
                "median": statistics.median(delays),
                "p95": pct(delays, 0.95),
                "max": max(delays),
            },
            "client_longest_gap_ms": {"median": statistics.median(gaps), "max": max(gaps)},
            "token_interval_ms": mine[0]["interval_ms"],
        }
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as directory:
        for index in range(args.rounds):
            for scenario in args.scenarios:
                tmp = Path(directory) / f"{scenario}-{index}"
                tmp.mkdir()
                rounds.append(await one_round(scenario, args, tmp))
                print(f"round {index + 1} {scenario}: done", file=sys.stderr)
    return {
        "command": " ".join(sys.argv),
        "interval_ms": args.interval_ms,
        "summary": summarize(rounds),
        "rounds": rounds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each stream")
    parser.add_argument("--quick-timeout", "--quic-timeout", type=float, default=1.0)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/resume-delay.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result = uvloop.run(main(arguments))
    arguments.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
