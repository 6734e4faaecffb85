"""Rendered node configs: an edge chains to the online cores of its region first, then others;
both an edge's and a core's rendered YAML pass ``aicdn-relay check`` (the relay's own checker,
run as a process, with real certificate files in place)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient

from master_api import create_app
from master_api.extensions import StoreExtension
from master_api.settings import Settings
from tests.certs import issue, make_ca
from tests.master.conftest import Caller, base_settings, draft, login, make_user, register


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "etc-aicdn"


@pytest.fixture
def render_app(mongo_uri: str, node_dir: Path) -> Iterator[Flask]:
    """An app that renders certificate paths under ``node_dir`` (the hosts' /etc/aicdn)."""
    settings: Settings = base_settings(mongo_uri, node_base_dir=str(node_dir))
    MongoClient(mongo_uri).drop_database(settings.mongo_db)
    app = create_app(settings)
    yield app
    store = StoreExtension.get(app)[0]
    store.client.drop_database(settings.mongo_db)
    store.close()


@pytest.fixture
def op(render_app: Flask) -> Caller:
    client: FlaskClient = render_app.test_client()
    make_user(render_app, "op", "operator")
    return login(client, "op", "operator")


def _install_certs(node_dir: Path, names: list[str]) -> None:
    """What the Ansible role puts on a host: its certificate, key and the fleet CA."""
    tls = node_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (node_dir / "pki").mkdir(parents=True)
    ca = make_ca(node_dir / "pki")
    shutil.copy(ca.cert_file, tls / "ca.pem")
    for name in names:
        pair = issue(ca, name, (name, "localhost"))
        shutil.copy(pair.cert_file, tls / f"{name}.pem")
        shutil.copy(pair.key_file, tls / f"{name}.key")


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-C", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rendered_edge_and_core_pass_the_relay_checker(
    op: Caller, node_dir: Path, tmp_path: Path
) -> None:
    edge = register(op, "edge-hk-1", "edge", "hk")
    cores = [
        register(op, "core-cn-2", "core", "cn"),
        register(op, "core-hk-1", "core", "hk"),
        register(op, "core-us-1", "core", "us", status="offline"),
    ]
    for kind in ("edge", "core"):
        version = draft(op, kind)["version_id"]
        assert op.post(f"/api/v1/configs/{version}/publish").status_code == 200
    _install_certs(node_dir, ["edge-hk-1", "core-hk-1"])

    answer = op.get(f"/api/v1/nodes/{edge['id']}/config")
    assert answer.status_code == 200, answer.json
    assert answer.mimetype == "application/yaml"
    assert answer.headers["X-Config-Version"].isdigit()
    rendered = yaml.safe_load(answer.data)
    hop = rendered["chains"][0]["hops"][0]
    # Online cores of the edge's own region first, then other regions; offline ones never.
    assert [n["name"] for n in hop["nodes"]] == ["core-hk-1", "core-cn-2"]
    assert hop["nodes"][0]["addr"] == f"{cores[1]['addr']}:8443"
    path = tmp_path / "edge.yaml"
    path.write_bytes(answer.data)
    result = _check(path)
    assert result.returncode == 0, result.stderr

    answer = op.get(f"/api/v1/nodes/{cores[1]['id']}/config")
    assert answer.status_code == 200, answer.json
    path = tmp_path / "core.yaml"
    path.write_bytes(answer.data)
    result = _check(path)
    assert result.returncode == 0, result.stderr


def test_render_errors(op: Caller) -> None:
    edge = register(op, "edge-hk-1", "edge", "hk")
    missing = op.get(f"/api/v1/nodes/{edge['id']}/config")
    assert missing.status_code == 404 and "publish one" in missing.json["message"]
    version = draft(op, "edge")["version_id"]
    op.post(f"/api/v1/configs/{version}/publish")
    no_core = op.get(f"/api/v1/nodes/{edge['id']}/config")
    assert no_core.status_code == 409
    assert no_core.json["error"] == "render_failed"
    assert "no online core node" in no_core.json["issues"][0]["message"]
    assert op.get("/api/v1/nodes/nope/config").status_code == 404
