"""Login, refresh, logout and revocation, login rate limits, the admin-allow CIDRs, audit."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from master_api import create_app
from master_api.extensions import StoreExtension
from master_api.settings import Settings
from tests.master.conftest import PASSWORD, Caller, base_settings, login, make_user


def test_login_gives_tokens_that_open_the_api(client: FlaskClient, app: Flask) -> None:
    make_user(app, "alice", "viewer")
    caller = login(client, "alice", "viewer")
    answer = caller.get("/api/v1/nodes")
    assert answer.status_code == 200
    assert answer.json == {"items": [], "count": 0, "total": 0}


def test_wrong_password_and_unknown_user_look_alike(client: FlaskClient, app: Flask) -> None:
    make_user(app, "alice", "viewer")
    wrong = client.post("/api/v1/auth/login", json={"username": "alice", "password": "nope"})
    unknown = client.post("/api/v1/auth/login", json={"username": "bob", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json
    assert wrong.json["error"] == "unauthorized"


def test_refresh_gives_a_new_access_token(client: FlaskClient, viewer: Caller) -> None:
    answer = client.post(
        "/api/v1/auth/refresh", headers={"Authorization": f"Bearer {viewer.refresh_token}"}
    )
    assert answer.status_code == 200
    fresh = answer.json["access_token"]
    assert (
        client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {fresh}"}).status_code
        == 200
    )
    # An access token is not a refresh token, and the other way round.
    assert (
        client.post(
            "/api/v1/auth/refresh", headers={"Authorization": f"Bearer {viewer.token}"}
        ).status_code
        == 401
    )
    assert (
        client.get(
            "/api/v1/alerts", headers={"Authorization": f"Bearer {viewer.refresh_token}"}
        ).status_code
        == 401
    )


def test_logout_revokes_access_and_refresh_tokens(client: FlaskClient, viewer: Caller) -> None:
    assert viewer.post("/api/v1/auth/logout").status_code == 200
    answer = viewer.get("/api/v1/nodes")
    assert answer.status_code == 401
    assert "revoked" in answer.json["message"]
    refreshed = client.post(
        "/api/v1/auth/refresh", headers={"Authorization": f"Bearer {viewer.refresh_token}"}
    )
    assert refreshed.status_code == 401


def test_bad_tokens_are_json_401(client: FlaskClient) -> None:
    for header in ("Bearer not-a-jwt", "Basic abc", "Bearer "):
        answer = client.get("/api/v1/nodes", headers={"Authorization": header})
        assert answer.status_code == 401, header
        assert set(answer.json) == {"error", "message"}


def test_login_is_rate_limited_per_user(mongo_uri: str) -> None:
    app = _app(base_settings(mongo_uri, login_max_per_user=3, login_window=300.0))
    client = app.test_client()
    make_user(app, "alice", "viewer")
    for _ in range(3):
        bad = client.post("/api/v1/auth/login", json={"username": "alice", "password": "x"})
        assert bad.status_code == 401
    blocked = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    # Other users are not affected.
    make_user(app, "bob", "viewer")
    assert login(client, "bob", "viewer").token
    _close(app)


def test_login_is_rate_limited_per_address(mongo_uri: str) -> None:
    app = _app(base_settings(mongo_uri, login_max_per_ip=4, login_window=300.0))
    client = app.test_client()
    make_user(app, "alice", "viewer")
    codes = [
        client.post(
            "/api/v1/auth/login", json={"username": f"user{i}", "password": "x"}
        ).status_code
        for i in range(6)
    ]
    assert codes == [401, 401, 401, 401, 429, 429]
    # From another address the limit is separate.
    other = client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "127.0.0.2"},
    )
    assert other.status_code == 200
    _close(app)


def test_management_api_refuses_clients_outside_admin_allow(mongo_uri: str) -> None:
    app = _app(base_settings(mongo_uri, admin_allow=(_net("10.0.0.0/8"),)))
    client = app.test_client()
    inside = {"REMOTE_ADDR": "10.1.2.3"}
    outside = {"REMOTE_ADDR": "192.0.2.7"}
    make_user(app, "alice", "viewer")
    refused = client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": PASSWORD},
        environ_base=outside,
    )
    assert refused.status_code == 403
    assert "AICDN_ADMIN_ALLOW" in refused.json["message"]
    assert client.get("/api/v1/nope", environ_base=outside).status_code == 403
    accepted = client.post(
        "/api/v1/auth/login",
        json={"username": "alice", "password": PASSWORD},
        environ_base=inside,
    )
    assert accepted.status_code == 200
    # Health, readiness and metrics are not management calls.
    for path in ("/api/v1/healthz", "/api/v1/readyz", "/api/v1/metrics"):
        assert client.get(path, environ_base=outside).status_code == 200, path
    _close(app)


def test_mutating_calls_are_audited(client: FlaskClient, admin: Caller, viewer: Caller) -> None:
    created = admin.post(
        "/api/v1/nodes",
        json={"name": "edge-1", "type": "edge", "region": "hk", "addr": "e1", "port": 443},
    )
    assert created.status_code == 201
    assert viewer.call("DELETE", f"/api/v1/nodes/{created.json['id']}").status_code == 403
    entries = admin.get("/api/v1/audit").json["items"]
    by_endpoint = {(e["endpoint"], e["actor"]): e for e in entries}
    create = by_endpoint[("nodes.create_node", "admin")]
    assert create["status"] == 201 and create["method"] == "POST"
    assert create["target"] == created.json["id"]
    assert create["ip"] == "127.0.0.1" and create["role"] == "admin" and create["at"]
    denied = by_endpoint[("nodes.delete_node", "viewer")]
    assert denied["status"] == 403
    logins = [e for e in entries if e["endpoint"] == "auth.login"]
    assert {e["actor"] for e in logins} >= {"admin", "viewer"}
    # Reads are not audited.
    assert not [e for e in entries if e["method"] == "GET"]


def _net(text: str):  # type: ignore[no-untyped-def]
    import ipaddress

    return ipaddress.ip_network(text)


def _app(settings: Settings) -> Flask:
    from pymongo import MongoClient

    assert settings.mongo_uri is not None
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def _close(app: Flask) -> None:
    store = StoreExtension.get(app)[0]
    store.client.drop_database(store.db.name)
    store.close()
