"""Secrets stay secret (issue 10): a real master process logs no password, agent token, JWT or
JWT secret at debug level whatever it is sent; viewers read configs with secrets redacted."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient

from tests.master.conftest import Caller, draft, register
from tests.master.helpers import free_low_port, http, wait_until
from tests.master.test_master_cli import MASTER, _env

JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}")


def test_the_master_never_logs_passwords_tokens_or_jwts(mongo_uri: str, tmp_path: Path) -> None:
    db = "aicdn_secrets_test"
    MongoClient(mongo_uri).drop_database(db)
    jwt_secret = "jwt-secret-" + "q" * 40
    http_port = free_low_port()
    env = _env(
        AICDN_MONGO_URI=mongo_uri,
        AICDN_MONGO_DB=db,
        AICDN_JWT_SECRET=jwt_secret,
        AICDN_LOG_LEVEL="debug",
        AICDN_HTTP_ADDR=f"127.0.0.1:{http_port}",
        AICDN_GRPC_ADDR=f"127.0.0.1:{free_low_port()}",
        AICDN_PASSWORD_MEMORY_KIB="8",
        AICDN_PASSWORD_TIME_COST="1",
        AICDN_PASSWORD_PARALLELISM="1",
    )
    admin_password = "admin-pass-Xy7-long"
    created = subprocess.run(
        [*MASTER, "user", "create", "root", "--role", "admin", "--password-stdin"],
        input=admin_password + "\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    log_path = tmp_path / "master.log"
    log = log_path.open("w")
    proc = subprocess.Popen([*MASTER, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}/api/v1"
    secrets: list[str] = [admin_password, jwt_secret]
    try:
        wait_until(lambda: _ready(base, proc), timeout=30, interval=0.1)
        wrong = "wrong-pass-Zq9-long"
        secrets.append(wrong)
        assert (
            http("POST", f"{base}/auth/login", {"username": "root", "password": wrong}).status
            == 401
        )
        login = {"username": "root", "password": admin_password}
        tokens = http("POST", f"{base}/auth/login", login).json()
        access, refresh = tokens["access_token"], tokens["refresh_token"]
        secrets += [access, refresh]
        viewer_password = "viewer-pass-Kw3-long"
        secrets.append(viewer_password)
        body = {"name": "watcher", "role": "viewer", "password": viewer_password}
        assert http("POST", f"{base}/users", body, token=access).status == 201
        spec = {"name": "core-1", "type": "core", "region": "cn", "addr": "c1.example", "port": 1}
        node = http("POST", f"{base}/nodes", spec, token=access).json()
        agent_token = node["token"]
        secrets.append(agent_token)
        beat = {"metrics": {}, "applied_version": None}
        assert (
            http("POST", f"{base}/nodes/{node['id']}/heartbeat", beat, token=agent_token).status
            == 200
        )
        relay_password = "relay-pass-Mv5-long"
        secrets.append(relay_password)
        version = {
            "node_type": "core",
            "template": "core",
            "params": {"edge_password": relay_password},
        }
        assert http("POST", f"{base}/configs", version, token=access).status == 201
        bogus = "bogus-agent-token-123456"
        secrets.append(bogus)
        assert http("POST", f"{base}/nodes/{node['id']}/heartbeat", beat, token=bogus).status == 401
        garbage_jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWZha2U"
        assert http("GET", f"{base}/nodes", token=garbage_jwt).status == 401
        assert http("POST", f"{base}/auth/refresh", token=refresh).status == 200
        assert http("POST", f"{base}/auth/logout", token=access).status == 200
        assert http("GET", f"{base}/nodes", token=access).status == 401  # revoked: refused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        MongoClient(mongo_uri).drop_database(db)
    text = log_path.read_text()
    assert " DEBUG " in text and "aicdn-master stopped" in text  # it did log, at debug level
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... appears in the master's log"
    assert not JWT.search(text), JWT.search(text)


def _ready(base: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "master exited"
    try:
        return http("GET", f"{base}/readyz", timeout=1).status == 200
    except OSError:
        return False


# --- what viewers see --------------------------------------------------------------------------

PASSWORD = "s3cret-pass"


def _secrets_in(value: Any) -> bool:
    return PASSWORD in (value if isinstance(value, str) else repr(value))


def test_viewers_read_configs_with_secrets_redacted(
    admin: Caller, operator: Caller, viewer: Caller
) -> None:
    core = register(admin, "core-1", "core", "cn")
    register(admin, "edge-1", "edge", "hk")
    first = draft(operator, "core")["version_id"]  # params carry edge_password
    assert operator.post(f"/api/v1/configs/{first}/publish").status_code == 200
    second = draft(operator, "core", params={"edge_password": "other-pass-1"})["version_id"]

    full = operator.get(f"/api/v1/configs/{first}").json
    assert _secrets_in(full["config_data"]) and full["params"]["edge_password"] == PASSWORD
    seen = viewer.get(f"/api/v1/configs/{first}").json
    assert not _secrets_in(seen["config_data"]) and not _secrets_in(seen["params"])
    assert seen["params"]["edge_password"] == "***"
    assert yaml.safe_load(seen["config_data"])  # still YAML a viewer can read

    rendered = viewer.get(f"/api/v1/nodes/{core['id']}/config")
    assert rendered.status_code == 200
    text = rendered.get_data(as_text=True)
    assert not _secrets_in(text) and '"***"' in text
    doc = yaml.safe_load(text)
    assert doc["services"][0]["handler"]["auth"]["password"] == "***"
    operator_view = operator.get(f"/api/v1/nodes/{core['id']}/config").get_data(as_text=True)
    assert _secrets_in(operator_view)  # operators deploy with it
    assert rendered.headers["X-Config-Checksum"]  # names the real config

    diff = viewer.get(f"/api/v1/configs/{first}/diff/{second}").json["diff"]
    assert diff and not _secrets_in(diff) and "other-pass-1" not in diff


# --- agent tokens ------------------------------------------------------------------------------


def test_agent_tokens_rotate_and_the_old_one_is_refused(
    app: Any, client: Any, operator: Caller, viewer: Caller
) -> None:
    from master_api.errors import Unauthorized
    from master_api.extensions import services

    node = register(operator, "edge-9", "edge", "hk")
    old = node["token"]
    beat = {"metrics": {}, "applied_version": None}

    def heartbeat(token: str) -> int:
        answer = client.post(
            f"/api/v1/nodes/{node['id']}/heartbeat",
            json=beat,
            headers={"Authorization": f"Bearer {token}"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        return int(answer.status_code)

    assert heartbeat(old) == 200
    with app.app_context():  # the AgentService path, which remembers authenticated nodes
        services().nodes.authenticate(node["id"], old, max_age=30.0)

    assert viewer.post(f"/api/v1/nodes/{node['id']}/token").status_code == 403
    rotated = operator.post(f"/api/v1/nodes/{node['id']}/token")
    assert rotated.status_code == 200
    new = rotated.json["token"]
    assert new != old and rotated.json["id"] == node["id"]

    assert heartbeat(old) == 401
    assert heartbeat(new) == 200
    with app.app_context():
        try:
            services().nodes.authenticate(node["id"], old, max_age=30.0)
        except Unauthorized:
            pass
        else:
            raise AssertionError("a remembered node accepted its revoked token")
        services().nodes.authenticate(node["id"], new, max_age=30.0)
    assert operator.post("/api/v1/nodes/nope/token").status_code == 404
    assert "token" not in operator.get(f"/api/v1/nodes/{node['id']}").json
