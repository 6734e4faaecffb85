"""The store goes away under a running fleet (issue 10): a real master process answers 503 while
it is gone, the agent keeps retrying its heartbeats and the relay keeps serving, and once the
store is back the heartbeats land again and the API answers, with nothing restarted."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest

from master_api import create_app
from master_api.extensions import StoreExtension
from master_api.store import EmbeddedMongo
from tests.helpers import chat, request
from tests.master.agent_processes import AgentProcess, MasterProcess, RelayUnderAgent
from tests.master.conftest import base_settings, login, make_user, register
from tests.master.helpers import free_low_port, http, wait_until
from tests.processes import edge_and_core_config, port

pytestmark = pytest.mark.slow


async def test_store_outage_under_a_running_fleet(tmp_path: Path, origin_process: int) -> None:
    store = EmbeddedMongo(tmp_path / "mongo", free_low_port())
    store.start()
    (tmp_path / "master").mkdir()
    master: MasterProcess | None = None
    relay: RelayUnderAgent | None = None
    agent: AgentProcess | None = None
    app = create_app(base_settings(store.uri, mongo_timeout=0.5))
    try:
        client = app.test_client()
        make_user(app, "op", "operator")
        operator = login(client, "op", "operator")  # the same JWT secret as the master process
        master = MasterProcess(store.uri, tmp_path / "master", AICDN_MONGO_TIMEOUT="0.5s")
        relay = RelayUnderAgent(edge_and_core_config(origin_process), tmp_path / "node")
        node = register(operator, "edge-1", "edge", "hk")
        agent = AgentProcess(
            tmp_path / "node", [master.grpc_addr], node["id"], node["token"], relay
        )
        nodes_url = f"{master.url}/api/v1/nodes/{node['id']}"

        def last_seen() -> float:
            answer = http("GET", nodes_url, token=operator.token, timeout=5)
            if answer.status != 200 or answer.json()["last_seen"] is None:
                return 0.0
            return datetime.fromisoformat(answer.json()["last_seen"]).timestamp()

        wait_until(lambda: last_seen() > 0, timeout=20, interval=0.2)

        store.stop()
        started = time.monotonic()
        down = http("GET", nodes_url, token=operator.token, timeout=10)
        assert down.status == 503 and down.json()["error"] == "store_unavailable"
        assert time.monotonic() - started < 5
        # The data plane does not depend on the master: streams go on through the outage.
        edge_port = port(relay.config, "edge")
        streamed = await request(edge_port, "POST", "/v1/chat/completions", chat(5, 5))
        assert streamed.status == 200 and streamed.complete
        await asyncio.sleep(3.0)  # six heartbeat intervals fail meanwhile
        assert agent.proc.poll() is None and master.proc is not None
        assert master.proc.poll() is None

        store.start()  # same port and data
        back = time.time()
        wait_until(lambda: last_seen() > back, timeout=20, interval=0.2)
        assert http("GET", nodes_url, token=operator.token).status == 200
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
    finally:
        if agent is not None:
            agent.stop()
        if relay is not None:
            relay.stop()
        if master is not None:
            master.stop()
        StoreExtension.get(app)[0].close()
        store.stop()
