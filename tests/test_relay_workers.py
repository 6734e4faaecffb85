"""``workers: 2``: two processes share the ports, one metrics view, a dead worker is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from relay.workers import merge_expositions
from tests.processes import RelayProcess, edge_and_core_config, port, wait_http


async def _worker_metrics(socket_path: str) -> str:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: w\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


def _health(relay: RelayProcess) -> dict[str, object]:
    return json.loads(wait_http(f"http://127.0.0.1:{relay.api}/healthz"))  # type: ignore[no-any-return]


def _connections_total(text: str, service: str) -> float:
    for line in text.splitlines():
        if line.startswith("aicdn_connections_total{") and f'service="{service}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
async def test_two_workers_share_ports_merge_metrics_and_are_replaced(
    tmp_path: Path, origin_process: int
) -> None:
    config = edge_and_core_config(origin_process)
    config["workers"] = 2
    relay = RelayProcess(config, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not all(w["ready"] for w in _health(relay)["workers"]):  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        edge = port(config, "edge")

        async def hit() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge)
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
            writer.close()

        await asyncio.gather(*(hit() for _ in range(60)))

        workers = _health(relay)["workers"]
        per_worker = [
            _connections_total(await _worker_metrics(w["socket"]), "edge")  # type: ignore[index]
            for w in workers  # type: ignore[union-attr]
        ]
        assert sum(per_worker) == 60 and min(per_worker) > 0, per_worker  # both took some
        merged = wait_http(f"http://127.0.0.1:{relay.metrics}/metrics").decode()
        assert _connections_total(merged, "edge") == 60
        assert 'process_resident_memory_bytes{worker="0"}' in merged

        victim = workers[0]["pid"]  # type: ignore[index]
        os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while True:
            now = _health(relay)["workers"][0]  # type: ignore[index]
            if now["ready"] and now["pid"] != victim:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.gather(*(hit() for _ in range(10)))
    finally:
        assert "Traceback" not in relay.stop()


def test_merge_sums_samples_and_keeps_processes_apart() -> None:
    one = (
        b"# HELP aicdn_connections_active x\n# TYPE aicdn_connections_active gauge\n"
        b'aicdn_connections_active{service="e"} 2.0\n'
        b"# HELP process_open_fds y\n# TYPE process_open_fds gauge\nprocess_open_fds 10.0\n"
    )
    two = one.replace(b"} 2.0", b"} 3.0").replace(b"fds 10.0", b"fds 12.0")

    merged = merge_expositions([(0, one), (1, two)]).decode()

    assert 'aicdn_connections_active{service="e"} 5.0' in merged
    assert 'process_open_fds{worker="0"} 10.0' in merged
    assert 'process_open_fds{worker="1"} 12.0' in merged


def test_merge_reports_the_config_version_all_workers_run() -> None:
    def worker(version: float) -> bytes:
        return (
            b"# HELP aicdn_config_version v\n# TYPE aicdn_config_version gauge\n"
            b"aicdn_config_version %r\n" % version
        )

    # Two workers on version 5 run version 5 (not 10); mid-reload, the one still on 4 shows.
    assert (
        "aicdn_config_version 5.0"
        in merge_expositions([(0, worker(5.0)), (1, worker(5.0))]).decode()
    )
    assert (
        "aicdn_config_version 4.0"
        in merge_expositions([(0, worker(5.0)), (1, worker(4.0))]).decode()
    )
