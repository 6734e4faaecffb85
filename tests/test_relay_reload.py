"""Hot reload under load: streams in flight never notice; new connections get the new config."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import core_mapping
from tests.helpers import chat, request
from tests.processes import RelayProcess, edge_and_core_config, free_port, port, wait_http

STREAMS = 200
TOKENS = 100


def _with_second_core(config: dict[str, Any], origin: int) -> dict[str, Any]:
    core_b = core_mapping("tcp", origin)["services"][0]
    core_b["name"] = "core-b"
    core_b["addr"] = f"127.0.0.1:{free_port()}"
    config["services"].append(core_b)
    return config


def _point_chain_at(config: dict[str, Any], service: str) -> None:
    node = config["chains"][0]["hops"][0]["nodes"][0]
    node["addr"] = f"127.0.0.1:{port(config, service)}"


def _count(metrics: str, name: str, service: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'service="{service}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
async def test_reload_under_load_breaks_no_stream(tmp_path: Path, origin_process: int) -> None:
    config = _with_second_core(edge_and_core_config(origin_process), origin_process)
    relay = RelayProcess(config, tmp_path)
    edge = port(config, "edge")
    try:
        streams = [
            asyncio.create_task(
                request(edge, "POST", "/v1/chat/completions", chat(TOKENS, 20), timeout=60)
            )
            for _ in range(STREAMS)
        ]
        await asyncio.sleep(0.5)  # all streams are under way

        _point_chain_at(config, "core-b")
        config["version"] = 2
        relay.write({**config, "api": {"addr": f"127.0.0.1:{relay.api}"},
                     "metrics": {"addr": f"127.0.0.1:{relay.metrics}"}})  # fmt: skip
        relay.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            metrics = wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
            if "aicdn_config_version 2.0" in metrics:
                break
            await asyncio.sleep(0.05)
        assert "aicdn_config_version 2.0" in metrics

        after = await request(edge, "GET", "/healthz")
        responses = await asyncio.gather(*streams)
        final = wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
    finally:
        stderr = relay.stop()

    broken = [r for r in responses if r.status != 200 or not r.complete]
    assert not broken, f"{len(broken)} of {STREAMS} streams broken"
    assert all(len(r.events) == TOKENS + 2 for r in responses)  # tokens, stop chunk, [DONE]
    assert after.status == 200
    # Streams still connecting when the reload landed rightly went to core-b (new config).
    cores = _count(final, "aicdn_connections_total", "core")
    assert cores + _count(final, "aicdn_connections_total", "core-b") >= STREAMS + 1
    assert "Traceback" not in stderr


@pytest.mark.slow
async def test_connection_after_reload_uses_the_new_chain(
    tmp_path: Path, origin_process: int
) -> None:
    config = _with_second_core(edge_and_core_config(origin_process), origin_process)
    relay = RelayProcess(config, tmp_path)
    edge = port(config, "edge")
    try:
        assert (await request(edge, "GET", "/healthz")).status == 200
        _point_chain_at(config, "core-b")
        relay.write({**config, "api": {"addr": f"127.0.0.1:{relay.api}"},
                     "metrics": {"addr": f"127.0.0.1:{relay.metrics}"}})  # fmt: skip
        relay.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.05)
            assert (await request(edge, "GET", "/healthz")).status == 200
            metrics = wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
            if _count(metrics, "aicdn_connections_total", "core-b") >= 1:
                break
        assert _count(metrics, "aicdn_connections_total", "core-b") >= 1
        assert 'aicdn_config_reloads_total{result="success"} 1.0' in metrics
    finally:
        relay.stop()
