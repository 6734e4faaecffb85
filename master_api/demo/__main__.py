"""``make demo``: the whole loop on this machine, driven through the master.

1. Start the master (with its embedded store), create an operator, boot two podman hosts
   (local-connection hosts where podman cannot run) and register them as a core (cn) and an
   edge (hk); the LLM-like origin runs on this machine.
2. Publish core and edge configs and deploy the relay through ``POST /deployments``: the
   playbooks run through ansible-runner and their events print live.
3. Stream a chat completion with the OpenAI SDK through edge -> core (TLS 1.3) -> origin,
   printing each token with its delay in the tunnel.
4. Publish an edge config change and apply it hot (the reload playbook) while a stream runs:
   the stream loses nothing and the relay process is the same.
5. Roll the edge config back, apply it, and show the history.
6. Stop everything and say where the logs are (``--keep`` leaves the fleet running).

Any failed step stops the demo with a non-zero exit and the reason.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

from master_api.demo.client import ApiClient, StreamResult, stream_completion
from master_api.demo.fleet import FleetSteps, release_name
from master_api.demo.hosts import HostError, Hosts, PodmanHosts
from master_api.demo.local_hosts import LocalHosts
from master_api.demo.pki import make_pki
from master_api.demo.processes import DemoProcesses

REPO = Path(__file__).resolve().parents[2]
USER = "demo"


class DemoFailed(RuntimeError):
    """A step did not do what it should; the message says which and why."""


def say(text: str) -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def stream_and_print(edge_url: str, tokens: int = 20) -> StreamResult:
    def show(seq: int, text: str, elapsed: float, delay: float) -> None:
        say(f"  +{elapsed * 1000:8.1f} ms  tunnel {delay:5.2f} ms  {text!r}")

    result = stream_completion(edge_url, tokens, interval_ms=50, on_token=show)
    if not result.complete or len(result.seqs) != tokens:
        raise DemoFailed(f"the stream broke: {len(result.seqs)}/{tokens} tokens, {result.error}")
    say(f"  {result.summary()}")
    return result


def hot_change(
    fleet: FleetSteps, hosts: Hosts, edge_url: str, config_version: int, what: str
) -> None:
    """Apply edge ``config_version`` with the reload playbook while a stream runs through the
    edge; the stream must complete whole and the relay keep its PID."""
    pid_before, running_before = hosts.relay_state(hosts.edge)
    tokens, interval_ms = 1200, 50  # 60 s: longer than a reload through Ansible takes
    holder: list[StreamResult] = []
    arrived: list[int] = []
    thread = threading.Thread(
        target=lambda: holder.append(
            stream_completion(edge_url, tokens, interval_ms, lambda s, *_: arrived.append(s))
        ),
        daemon=True,
    )
    thread.start()
    while not arrived and thread.is_alive():
        time.sleep(0.05)
    if not arrived:
        raise DemoFailed(f"the stream before the change failed: {holder[0].error}")
    say(f"  a {tokens}-token stream is running through the edge (config v{running_before})")
    fleet.deploy(
        {"playbook": "reload", "config_version": config_version,
         "selector": {"nodes": [hosts.edge.node]}},
        quiet_tasks=True,
    )  # fmt: skip
    at_reload = len(arrived)
    if not thread.is_alive():
        raise DemoFailed("the stream ended before the reload did: it did not cross the change")
    pid_after, running_after = hosts.relay_state(hosts.edge)
    say(
        f"  the edge runs config v{running_after} ({what}); relay PID {pid_before} -> "
        f"{pid_after}; the stream was at token {at_reload} when the reload finished"
    )
    while thread.is_alive():
        thread.join(5)
        if thread.is_alive():
            say(f"  ... stream at token {len(arrived)}/{tokens}")
    result = holder[0]
    if running_after != config_version:
        raise DemoFailed(f"the edge runs config v{running_after}, not v{config_version}")
    if pid_after != pid_before:
        raise DemoFailed(f"the edge relay restarted (PID {pid_before} -> {pid_after}), not hot")
    if not result.complete or len(result.seqs) != tokens:
        raise DemoFailed(
            f"the stream across the reload broke: {len(result.seqs)}/{tokens} tokens, "
            f"{result.error}"
        )
    say(f"  stream across the reload: {len(result.seqs)}/{tokens} tokens, in order, no break")


def show_history(api: ApiClient) -> None:
    say("  config history (edge):")
    for entry in reversed(api.call("GET", "/configs/history?node_type=edge")["items"]):
        moved = f"v{entry['from_version']} -> v{entry['to_version']}"
        say(f"    {entry['at']}  {entry['action']:<9} {moved:<12} by {entry['actor']}")
    say("  deployments:")
    for d in reversed(api.call("GET", "/deployments")["items"]):
        say(f"    {d['created_at']}  {d['playbook']:<8} {d['status']:<11} {d['id']}")


def choose_hosts(kind: str, workdir: Path) -> Hosts:
    """``podman`` or ``local`` as asked; ``auto``: podman where it works, else local."""
    if kind == "local":
        return LocalHosts(workdir)
    podman = PodmanHosts()
    try:
        podman.check()
    except HostError as exc:
        if kind == "podman":
            raise
        say(f"podman hosts are not possible here ({exc}): using local hosts instead")
        return LocalHosts(workdir)
    return podman


def run(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    procs = DemoProcesses(workdir)
    password = secrets.token_urlsafe(12)
    started = time.monotonic()
    ok = False
    hosts: Hosts | None = None
    try:
        step("1. Master, store, hosts and origin")
        stop_earlier(workdir)
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        hosts = choose_hosts(args.hosts, workdir)
        hosts.check()
        hosts.start()
        core, edge = hosts.core, hosts.edge
        say(f"{hosts.kind} hosts ready: {core.node} {core.addr}, {edge.node} {edge.addr}")
        procs.start_origin(hosts.origin)
        say(f"origin (LLM-like, SSE) on {hosts.origin}")
        procs.start_master(USER, password, hosts.connection)
        say(f"master on {procs.master_url} (embedded store in {workdir / 'master'}); "
            f"operator '{USER}' created")  # fmt: skip
        api = ApiClient(procs.master_url, USER, password)
        fleet = FleetSteps(api, secrets.token_urlsafe(16), say)
        fleet.register_fleet(hosts, make_pki(workdir / "pki", core.addr))

        step("2. Publish configs and deploy the relay through the master")
        fleet.publish("core", fleet.core_params(hosts), f"core: TLS tunnel on {core.port}")
        edge_v1 = fleet.publish(
            "edge", fleet.edge_params(hosts), f"edge: HTTP on {edge.port}, TLS to cores"
        )
        release = release_name(REPO)
        fleet.deploy({"playbook": "deploy", "release": release, "auto_rollback": True})

        edge_url = f"http://{edge.addr}:{edge.port}"
        step(f"3. A chat completion: OpenAI SDK -> {edge_url} -> core (TLS 1.3) -> origin")
        stream_and_print(edge_url)

        step("4. A config change, applied hot while a stream runs")
        edge_v2 = fleet.publish(
            "edge", fleet.edge_params(hosts, idle_timeout="120s"), "idle timeout 120s"
        )
        hot_change(fleet, hosts, edge_url, edge_v2, "idle_timeout 120s")

        step("5. Roll the edge config back and apply it")
        record = api.call("POST", "/configs/rollback", {"node_type": "edge", "region": "*",
                                                         "reason": "demo"})  # fmt: skip
        say(f"  edge config rolled back: v{record['from_version']} -> v{record['to_version']}")
        if record["to_version"] != edge_v1:
            raise DemoFailed(f"rollback went to v{record['to_version']}, not v{edge_v1}")
        fleet.deploy({"playbook": "reload", "selector": {"node_type": "edge"}}, quiet_tasks=True)
        running = hosts.relay_state(edge)[1]
        if running != edge_v1:
            raise DemoFailed(f"after the rollback the edge runs v{running}, not v{edge_v1}")
        say(f"  the edge runs v{running} again")
        stream_and_print(edge_url, tokens=5)
        show_history(api)
        ok = True
    finally:
        step("6. " + ("Done" if ok else "Stopped on an error"))
        if args.keep and ok:
            say(f"left running: master {procs.master_url} (operator {USER} / {password}) and "
                f"the {hosts.kind if hosts else ''} hosts; stop with "
                f"`python -m master_api.demo --down`")  # fmt: skip
        else:
            procs.stop()
            if hosts is not None:
                hosts.stop()
            say("master, origin and hosts stopped")
        say(f"logs: {procs.logs}/master.log, {procs.logs}/origin.log; store: {workdir}/master")
        say(f"API: {procs.master_url or 'http://127.0.0.1:PORT'}/api/v1/openapi.json "
            f"(log in: POST /api/v1/auth/login)")  # fmt: skip
        say(f"took {time.monotonic() - started:.0f} s")
    return 0


def stop_earlier(workdir: Path) -> list[str]:
    """Stop what an earlier demo left running: its processes, containers and local relays."""
    DemoProcesses(workdir).stop_recorded()
    stopped = PodmanHosts().stop() + LocalHosts(workdir).stop()
    if stopped:
        say(f"stopped the hosts of an earlier demo: {', '.join(stopped)}")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m master_api.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "build" / "demo",
        help="data and logs (default build/demo; wiped at start)",
    )
    parser.add_argument(
        "--hosts",
        choices=("auto", "podman", "local"),
        default="auto",
        help="podman containers, or local-connection hosts (auto: podman where it works)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the fleet running at the end")
    parser.add_argument("--down", action="store_true", help="stop a kept demo")
    args = parser.parse_args(argv)
    if args.down:
        stop_earlier(args.workdir)
        return 0
    try:
        return run(args)
    except (DemoFailed, HostError) as exc:
        say(f"\nDEMO FAILED: {exc}")
        return 1
    except Exception as exc:  # any other failure is the demo's too: say so loudly
        say(f"\nDEMO FAILED: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
