"""``python -m bench.fleet_agents``: a simulated fleet of agents against a real master.

Starts nx-27017 (the master's embedded store; or ``--mongo-uri``) and ``aicdn-master serve``,
registers ``--agents`` nodes (``--cores`` of them core nodes, the rest edges), publishes the
``core`` and ``edge`` templates, then runs every agent in this one process on grpc.aio: each has
its own channel (its own TCP connection), registers at a random moment of the first interval,
keeps an ExecuteCommand stream open and heartbeats every ``--interval`` seconds. When a
heartbeat answers ``config_updated`` the agent does what the real one does on the wire --
PushConfig, verify the SHA-256, ReportStatus -- without touching a relay.

Measured:

* heartbeat latency (client side, Heartbeat RPC round trip) after the first interval and a
  half (the nodes start out running the initial versions, as after a deploy), apart for the
  steady state and for the wave that follows a publish (renders compete then);
* after ``--publish-at`` seconds a new edge version is published: the time from the publish
  call's return until each edge agent has reported it applied (the last one is
  "publish -> all agents"; the expectation is about one interval, as agents learn of it on
  their next heartbeat);
* CPU and RSS of the master, of the store and of this process over the run; RPC errors.

Results are printed and written to ``bench/results/fleet-agents-<stamp>.json``. The machine
(2 cores) is shared with whatever else runs: the numbers include that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench.system import free_port
from master_api import create_app
from master_api.extensions import repos, services
from master_api.models import User
from master_api.settings import Settings
from master_api.store import EmbeddedMongo, port_open
from relay.agent.rpc import AgentStub, auth_metadata, channel_options, make_stub, pb

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
DB = "aicdn_bench"
PASSWORD = "bench password 1234"
#: Deadline of each call, as the real agent's default ``rpc_timeout``.
RPC_TIMEOUT = 10.0
TEMPLATE_PARAMS = {"edge_password": "bench-pass-123"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Options:
    agents: int
    interval: float
    duration: float
    publish_at: float
    cores: int
    mongo_uri: str | None
    grpc_threads: int


@dataclass
class Stats:
    """What the simulated agents observed."""

    heartbeat_ms: list[float] = field(default_factory=list)
    wave_heartbeat_ms: list[float] = field(default_factory=list)
    """Heartbeats while the agents fetch a published version (renders compete)."""
    register_ms: list[float] = field(default_factory=list)
    push_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    applied_at: dict[int, dict[str, float]] = field(default_factory=dict)
    """version -> node id -> monotonic time its ReportStatus(applied) returned."""
    streams_open: int = 0
    measuring: bool = False
    wave: bool = False


@dataclass
class SimAgent:
    node_id: str
    token: str
    node_type: str
    applied: int | None = None


def _cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 2**20


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "p50": round(pick(0.50), 2),
        "p90": round(pick(0.90), 2),
        "p99": round(pick(0.99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


# --- the simulated agent -------------------------------------------------------------------------


async def _command_stream(stub: AgentStub, metadata: Any, stats: Stats) -> None:
    """Hold an ExecuteCommand stream open (answering any command with ok)."""
    call = stub.ExecuteCommand(metadata=metadata)
    await call.write(pb.AgentMessage(hello=pb.Hello(agent_version="bench")))
    stats.streams_open += 1
    try:
        async for command in call:
            await call.write(
                pb.AgentMessage(result=pb.CommandResult(id=command.id, ok=True, output="bench"))
            )
    finally:
        stats.streams_open -= 1


async def _apply(stub: AgentStub, agent: SimAgent, metadata: Any, stats: Stats) -> None:
    started = time.monotonic()
    pushed = await stub.PushConfig(pb.PushConfigRequest(), metadata=metadata, timeout=RPC_TIMEOUT)
    digest = hashlib.sha256(pushed.config_yaml.encode()).hexdigest()
    outcome = pb.APPLIED if digest == pushed.checksum else pb.REJECTED
    await stub.ReportStatus(
        pb.ReportStatusRequest(
            version=pushed.version, outcome=outcome, applied_version=pushed.version
        ),
        metadata=metadata,
        timeout=RPC_TIMEOUT,
    )
    stats.push_ms.append((time.monotonic() - started) * 1000)
    if outcome == pb.APPLIED:
        agent.applied = pushed.version
        stats.applied_at.setdefault(pushed.version, {})[agent.node_id] = time.monotonic()
    else:
        stats.errors["checksum"] += 1


async def run_agent(
    agent: SimAgent, target: str, options: Options, stats: Stats, stop: asyncio.Event
) -> None:
    """One agent until ``stop``: register, command stream, heartbeats, applies."""
    metadata = auth_metadata(agent.node_id, agent.token)
    # Each agent its own connection, as on a real fleet (no shared subchannel).
    channel_opts = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
    await asyncio.sleep(random.uniform(0, options.interval))
    async with grpc.aio.insecure_channel(target, options=channel_opts) as channel:
        stub = make_stub(channel)
        stream: asyncio.Task[None] | None = None
        while not stop.is_set():
            started = time.monotonic()
            try:
                if stream is None:
                    await stub.Register(
                        pb.RegisterRequest(
                            agent_version="bench", hostname="bench", applied_version=agent.applied
                        ),
                        metadata=metadata,
                        timeout=RPC_TIMEOUT,
                    )
                    stats.register_ms.append((time.monotonic() - started) * 1000)
                    stream = asyncio.create_task(_command_stream(stub, metadata, stats))
                    started = time.monotonic()
                reply = await stub.Heartbeat(
                    pb.HeartbeatRequest(
                        metrics=pb.NodeMetrics(
                            connections=random.randint(0, 500),
                            requests_total=1000,
                            errors_total=0,
                            error_rate=0.0,
                            p99_latency_ms=random.uniform(5, 50),
                            cpu_percent=random.uniform(1, 20),
                            memory_bytes=50_000_000,
                            config_version=agent.applied,
                        ),
                        applied_version=agent.applied,
                        relay_up=True,
                    ),
                    metadata=metadata,
                    timeout=RPC_TIMEOUT,
                )
                if stats.wave:
                    stats.wave_heartbeat_ms.append((time.monotonic() - started) * 1000)
                elif stats.measuring:
                    stats.heartbeat_ms.append((time.monotonic() - started) * 1000)
                if reply.config_updated:
                    await _apply(stub, agent, metadata, stats)
            except grpc.aio.AioRpcError as exc:
                stats.errors[exc.code().name] += 1
            elapsed = time.monotonic() - started
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, options.interval - elapsed))
            except TimeoutError:
                pass
        if stream is not None:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)


# --- setting the fleet up ------------------------------------------------------------------------


def _settings(mongo_uri: str) -> Settings:
    return Settings(
        mongo_uri=mongo_uri,
        mongo_db=DB,
        jwt_secret="b" * 48,
        password_time_cost=1,
        password_memory_kib=8,
        password_parallelism=1,
    )


def prepare(mongo_uri: str, options: Options) -> tuple[list[SimAgent], Any]:
    """Fresh database: an operator, the nodes, active core and edge versions."""
    from pymongo import MongoClient

    MongoClient(mongo_uri).drop_database(DB)
    app = create_app(_settings(mongo_uri))
    with app.app_context():
        now = time.time()
        hashed = services().passwords.hash(PASSWORD)
        repos().users.create(User("bench", "operator", hashed, now, now))
    client = app.test_client()
    environ = {"REMOTE_ADDR": "127.0.0.1"}
    login = client.post(
        "/api/v1/auth/login",
        json={"username": "bench", "password": PASSWORD},
        environ_base=environ,
    )
    headers = {"Authorization": f"Bearer {login.json['access_token']}"}

    def call(method: str, path: str, body: Any = None) -> Any:
        answer = client.open(path, method=method, json=body, headers=headers, environ_base=environ)
        assert answer.status_code < 300, (path, answer.status_code, answer.json)
        return answer.json

    agents: list[SimAgent] = []
    for index in range(options.agents):
        kind = "core" if index < options.cores else "edge"
        node = call(
            "POST",
            "/api/v1/nodes",
            {
                "name": f"{kind}-{index:05d}",
                "type": kind,
                "region": "cn" if kind == "core" else random.choice(["hk", "us", "sg"]),
                "addr": f"10.{index // 65536}.{index // 256 % 256}.{index % 256}",
                "port": 8443 if kind == "core" else 443,
            },
        )
        agents.append(SimAgent(node["id"], node["token"], kind))
    # The fleet already runs the initial versions (as after a deploy), so the start is not one
    # big push; the measured publish comes later.
    initial = {kind: publish(call, kind, "initial") for kind in ("core", "edge")}
    for agent in agents:
        agent.applied = initial[agent.node_type]
    return agents, call


def publish(call: Any, kind: str, description: str) -> int:
    version = call(
        "POST",
        "/api/v1/configs",
        {
            "node_type": kind,
            "template": kind,
            "params": TEMPLATE_PARAMS,
            "description": description,
        },
    )["version_id"]
    call("POST", f"/api/v1/configs/{version}/publish")
    return int(version)


def start_master(
    mongo_uri: str, workdir: Path, options: Options
) -> tuple[subprocess.Popen[bytes], str, int]:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "AICDN_MONGO_URI": mongo_uri,
        "AICDN_MONGO_DB": DB,
        "AICDN_JWT_SECRET": "b" * 48,
        "AICDN_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "AICDN_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "AICDN_DATA_DIR": str(workdir / "var"),
        "AICDN_HEARTBEAT_INTERVAL": str(options.interval),
        "AICDN_GRPC_THREADS": str(options.grpc_threads),
        "AICDN_MONGO_TIMEOUT": "10",
        "PYTHONPATH": str(REPO),
    }
    log = open(workdir / "master.log", "wb")  # noqa: SIM115 - the child writes it until the end
    proc = subprocess.Popen(
        [sys.executable, "-m", "master_api", "serve"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", grpc_port) or not port_open("127.0.0.1", http_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the master did not start; see {workdir / 'master.log'}")
        time.sleep(0.1)
    urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/healthz", timeout=10).read()
    return proc, f"127.0.0.1:{grpc_port}", http_port


# --- the run -------------------------------------------------------------------------------------


async def drive(
    agents: list[SimAgent], target: str, options: Options, call: Any, pids: dict[str, int]
) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    cpu_start = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    tasks = [
        asyncio.create_task(run_agent(agent, target, options, stats, stop)) for agent in agents
    ]
    edges = {a.node_id for a in agents if a.node_type == "edge"}
    result: dict[str, Any] = {}

    await asyncio.sleep(options.interval * 1.5)  # everyone registered and applied v1
    stats.measuring = True
    measure_start = time.monotonic()
    cpu_measure = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(max(0.0, options.publish_at - (time.monotonic() - started)))
    stats.wave = True
    version = await loop.run_in_executor(None, publish, call, "edge", "bench update")
    published = time.monotonic()
    print(f"[{published - started:5.1f}s] published edge version {version}", flush=True)
    deadline = published + options.interval * 6
    while time.monotonic() < deadline:
        done = stats.applied_at.get(version, {})
        if edges <= done.keys():
            break
        await asyncio.sleep(0.05)
    stats.wave = False
    done = stats.applied_at.get(version, {})
    delays = [(done[node] - published) * 1000 for node in edges if node in done]
    result["publish_to_all_s"] = round(max(delays) / 1000, 2) if len(delays) == len(edges) else None
    result["publish_delay_ms"] = _percentiles(delays)
    result["edges_applied"] = f"{len(delays)}/{len(edges)}"
    await asyncio.sleep(max(0.0, options.duration - (time.monotonic() - started)))
    window = time.monotonic() - measure_start
    cpu_end = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    result["streams_open_at_end"] = stats.streams_open
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    result["measured_window_s"] = round(window, 1)
    result["heartbeat_ms_steady"] = _percentiles(stats.heartbeat_ms)
    result["heartbeat_ms_during_publish_wave"] = _percentiles(stats.wave_heartbeat_ms)
    beats = len(stats.heartbeat_ms) + len(stats.wave_heartbeat_ms)
    result["heartbeats_per_s"] = round(beats / window, 1)
    result["register_ms"] = _percentiles(stats.register_ms)
    result["push_and_report_ms"] = _percentiles(stats.push_ms)
    result["errors"] = dict(stats.errors)
    result["cpu_percent_measured_window"] = {
        name: round((cpu_end[name] - cpu_measure[name]) / window * 100, 1) for name in pids
    }
    result["cpu_seconds_whole_run"] = {
        name: round(cpu_end[name] - cpu_start[name], 1) for name in pids
    }
    result["rss_mib_at_end"] = {name: round(_rss_mib(pid), 1) for name, pid in pids.items()}
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_agents", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument(
        "--cores",
        type=int,
        default=10,
        help="how many of them are core nodes (every edge chains to every core)",
    )
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, s")
    parser.add_argument("--duration", type=float, default=60.0, help="length of the run, s")
    parser.add_argument(
        "--publish-at", type=float, default=30.0, help="when to publish the new edge version, s"
    )
    parser.add_argument("--mongo-uri", help="a MongoDB to use instead of a fresh nx-27017")
    parser.add_argument("--grpc-threads", type=int, default=8, help="AICDN_GRPC_THREADS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = Options(
        agents=args.agents,
        interval=args.interval,
        duration=args.duration,
        publish_at=args.publish_at,
        cores=min(args.cores, args.agents - 1),
        mongo_uri=args.mongo_uri,
        grpc_threads=args.grpc_threads,
    )
    workdir = Path(tempfile.mkdtemp(prefix="aicdn-fleet-bench-"))
    embedded: EmbeddedMongo | None = None
    master: subprocess.Popen[bytes] | None = None
    try:
        mongo_uri = options.mongo_uri
        pids: dict[str, int] = {"bench": os.getpid()}
        if mongo_uri is None:
            embedded = EmbeddedMongo(workdir / "mongo", free_port())
            embedded.start()
            mongo_uri = embedded.uri
            if embedded.process is not None:
                pids["store"] = embedded.process.pid
        t0 = time.monotonic()
        agents, call = prepare(mongo_uri, options)
        print(f"registered {len(agents)} nodes in {time.monotonic() - t0:.1f}s", flush=True)
        master, target, _ = start_master(mongo_uri, workdir, options)
        pids["master"] = master.pid
        result = asyncio.run(drive(agents, target, options, call, pids))
    finally:
        if master is not None:
            master.send_signal(signal.SIGTERM)
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                master.kill()
        if embedded is not None:
            embedded.stop()
    report = {
        "bench": "fleet_agents",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "machine": {"cpus": os.cpu_count(), "note": "shared with other work while measured"},
        "results": result,
        "master_log": str(workdir / "master.log"),
    }
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"fleet-agents-{stamp}-{secrets.token_hex(2)}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
