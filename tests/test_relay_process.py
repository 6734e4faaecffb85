"""The relay as users run it: the ``aicdn-relay`` command in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import core_mapping, edge_mapping, hop_node
from tests.helpers import read_body, read_head, request, request_bytes

RELAY = [sys.executable, "-m", "relay"]


def _free_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def _wait_http(url: str, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RelayProcess:
    def __init__(self, config: dict[str, object], tmp_path: Path, name: str = "relay") -> None:
        self.path = tmp_path / f"{name}.yaml"
        self.api = _free_port()
        self.metrics = _free_port()
        config = {
            **config,
            "api": {"addr": f"127.0.0.1:{self.api}"},
            "metrics": {"addr": f"127.0.0.1:{self.metrics}", "path": "/metrics"},
        }
        self.write(config)
        self.proc = subprocess.Popen([*RELAY, "run", "-C", str(self.path)], stderr=subprocess.PIPE)
        _wait_http(f"http://127.0.0.1:{self.api}/healthz")

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


@pytest.fixture
def origin_process() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen([*RELAY, "dev-origin", "--listen", f"127.0.0.1:{port}"])
    _wait_http(f"http://127.0.0.1:{port}/healthz")
    yield port
    proc.terminate()
    proc.wait(10)


def _edge_and_core_config(origin: int) -> dict[str, object]:
    """Edge (http) and core (relay) services in one process, the edge chained to the core."""
    core_port, edge_port = _free_port(), _free_port()
    core = core_mapping("tcp", origin)["services"][0]
    core["addr"] = f"127.0.0.1:{core_port}"
    edge = edge_mapping([hop_node("core-1", "tcp", core_port)])
    edge["services"][0]["addr"] = f"127.0.0.1:{edge_port}"
    edge["services"][0]["metadata"] = {"bufferSize": 65536}
    edge["services"].append(core)
    return edge


def _port(config: dict[str, object], service: str) -> int:
    for svc in config["services"]:  # type: ignore[attr-defined]
        if svc["name"] == service:
            return int(svc["addr"].rsplit(":", 1)[1])
    raise KeyError(service)


@pytest.mark.slow
async def test_slow_reader_does_not_grow_relay_memory(tmp_path: Path, origin_process: int) -> None:
    config = _edge_and_core_config(origin_process)
    relay = RelayProcess(config, tmp_path)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", _port(config, "edge"), limit=1 << 16
        )
        baseline = _rss_kib(relay.proc.pid)
        writer.write(request_bytes("GET", f"/bytes?n={512 << 20}"))
        status, _ = await read_head(reader)
        assert status == 200
        peak = baseline
        received = 0
        # Read 2 MiB every 0.1 s: the origin could send 512 MiB at once, the client won't take it.
        for _ in range(20):
            received += len(await reader.read(1 << 16))
            await asyncio.sleep(0.1)
            peak = max(peak, _rss_kib(relay.proc.pid))
        writer.close()
        # The relay buffers at most bufferSize per direction and hop, not the 512 MiB on offer.
        assert peak - baseline < 16 * 1024, (baseline, peak)
        assert received > 0
    finally:
        relay.stop()


async def test_cli_run_metrics_reload_and_graceful_stop(
    tmp_path: Path, origin_process: int
) -> None:
    config = _edge_and_core_config(origin_process)
    relay = RelayProcess(config, tmp_path)
    try:
        response = await request(_port(config, "edge"), "POST", "/echo", {"n": 1})
        assert response.status == 200
        text = _wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
        assert 'aicdn_requests_total{code="200",service="edge"} 1.0' in text
        assert 'aicdn_connections_total{handler="relay",service="core"}' in text
        assert 'aicdn_transfer_bytes_total{direction="out",service="edge"}' in text
        assert "process_resident_memory_bytes" in text

        # GET /config shows the running config with secrets redacted.
        shown = json.loads(_wait_http(f"http://127.0.0.1:{relay.api}/config"))
        assert "s3cret" not in json.dumps(shown)

        # An invalid config is refused on reload and the running one stays.
        relay.write({"services": [{"name": "x", "addr": ":1", "listener": {"type": "qic"}}]})
        req = urllib.request.Request(f"http://127.0.0.1:{relay.api}/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 400
        issues = json.loads(refused.value.read())["issues"]
        assert any(i.startswith("services[0].listener.type") for i in issues)
        assert (await request(_port(config, "edge"), "GET", "/healthz")).status == 200

        # SIGHUP with a valid new config: a new service appears, the old ones keep serving.
        extra = _free_port()
        config["services"].append(  # type: ignore[attr-defined]
            {"name": "direct", "addr": f"127.0.0.1:{extra}", "listener": {"type": "tcp"},
             "handler": {"type": "http"},
             "forwarder": {"nodes": [{"name": "o", "addr": f"127.0.0.1:{origin_process}"}]}}
        )  # fmt: skip
        relay.write({**config, "api": {"addr": f"127.0.0.1:{relay.api}"}})
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert (await request(extra, "GET", "/healthz", timeout=2)).status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert (await request(_port(config, "edge"), "GET", "/healthz")).status == 200

        # SIGTERM drains: a stream in flight finishes before the process exits.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(config, "edge"))
        body = json.dumps({"messages": [], "stream": True, "max_tokens": 20, "interval_ms": 25})
        writer.write(request_bytes("POST", "/v1/chat/completions", body.encode()))
        status, headers = await read_head(reader)
        relay.proc.send_signal(signal.SIGTERM)
        data, complete = await read_body(reader, headers)
        assert status == 200 and complete
        assert data.count(b"data: ") == 22  # 20 tokens, the stop chunk, [DONE]
        assert relay.proc.wait(10) == 0
    finally:
        relay.stop()


def test_check_command_reports_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n"
        "- name: a\n  addr: ':8080'\n  listener: {type: qic}\n"
        "  handler: {type: http, chain: nope}\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "services": [
                    {
                        "name": "a",
                        "addr": ":8080",
                        "listener": {"type": "tcp"},
                        "handler": {"type": "http"},
                        "forwarder": {"nodes": [{"name": "o", "addr": "127.0.0.1:8000"}]},
                    }
                ]
            }
        )
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("services: [\n  {name: a,\n")

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RELAY, "check", "-C", str(path)], capture_output=True, text=True, env=env
        )

    bad_result, good_result, broken_result = check(bad), check(good), check(broken)

    assert bad_result.returncode == 1
    expected = "unknown listener 'qic'; expected one of tcp, tls, ws, wss, quic, http3"
    assert f"services[0].listener.type: {expected}" in bad_result.stderr
    assert "services[0].handler.chain" in bad_result.stderr
    assert "Traceback" not in bad_result.stderr
    assert good_result.returncode == 0
    assert broken_result.returncode == 1
    assert "line" in broken_result.stderr and "column" in broken_result.stderr
    assert "Traceback" not in broken_result.stderr
