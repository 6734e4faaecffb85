"""Nodes: register (token once), list with filters, get, update, delete, heartbeat; body
validation names the field."""

from __future__ import annotations

import hashlib

from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient

from master_api.settings import Settings
from tests.master.conftest import Caller, register


def test_register_returns_the_token_once_and_stores_only_its_hash(
    operator: Caller, settings: Settings
) -> None:
    node = register(operator, "edge-hk-1", "edge", "hk", tags=["gpu", "beta"])
    assert node["status"] == "online" and node["last_seen"] is None
    token = node.pop("token")
    assert len(token) >= 40
    again = operator.get(f"/api/v1/nodes/{node['id']}").json
    assert "token" not in again and "token_hash" not in again
    assert again["name"] == "edge-hk-1" and again["tags"] == ["gpu", "beta"]
    assert settings.mongo_uri is not None
    stored = MongoClient(settings.mongo_uri)[settings.mongo_db]["nodes"].find_one(
        {"_id": node["id"]}
    )
    assert stored is not None
    assert token not in str(stored)
    assert stored["token_hash"] == hashlib.sha256(token.encode()).hexdigest()


def test_duplicate_name_is_409(operator: Caller) -> None:
    register(operator, "core-1", "core", "cn")
    answer = operator.post(
        "/api/v1/nodes",
        json={"name": "core-1", "type": "core", "region": "cn", "addr": "x", "port": 8443},
    )
    assert answer.status_code == 409
    assert answer.json == {"error": "conflict", "message": "a node with this name already exists"}


def test_list_filters(operator: Caller) -> None:
    register(operator, "edge-hk-1", "edge", "hk", tags=["a", "b"])
    register(operator, "edge-us-1", "edge", "us", tags=["a"])
    register(operator, "core-cn-1", "core", "cn", status="standby")
    names = lambda query: [n["name"] for n in operator.get(f"/api/v1/nodes{query}").json["items"]]  # noqa: E731
    assert names("") == ["core-cn-1", "edge-hk-1", "edge-us-1"]
    assert names("?type=edge") == ["edge-hk-1", "edge-us-1"]
    assert names("?region=us") == ["edge-us-1"]
    assert names("?status=standby") == ["core-cn-1"]
    assert names("?tag=a") == ["edge-hk-1", "edge-us-1"]
    assert names("?tag=a&tag=b") == ["edge-hk-1"]
    assert names("?type=edge&limit=1&offset=1") == ["edge-us-1"]
    page = operator.get("/api/v1/nodes?limit=1").json
    assert page["count"] == 1 and page["total"] == 3


def test_update_and_delete(operator: Caller) -> None:
    node = register(operator, "edge-1", "edge", "hk")
    answer = operator.call(
        "PATCH",
        f"/api/v1/nodes/{node['id']}",
        json={"region": "sg", "metadata": {"ws_port": 8081}, "status": "draining"},
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["region"] == "sg" and answer.json["metadata"] == {"ws_port": 8081}
    assert answer.json["status"] == "draining"
    assert operator.call("PATCH", f"/api/v1/nodes/{node['id']}", json={}).status_code == 400
    assert operator.call("DELETE", f"/api/v1/nodes/{node['id']}").status_code == 204
    assert operator.get(f"/api/v1/nodes/{node['id']}").status_code == 404
    assert operator.call("DELETE", f"/api/v1/nodes/{node['id']}").status_code == 404


def test_bodies_are_validated_field_by_field(operator: Caller) -> None:
    good = {"name": "edge-1", "type": "edge", "region": "hk", "addr": "e1", "port": 443}
    cases = [
        ({**good, "colour": "red"}, "body.colour", "unknown field"),
        ({**good, "port": "443"}, "body.port", "expected an integer"),
        ({**good, "port": 70000}, "body.port", "between"),
        ({**good, "type": "mid"}, "body.type", "expected one of edge, core"),
        ({**good, "name": "x" * 200}, "body.name", "at most 63"),
        ({**good, "name": "../etc"}, "body.name", "does not match"),
        ({**good, "tags": ["a", 1]}, "body.tags[1]", "expected a string"),
        ({**good, "metadata": {"$where": 1}}, "body.metadata.$where", "bad key"),
        ({**good, "metadata": {"k": "\ud800"}}, "body.metadata.k", "not valid Unicode"),
        ({**good, "metadata": {"a": {"b": {"c": {"d": [1]}}}}}, "body.metadata.a.b.c.d", "nested"),
        ({k: v for k, v in good.items() if k != "addr"}, "body.addr", "required"),
    ]
    for body, field, message in cases:
        answer = operator.post("/api/v1/nodes", json=body)
        assert answer.status_code == 400, (body, answer.json)
        assert answer.json["field"] == field, answer.json
        assert message in answer.json["message"], answer.json


def test_malformed_and_oversize_bodies(operator: Caller, app: Flask) -> None:
    headers = {"Content-Type": "application/json"}
    answer = operator.post("/api/v1/nodes", data="{not json", headers=headers)
    assert answer.status_code == 400 and "not valid JSON" in answer.json["message"]
    answer = operator.post("/api/v1/nodes", data='{"port": NaN}', headers=headers)
    assert answer.status_code == 400
    answer = operator.post("/api/v1/nodes", data="[]", headers=headers)
    assert answer.status_code == 400 and answer.json["field"] == "body"
    answer = operator.post("/api/v1/nodes", data="name=x", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415
    huge = b'{"name": "' + b"x" * (app.config["MAX_CONTENT_LENGTH"] + 10) + b'"}'
    answer = operator.post("/api/v1/nodes", data=huge, headers=headers)
    assert answer.status_code == 413
    assert answer.json["error"] == "payload_too_large"
    config = "x" * (1024 * 1024 + 1)
    answer = operator.post("/api/v1/configs", json={"node_type": "edge", "config_data": config})
    assert answer.status_code == 400 and answer.json["field"] == "body.config_data"


def test_query_parameters_are_validated(viewer: Caller) -> None:
    answer = viewer.get("/api/v1/nodes?limit=0")
    assert answer.status_code == 400 and answer.json["field"] == "query.limit"
    answer = viewer.get("/api/v1/nodes?colour=red")
    assert answer.status_code == 400 and answer.json["field"] == "query.colour"
    answer = viewer.get("/api/v1/nodes?type=edge&type=core")
    assert answer.status_code == 400 and "more than once" in answer.json["message"]


def test_heartbeat_with_the_node_token(operator: Caller, client: FlaskClient) -> None:
    node = register(operator, "edge-1", "edge", "hk")
    url = f"/api/v1/nodes/{node['id']}/heartbeat"
    body = {"metrics": {"connections": 10, "p99_latency_ms": 12.5}, "applied_version": None}
    assert client.post(url, json=body).status_code == 401
    wrong = client.post(url, json=body, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    other = client.post(
        "/api/v1/nodes/ffffffffffffffffffffffff/heartbeat",
        json=body,
        headers={"Authorization": f"Bearer {node['token']}"},
    )
    assert other.status_code == 401
    ok = client.post(url, json=body, headers={"Authorization": f"Bearer {node['token']}"})
    assert ok.status_code == 200, ok.json
    assert ok.json == {"desired_version": None, "config_updated": False}
    seen = operator.get(f"/api/v1/nodes/{node['id']}").json
    assert seen["last_seen"] is not None
    assert seen["metrics"]["connections"] == 10 and seen["metrics"]["p99_latency_ms"] == 12.5
