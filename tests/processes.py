"""Relay processes as users run them (``python -m relay run -C FILE``), for tests."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import core_mapping, edge_mapping, hop_node
from tests.helpers import read_head, request_bytes

RELAY = [sys.executable, "-m", "relay"]


#: Ports ``free_port`` returned in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not returned before by this process: two binds to port 0
    in a row may get the same port from the kernel, and a config that puts two services on it
    is refused (a soak run once failed so)."""
    while True:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        sock.close()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_http(url: str, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RelayProcess:
    def __init__(self, config: dict[str, object], tmp_path: Path, name: str = "relay") -> None:
        self.path = tmp_path / f"{name}.yaml"
        self.api = free_port()
        self.metrics = free_port()
        config = {
            **config,
            "api": {"addr": f"127.0.0.1:{self.api}"},
            "metrics": {"addr": f"127.0.0.1:{self.metrics}", "path": "/metrics"},
        }
        self.write(config)
        self.proc = subprocess.Popen([*RELAY, "run", "-C", str(self.path)], stderr=subprocess.PIPE)
        wait_http(f"http://127.0.0.1:{self.api}/healthz")

    def write(self, config: dict[str, object]) -> None:
        self.path.write_text(yaml.safe_dump(config))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode()


def edge_and_core_config(origin: int) -> dict[str, object]:
    """Edge (http) and core (relay) services in one process, the edge chained to the core."""
    core_port, edge_port = free_port(), free_port()
    core = core_mapping("tcp", origin)["services"][0]
    core["addr"] = f"127.0.0.1:{core_port}"
    edge = edge_mapping([hop_node("core-1", "tcp", core_port)])
    edge["services"][0]["addr"] = f"127.0.0.1:{edge_port}"
    edge["services"][0]["metadata"] = {"bufferSize": 65536}
    edge["services"].append(core)
    return edge


def port(config: dict[str, object], service: str) -> int:
    for svc in config["services"]:  # type: ignore[attr-defined]
        if svc["name"] == service:
            return int(svc["addr"].rsplit(":", 1)[1])
    raise KeyError(service)


async def slow_read_memory(relay: RelayProcess, edge_port: int) -> tuple[int, int, int, int]:
    """Ask the edge for a 512 MiB body and read it slowly (64 KiB per 0.1 s, 20 times), so the
    origin could send far more than the client takes. Returns (status, baseline RSS KiB, peak
    RSS KiB, bytes received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge_port, limit=1 << 16)
    baseline = rss_kib(relay.proc.pid)
    writer.write(request_bytes("GET", f"/bytes?n={512 << 20}"))
    status, _ = await read_head(reader)
    peak = baseline
    received = 0
    for _ in range(20):
        received += len(await reader.read(1 << 16))
        await asyncio.sleep(0.1)
        peak = max(peak, rss_kib(relay.proc.pid))
    writer.close()
    return status, baseline, peak, received
