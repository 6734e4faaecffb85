"""Config versions end to end: drafts (validated by the relay checker), publish with one active
version per (config_type, node_type, region), deprecate, rollback and its history, diff, and
20 concurrent publishes over real HTTP leaving exactly one active version."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from flask import Flask

from tests.master.conftest import Caller, draft
from tests.master.helpers import http, serve_in_thread

CORE_YAML = """\
services:
- name: core
  addr: ":8443"
  listener: {type: tcp}
  handler: {type: relay, auth: {username: edge, password: pw}}
  forwarder: {nodes: [{name: origin, addr: "127.0.0.1:8000"}]}
"""


def _active(caller: Caller, **query: str) -> list[int]:
    params = "&".join(f"{k}={v}" for k, v in {"status": "active", **query}.items())
    return [v["version_id"] for v in caller.get(f"/api/v1/configs?{params}").json["items"]]


def test_draft_from_yaml_gets_checksum_and_author(operator: Caller) -> None:
    answer = operator.post(
        "/api/v1/configs",
        json={
            "node_type": "core",
            "regions": ["cn"],
            "config_data": CORE_YAML,
            "description": "plain core",
        },
    )
    assert answer.status_code == 201, answer.json
    version = answer.json
    assert version["status"] == "draft" and version["active_regions"] == []
    assert version["checksum"] == hashlib.sha256(CORE_YAML.encode()).hexdigest()
    assert version["created_by"] == "operator" and version["config_type"] == "relay"
    assert operator.get(f"/api/v1/configs/{version['version_id']}").json["config_data"] == CORE_YAML


def test_invalid_drafts_carry_the_checker_issues(operator: Caller) -> None:
    bad_yaml = CORE_YAML.replace("type: tcp", "type: qic")
    answer = operator.post("/api/v1/configs", json={"node_type": "core", "config_data": bad_yaml})
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_config"
    assert {
        "path": "services[0].listener.type",
        "message": answer.json["issues"][0]["message"],
    } in answer.json["issues"]
    assert "qic" in answer.json["issues"][0]["message"]
    answer = operator.post(
        "/api/v1/configs",
        json={"node_type": "edge", "template": "edge", "params": {"port": 0}},
    )
    assert answer.status_code == 400
    paths = {issue["path"] for issue in answer.json["issues"]}
    assert {"params.port", "params.edge_password"} <= paths
    both = operator.post(
        "/api/v1/configs",
        json={"node_type": "core", "template": "core", "config_data": CORE_YAML},
    )
    assert both.status_code == 400 and "not both" in both.json["message"]


def test_lifecycle_publish_rollback_history_diff(operator: Caller, viewer: Caller) -> None:
    v1 = draft(operator, "edge", regions=["hk"])["version_id"]
    v2 = draft(operator, "edge", regions=["hk"], params={"edge_password": "other-pass"})[
        "version_id"
    ]
    assert v2 > v1
    published = operator.post(f"/api/v1/configs/{v1}/publish")
    assert published.status_code == 200, published.json
    assert published.json["status"] == "active"
    assert published.json["changes"] == [{"region": "hk", "from_version": None, "to_version": v1}]
    # Publishing again changes nothing.
    assert operator.post(f"/api/v1/configs/{v1}/publish").json["changes"] == []
    assert operator.post(f"/api/v1/configs/{v2}/publish").json["changes"] == [
        {"region": "hk", "from_version": v1, "to_version": v2}
    ]
    assert _active(viewer, node_type="edge") == [v2]
    assert viewer.get(f"/api/v1/configs/{v1}").json["status"] == "published"

    # Roll back to the previous version.
    rolled = operator.post(
        "/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk", "reason": "bad p99"}
    )
    assert rolled.status_code == 200, rolled.json
    assert (rolled.json["from_version"], rolled.json["to_version"]) == (v2, v1)
    assert rolled.json["reason"] == "bad p99" and rolled.json["actor"] == "operator"
    assert _active(viewer, node_type="edge") == [v1]
    # A named rollback target.
    named = operator.post(
        "/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk", "to_version": v2}
    )
    assert named.status_code == 200 and named.json["to_version"] == v2
    again = operator.post(
        "/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk", "to_version": v2}
    )
    assert again.status_code == 409

    history = viewer.get("/api/v1/configs/history?node_type=edge&region=hk").json["items"]
    assert [(h["action"], h["from_version"], h["to_version"]) for h in history] == [
        ("rollback", v1, v2),
        ("rollback", v2, v1),
        ("publish", v1, v2),
        ("publish", None, v1),
    ]
    rollbacks = viewer.get("/api/v1/configs/rollbacks").json["items"]
    assert [(r["from_version"], r["to_version"]) for r in rollbacks] == [(v1, v2), (v2, v1)]

    diff = operator.get(f"/api/v1/configs/{v1}/diff/{v2}").json["diff"]
    assert diff.startswith(f"--- version {v1}\n+++ version {v2}\n")
    assert "\n-          password: s3cret-pass\n+          password: other-pass\n" in diff
    # A viewer sees that the password changed, not what it is (issue 10: redacted for viewers).
    seen = viewer.get(f"/api/v1/configs/{v1}/diff/{v2}").json["diff"]
    assert '\n-          password: "***"\n+          password: "***"\n' in seen
    assert viewer.get(f"/api/v1/configs/{v1}/diff/{v1}").json["diff"] == ""
    assert viewer.get(f"/api/v1/configs/{v1}/diff/999999").status_code == 404


def test_deprecate(operator: Caller) -> None:
    v1 = draft(operator, "core", regions=["cn"])["version_id"]
    v2 = draft(operator, "core", regions=["cn"])["version_id"]
    operator.post(f"/api/v1/configs/{v1}/publish")
    refused = operator.post(f"/api/v1/configs/{v1}/deprecate")
    assert refused.status_code == 409 and "active in cn" in refused.json["message"]
    operator.post(f"/api/v1/configs/{v2}/publish")
    deprecated = operator.post(f"/api/v1/configs/{v1}/deprecate")
    assert deprecated.status_code == 200 and deprecated.json["status"] == "deprecated"
    assert operator.post(f"/api/v1/configs/{v1}/publish").status_code == 409
    back = operator.post("/api/v1/configs/rollback", json={"node_type": "core", "region": "cn"})
    assert back.status_code == 409 and "deprecated" in back.json["message"]
    assert operator.post("/api/v1/configs/424242/deprecate").status_code == 404


def test_region_specific_version_wins_over_the_wildcard(operator: Caller) -> None:
    everywhere = draft(operator, "edge")["version_id"]
    hk_only = draft(operator, "edge", regions=["hk"])["version_id"]
    operator.post(f"/api/v1/configs/{everywhere}/publish")
    operator.post(f"/api/v1/configs/{hk_only}/publish")
    hk = operator.post(
        "/api/v1/nodes",
        json={"name": "e-hk", "type": "edge", "region": "hk", "addr": "a", "port": 443},
    ).json
    us = operator.post(
        "/api/v1/nodes",
        json={"name": "e-us", "type": "edge", "region": "us", "addr": "b", "port": 443},
    ).json
    assert hk["desired_version"] == hk_only
    assert us["desired_version"] == everywhere


def test_rollback_without_a_previous_version_is_409(operator: Caller) -> None:
    answer = operator.post("/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk"})
    assert answer.status_code == 409
    v1 = draft(operator, "edge", regions=["hk"])["version_id"]
    operator.post(f"/api/v1/configs/{v1}/publish")
    answer = operator.post("/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk"})
    assert answer.status_code == 409 and "no previous version" in answer.json["message"]
    core = draft(operator, "core")["version_id"]
    wrong = operator.post(
        "/api/v1/configs/rollback", json={"node_type": "edge", "region": "hk", "to_version": core}
    )
    assert wrong.status_code == 400


def test_twenty_concurrent_publishes_leave_exactly_one_active(app: Flask, operator: Caller) -> None:
    versions = [draft(operator, "edge", regions=["hk"])["version_id"] for _ in range(20)]
    with serve_in_thread(app, threads=8) as base:

        def publish(version_id: int) -> int:
            return http(
                "POST", f"{base}/api/v1/configs/{version_id}/publish", token=operator.token
            ).status

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(publish, versions))
    assert statuses == [200] * 20
    active = _active(operator, node_type="edge", region="hk")
    assert len(active) == 1 and active[0] in versions
    # Every publish moved the pointer exactly once, each from the version before it: the
    # history is one unbroken chain ending at the active version.
    history = operator.get("/api/v1/configs/history?node_type=edge&region=hk&limit=100").json
    moves = [(h["from_version"], h["to_version"]) for h in history["items"]]
    assert len(moves) == 20
    chain = {src: dst for src, dst in moves}
    current, seen = None, 0
    while current in chain:
        current, seen = chain[current], seen + 1
    assert seen == 20 and current == active[0]
