"""The master cluster: three ``aicdn-master serve`` processes on one database behind nginx on
loopback (the ``master`` role's layout). One leads, all serve the API; killing the leader
under load costs no request beyond those retried, and the leader's background work (the
monitor) carries on on the master elected next."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import pytest
from flask import Flask

from tests.master.agent_processes import MasterProcess
from tests.master.conftest import PASSWORD, Caller
from tests.master.helpers import http, wait_until
from tests.processes import free_port, wait_http

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

NGINX_CONF = """
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream masters {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://masters;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A master that dies mid-request: try the next one (the API's writes are safe to
            # repeat against the shared database, or answer 409 when they are not).
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            proxy_buffering off;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, directory: Path, upstreams: list[int]) -> None:
        assert NGINX is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=3s;" for port in upstreams
        )
        conf = directory / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=directory,
                servers=servers,
                port=self.port,
                user="user root;" if os.geteuid() == 0 else "",
            )
        )
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(directory / "stderr.log", "wb"),  # noqa: SIM115 (closed with the proc)
        )
        wait_http(f"{self.url}/api/v1/healthz", timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Load:
    """Clients calling the API through the balancer until stopped; a failed call is retried
    once (what an API client does), and counted."""

    url: str
    token: str
    ok: int = 0
    retried: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        paths = ["/api/v1/nodes", "/api/v1/alerts", "/api/v1/cluster", "/api/v1/configs"]
        i = 0
        while not self.stop.is_set():
            path = paths[i % len(paths)]
            i += 1
            for attempt in range(2):
                try:
                    answer = http("GET", self.url + path, token=self.token, timeout=10)
                    status = answer.status
                except OSError as exc:
                    status, answer = 0, None
                    error = repr(exc)
                if status == 200:
                    self.ok += 1
                    break
                if attempt == 0:
                    self.retried += 1
                    time.sleep(0.1)
                    continue
                body = answer.body[:200] if answer is not None else error
                self.failed.append(f"{path}: {status} {body!r}")


@pytest.fixture
def cluster(app: Flask, mongo_uri: str, tmp_path: Path) -> Iterator[list[MasterProcess]]:
    masters = []
    for i in range(3):
        workdir = tmp_path / f"m{i}"
        workdir.mkdir()
        masters.append(MasterProcess(mongo_uri, workdir, AICDN_HTTP_TRUSTED_PROXY="127.0.0.1"))
    yield masters
    for master in masters:
        master.stop()


def _leader(url: str, token: str) -> str | None:
    answer = http("GET", f"{url}/api/v1/cluster", token=token)
    assert answer.status == 200, answer.body
    leader: str | None = answer.json()["leader"]
    return leader


@pytest.mark.slow
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
def test_killing_the_leader_under_load_costs_no_request(
    cluster: list[MasterProcess], operator: Caller, admin: Caller, tmp_path: Path
) -> None:
    nginx = Nginx(tmp_path / "nginx", [m.http_port for m in cluster])
    try:
        login = http(
            "POST",
            f"{nginx.url}/api/v1/auth/login",
            {"username": "operator", "password": PASSWORD},
        )
        assert login.status == 200, login.body
        token = login.json()["access_token"]
        wait_until(lambda: _leader(nginx.url, token) is not None, 15)
        leader_id = _leader(nginx.url, token)
        members = http("GET", f"{nginx.url}/api/v1/cluster", token=token).json()["members"]
        assert len(members) == 3
        # Every master serves the API, and each knows the same leader.
        for master in cluster:
            assert _leader(master.url, token) == leader_id
        # Member ids are host:pid:random.
        leader = next(m for m in cluster if m.proc and f":{m.proc.pid}:" in str(leader_id))

        loads = [Load(nginx.url, token) for _ in range(4)]
        threads = [threading.Thread(target=load.run, daemon=True) for load in loads]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        assert leader.proc is not None
        os.kill(leader.proc.pid, signal.SIGKILL)  # the worst case: no lease given back
        leader.proc.wait()
        killed_at = time.monotonic()

        # A node that heartbeats once, then falls silent: only a leader's monitor can mark it
        # offline, so seeing that proves the background work moved to the new leader.
        node = operator.post(
            "/api/v1/nodes",
            json={"name": "edge-9", "type": "edge", "region": "hk", "addr": "e9", "port": 443},
        )
        assert node.status_code == 201
        beat = http(
            "POST",
            f"{nginx.url}/api/v1/nodes/{node.json['id']}/heartbeat",
            {"metrics": {"connections": 1}},
            token=node.json["token"],
        )
        assert beat.status == 200, beat.body

        def new_leader() -> bool:
            current = _leader(nginx.url, token)
            return current is not None and current != leader_id

        wait_until(new_leader, 20)
        elected_after = time.monotonic() - killed_at

        def marked_offline() -> bool:
            answer = http("GET", f"{nginx.url}/api/v1/nodes/{node.json['id']}", token=token)
            return bool(answer.json()["status"] == "offline")

        wait_until(marked_offline, 20)
        time.sleep(1.0)  # more load on the survivors
        for load in loads:
            load.stop.set()
        for thread in threads:
            thread.join(15)
        ok = sum(load.ok for load in loads)
        retried = sum(load.retried for load in loads)
        failed = [f for load in loads for f in load.failed]
        print(
            f"cluster: {ok} requests answered, {retried} retried by the client, "
            f"{len(failed)} failed; new leader after {elected_after:.1f}s"
        )
        assert failed == []
        assert ok > 50
        alerts = http("GET", f"{nginx.url}/api/v1/alerts?name=NodeOffline", token=token).json()
        assert [a["node_name"] for a in alerts["items"]] == ["edge-9"]

        # The masters trust the balancer's X-Forwarded-For: the audit log names the client
        # (here 127.0.0.2), not nginx.
        conn = HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=("127.0.0.2", 0))
        body = json.dumps({"username": "operator", "password": PASSWORD})
        conn.request("POST", "/api/v1/auth/login", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        entries = admin.get("/api/v1/audit?limit=200").json["items"]
        logins = [e["ip"] for e in entries if e["path"] == "/api/v1/auth/login"]
        assert "127.0.0.2" in logins, logins
    finally:
        nginx.stop()
