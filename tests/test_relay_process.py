"""The relay as users run it: the ``aicdn-relay`` command in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import read_body, read_head, request, request_bytes
from tests.processes import (
    RELAY,
    RelayProcess,
    edge_and_core_config,
    free_port,
    port,
    slow_read_memory,
    wait_http,
)


@pytest.mark.slow
async def test_slow_reader_does_not_grow_relay_memory(tmp_path: Path, origin_process: int) -> None:
    config = edge_and_core_config(origin_process)
    relay = RelayProcess(config, tmp_path)
    try:
        status, baseline, peak, received = await slow_read_memory(relay, port(config, "edge"))
        assert status == 200
        # The relay buffers at most bufferSize per direction and hop, not the 512 MiB on offer.
        assert peak - baseline < 16 * 1024, (baseline, peak)
        assert received > 0
    finally:
        relay.stop()


async def test_cli_run_metrics_reload_and_graceful_stop(
    tmp_path: Path, origin_process: int
) -> None:
    config = edge_and_core_config(origin_process)
    relay = RelayProcess(config, tmp_path)
    try:
        response = await request(port(config, "edge"), "POST", "/echo", {"n": 1})
        assert response.status == 200
        text = wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
        assert 'aicdn_requests_total{code="200",service="edge"} 1.0' in text
        assert 'aicdn_connections_total{handler="relay",service="core"}' in text
        assert 'aicdn_transfer_bytes_total{direction="out",service="edge"}' in text
        assert "process_resident_memory_bytes" in text

        # GET /config shows the running config with secrets redacted.
        shown = json.loads(wait_http(f"http://127.0.0.1:{relay.api}/config"))
        assert "s3cret" not in json.dumps(shown)

        # An invalid config is refused on reload and the running one stays.
        relay.write({"services": [{"name": "x", "addr": ":1", "listener": {"type": "qic"}}]})
        req = urllib.request.Request(f"http://127.0.0.1:{relay.api}/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 400
        issues = json.loads(refused.value.read())["issues"]
        assert any(i.startswith("services[0].listener.type") for i in issues)
        assert (await request(port(config, "edge"), "GET", "/healthz")).status == 200

        # SIGHUP with a valid new config: a new service appears, the old ones keep serving.
        extra = free_port()
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
        assert (await request(port(config, "edge"), "GET", "/healthz")).status == 200

        # SIGTERM drains: 100 streams in flight finish before the process exits.
        body = json.dumps({"messages": [], "stream": True, "max_tokens": 40, "interval_ms": 25})

        async def stream() -> tuple[int, bytes, bool]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port(config, "edge"))
            writer.write(request_bytes("POST", "/v1/chat/completions", body.encode()))
            status, headers = await read_head(reader)
            heads.append(status)
            if len(heads) == 100:  # every stream is under way
                started.set()
            data, complete = await read_body(reader, headers)
            writer.close()
            return status, data, complete

        heads: list[int] = []
        started = asyncio.Event()
        streams = [asyncio.create_task(stream()) for _ in range(100)]
        await asyncio.wait_for(started.wait(), 10)
        relay.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*streams)
        assert all(status == 200 and complete for status, _, complete in results)
        # 40 tokens, the stop chunk and [DONE] in every stream.
        assert all(data.count(b"data: ") == 42 for _, data, _ in results)
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
    expected = "unknown listener 'qic'; expected one of tcp, tls, ws, wss, mtcp, mtls, quic, http3"
    assert f"services[0].listener.type: {expected}" in bad_result.stderr
    assert "services[0].handler.chain" in bad_result.stderr
    assert "Traceback" not in bad_result.stderr
    assert good_result.returncode == 0
    assert broken_result.returncode == 1
    assert "line" in broken_result.stderr and "column" in broken_result.stderr
    assert "Traceback" not in broken_result.stderr
