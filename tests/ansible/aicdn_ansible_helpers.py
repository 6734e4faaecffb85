"""Helpers of the Ansible tests: the plugins loaded from plugins/, a stand-in master.

Everything here needs the `ansible` extra (`make venv-ansible`); without it the whole directory
is skipped, so a plain `make test` still runs on a machine that never installed Ansible.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
BIN = Path(sys.executable).parent


def load_plugin(kind: str, name: str) -> ModuleType:
    """Import plugins/<kind>/<name>.py as a plain module (none imports collection code)."""
    path = PLUGINS / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"aicdn_test_{kind}_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ansible_env(**extra: str) -> dict[str, str]:
    """Environment for ansible-* subprocesses: this venv first, the repository's ansible.cfg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AICDN_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_LOCAL_TEMP"] = env.get("TMPDIR", "/tmp")
    env.update(extra)
    return env


@dataclass
class StubMaster:
    """A stand-in for the master's REST API (DESIGN §4.3) as far as the inventory plugin uses
    it: login and paged GET /nodes. Records what it receives. (The callback's reports are
    tested against the real master, tests/master/test_external_runs.py.)"""

    nodes: list[dict[str, Any]]
    username: str = "operator"
    password: str = "operator-password"
    token: str = "stub-access-token"
    url: str = ""
    logins: int = 0
    node_requests: list[dict[str, list[str]]] = field(default_factory=list)


def _handler(master: StubMaster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {master.token}":
                return True
            self._send(401, {"error": "unauthorized", "message": "missing or bad token"})
            return False

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path == "/api/v1/auth/login":
                body = self._body()
                master.logins += 1
                if body == {"username": master.username, "password": master.password}:
                    self._send(200, {"access_token": master.token, "token_type": "Bearer"})
                else:
                    self._send(
                        401, {"error": "unauthorized", "message": "unknown user or wrong password"}
                    )
                return
            if not self._authorized():
                return
            self._send(404, {"error": "not_found", "message": path})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/api/v1/nodes":
                self._send(404, {"error": "not_found", "message": url.path})
                return
            if not self._authorized():
                return
            query = parse_qs(url.query)
            master.node_requests.append(query)
            limit = int(query.get("limit", ["50"])[0])
            offset = int(query.get("offset", ["0"])[0])
            page = master.nodes[offset : offset + limit]
            self._send(200, {"items": page, "total": len(master.nodes)})

    return Handler


FLEET = [
    {"id": "n1", "name": "edge-hk-1", "type": "edge", "region": "hk", "addr": "203.0.113.11",
     "port": 443, "tags": ["gpu-near", "beta"], "metadata": {"rack": "a1"}, "status": "online",
     "desired_version": 3, "applied_version": 3},
    {"id": "n2", "name": "edge-us-1", "type": "edge", "region": "us", "addr": "198.51.100.21",
     "port": 443, "tags": [], "metadata": {}, "status": "offline"},
    {"id": "n3", "name": "core-cn-1", "type": "core", "region": "cn", "addr": "192.0.2.41",
     "port": 8443, "tags": ["primary"],
     "metadata": {"ws_port": 8444, "note": "{{ lookup('pipe', 'id') }}"},
     "status": "online"},
]  # fmt: skip


@pytest.fixture
def stub_master() -> Iterator[StubMaster]:
    master = StubMaster(nodes=[dict(node) for node in FLEET])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(master))
    master.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield master
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
