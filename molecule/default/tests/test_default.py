"""Verify the relay role on one host: service, sockets, config, a streamed request through it.

Expected values are read from the role defaults and the scenario's inventory, not repeated here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[2]
DEFAULTS: dict[str, Any] = yaml.safe_load((PROJECT / "roles/relay/defaults/main.yml").read_text())
SCENARIO: dict[str, Any] = yaml.safe_load((HERE.parent / "molecule.yml").read_text())
EDGE_VARS: dict[str, Any] = SCENARIO["provisioner"]["inventory"]["group_vars"]["edge"]
CONFIG: dict[str, Any] = yaml.safe_load(EDGE_VARS["relay_config_data"])
#: The open-file limit molecule.yml gives the instance (${AICDN_NOFILE:-20000}).
NOFILE = int(os.environ.get("AICDN_NOFILE") or 20000)

ROOT = DEFAULTS["relay_install_root"]
SERVICE = DEFAULTS["relay_service_name"]
VERSION = EDGE_VARS["relay_version"]
CURRENT_CONFIG = f"{ROOT}/current/relay.yaml"
BIN = f"{ROOT}/current/venv/bin"

STREAM_CLIENT = r"""
import json, socket, sys, time
port, tokens = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "stream": True, "max_tokens": tokens, "interval_ms": 100}).encode()
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
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


def test_release_is_current(host: Any) -> None:
    current = host.file(f"{ROOT}/current")
    assert current.is_symlink
    assert current.linked_to == f"{ROOT}/releases/{VERSION}"
    assert host.file(f"{ROOT}/releases/{VERSION}/.installed").content_string.strip() == VERSION
    # The wheelhouse copied in for the install is gone again.
    assert not host.file(f"{ROOT}/releases/{VERSION}/wheels").exists


def test_service_runs_sandboxed_with_limits(host: Any) -> None:
    service = host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled
    unit = host.file(f"/etc/systemd/system/{SERVICE}.service").content_string
    assert f"LimitNOFILE={NOFILE}" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    assert host.check_output(f"ps -o user= -p {pid}") == DEFAULTS["relay_user"]
    limits = host.file(f"/proc/{pid}/limits").content_string
    nofile = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert nofile.split()[3:5] == [str(NOFILE), str(NOFILE)]


def test_ports_listen(host: Any) -> None:
    for service in CONFIG["services"]:
        assert host.socket(f"tcp://0.0.0.0{service['addr']}").is_listening
    assert host.socket(f"tcp://{CONFIG['api']['addr']}").is_listening
    assert host.socket(f"tcp://0.0.0.0{CONFIG['metrics']['addr']}").is_listening


def test_config_is_valid_and_protected(host: Any) -> None:
    check = host.run(f"{BIN}/aicdn-relay check -C {CURRENT_CONFIG}")
    assert check.rc == 0, check.stderr
    config = host.file(f"{ROOT}/releases/{VERSION}/relay.yaml")
    assert config.user == "root"
    assert config.group == DEFAULTS["relay_group"]
    assert config.mode == 0o640
    assert yaml.safe_load(config.content_string)["version"] == EDGE_VARS["relay_config_version"]


def test_healthz_reports_the_config_version(host: Any) -> None:
    out = host.check_output(
        f'{BIN}/python -c "import urllib.request;'
        f"print(urllib.request.urlopen('http://{CONFIG['api']['addr']}/healthz').read().decode())\""
    )
    health = json.loads(out)
    assert health["status"] == "ok"
    assert health["version"] == EDGE_VARS["relay_config_version"]


def test_sse_streams_tokens_through_the_node(host: Any) -> None:
    tokens = 8
    port = CONFIG["services"][0]["addr"].lstrip(":")
    result = host.run(f"python3 -c '{STREAM_CLIENT}' {port} {tokens}")
    assert result.rc == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["head"].startswith("HTTP/1.1 200"), seen["head"]
    assert "text/event-stream" in seen["head"]
    assert seen["done"]
    arrivals = seen["arrivals"]
    assert len(arrivals) >= tokens
    # Tokens arrive as the origin writes them (100 ms apart), not all at once at the end.
    assert arrivals[tokens - 1] - arrivals[0] >= 0.5, arrivals


def test_tuning_and_agent_files(host: Any) -> None:
    sysctl = host.file("/etc/sysctl.d/60-aicdn.conf").content_string
    assert "net.core.somaxconn = 65535" in sysctl
    assert "net.ipv4.tcp_tw_reuse = 1" in sysctl
    agent = host.file("/etc/aicdn/agent.yaml")
    assert agent.mode == 0o600
    assert yaml.safe_load(agent.content_string)["relay_config"] == CURRENT_CONFIG
    assert host.file("/etc/systemd/system/aicdn-relay-agent.service").exists
