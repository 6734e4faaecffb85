"""Verify the rolled-out fleet: traffic edge -> core -> origin, releases, monitoring.

Runs after converge (1.0.0 everywhere) and again after side_effect (broken 2.0.0 rolled back,
cores rolled back with rollback.yml, config hot-reloaded): both times every node must run 1.0.0
and a client's stream must flow through the edge. Hosts are reached with `podman exec`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import testinfra
import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[2]
DEFAULTS: dict[str, Any] = yaml.safe_load((PROJECT / "roles/relay/defaults/main.yml").read_text())
MONITORING: dict[str, Any] = yaml.safe_load(
    (PROJECT / "roles/monitoring/defaults/main.yml").read_text()
)
INVENTORY: dict[str, Any] = yaml.safe_load((HERE.parent / "molecule.yml").read_text())[
    "provisioner"
]["inventory"]
GROUP_VARS = INVENTORY["group_vars"]
HOST_VARS = INVENTORY["host_vars"]
VERSION = GROUP_VARS["all"]["relay_version"]
ROOT = DEFAULTS["relay_install_root"]

ORIGIN = testinfra.get_host("podman://aicdn-origin")
CORE = testinfra.get_host("podman://aicdn-core-1")
EDGE = testinfra.get_host("podman://aicdn-edge-1")

STREAM_CLIENT = r"""
import json, socket, sys, time
host, port, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "stream": True, "max_tokens": tokens, "interval_ms": 100}).encode()
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
          b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
start, data, arrivals = time.monotonic(), b"", []
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    arrivals.extend([round(time.monotonic() - start, 3)] * chunk.count(b"data: "))
    data += chunk
head = data.split(b"\r\n\r\n", 1)[0].decode()
print(json.dumps({"head": head, "arrivals": arrivals, "done": b"data: [DONE]" in data}))
"""


def test_every_node_runs_the_good_release() -> None:
    for host in (CORE, EDGE):
        current = host.file(f"{ROOT}/current")
        assert current.linked_to == f"{ROOT}/releases/{VERSION}"
        assert host.service(DEFAULTS["relay_service_name"]).is_running


def test_core_listens_for_tunnels_only_to_its_origin() -> None:
    params = GROUP_VARS["core"]["relay_template_params"]
    assert CORE.socket(f"tcp://0.0.0.0:{params['port']}").is_listening
    config = yaml.safe_load(CORE.file(f"{ROOT}/current/relay.yaml").content_string)
    [tunnel] = config["services"]
    assert [node["addr"] for node in tunnel["forwarder"]["nodes"]] == params["origins"]


def test_edge_chains_to_the_core_from_the_inventory() -> None:
    config = yaml.safe_load(EDGE.file(f"{ROOT}/current/relay.yaml").content_string)
    [hop] = config["chains"][0]["hops"]
    core_addr = HOST_VARS["aicdn-core-1"]["aicdn_node_addr"]
    assert [node["addr"] for node in hop["nodes"]] == [
        f"{core_addr}:{GROUP_VARS['core']['aicdn_node_port']}"
    ]


def test_stream_flows_edge_core_origin() -> None:
    tokens = 8
    edge_addr = HOST_VARS["aicdn-edge-1"]["aicdn_node_addr"]
    port = GROUP_VARS["edge"]["relay_template_params"]["port"]
    # The client is the origin's host: its traffic crosses the network to the edge.
    result = ORIGIN.run(f"python3 -c '{STREAM_CLIENT}' {edge_addr} {port} {tokens}")
    assert result.rc == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["head"].startswith("HTTP/1.1 200"), seen["head"]
    assert "text/event-stream" in seen["head"]
    assert seen["done"]
    arrivals = seen["arrivals"]
    assert len(arrivals) >= tokens
    assert arrivals[tokens - 1] - arrivals[0] >= 0.5, arrivals  # streamed, not buffered


def test_prometheus_checks_rules_and_scrapes_the_relays() -> None:
    rules = f"{MONITORING['monitoring_rules_dir']}/aicdn.rules.yml"
    check = ORIGIN.run(f"promtool check rules {rules}")
    assert check.rc == 0, check.stdout + check.stderr
    assert ORIGIN.service(MONITORING["monitoring_prometheus_service"]).is_running
    query = (
        "import json, urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22aicdn-relay%22%7D').read().decode())"
    )
    up: dict[str, str] = {}
    for _ in range(40):  # the first scrape comes within one scrape interval of the start
        answer = ORIGIN.run(f'python3 -c "{query}"')
        if answer.rc == 0:
            results = json.loads(answer.stdout)["data"]["result"]
            up = {r["metric"]["node"]: r["value"][1] for r in results}
            if up == {"aicdn-core-1": "1", "aicdn-edge-1": "1"}:
                break
        time.sleep(1)
    assert up == {"aicdn-core-1": "1", "aicdn-edge-1": "1"}


def test_grafana_dashboard_is_json() -> None:
    path = f"{MONITORING['monitoring_grafana_dashboard_dir']}/aicdn-fleet.json"
    dashboard = json.loads(ORIGIN.file(path).content_string)
    assert dashboard["uid"] == "aicdn-fleet"
    assert dashboard["panels"]
