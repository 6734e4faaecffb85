"""The web console's serving at /ui (master_api.console) and POST /configs/validate, the
console's Validate: without a build /ui says how to make one; with one it serves the files
with their caching and security headers, refuses paths outside the build, and leaves the API
(and its OpenAPI document) as it was."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from master_api import create_app
from master_api.api.routing import ROUTES
from master_api.console import NOT_BUILT
from master_api.extensions import StoreExtension
from master_api.settings import Settings
from tests.master.conftest import Caller


def _build(root: Path) -> Path:
    """A stand-in build with the layout Vite writes."""
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script src="./assets/app-1a2b.js"></script>')
    (root / "assets" / "app-1a2b.js").write_text("console.log('console')\n")
    return root


def _app(settings: Settings, ui_dir: Path) -> Flask:
    return create_app(settings.with_overrides(ui_dir=str(ui_dir)))


def test_without_a_build_ui_says_to_run_make_web(settings: Settings, tmp_path: Path) -> None:
    app = _app(settings, tmp_path / "missing")
    try:
        client = app.test_client()
        for path in ("/ui/", "/ui/assets/app.js", "/ui/nodes"):
            answer = client.get(path)
            assert answer.status_code == 503, path
            assert "make web" in answer.text and NOT_BUILT in answer.text
        assert client.get("/api/v1/healthz").status_code == 200  # the API is unaffected
    finally:
        StoreExtension.get(app)[0].close()


def test_a_build_is_served_with_its_headers(settings: Settings, tmp_path: Path) -> None:
    app = _app(settings, _build(tmp_path / "dist"))
    try:
        client = app.test_client()
        bare = client.get("/ui")
        assert bare.status_code == 308 and bare.headers["Location"].endswith("/ui/")
        index = client.get("/ui/")
        assert index.status_code == 200 and "app-1a2b.js" in index.text
        assert index.headers["Cache-Control"] == "no-cache"
        csp = index.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-eval" not in csp
        assert index.headers["X-Content-Type-Options"] == "nosniff"
        asset = client.get("/ui/assets/app-1a2b.js")
        assert asset.status_code == 200 and "javascript" in asset.headers["Content-Type"]
        assert "immutable" in asset.headers["Cache-Control"]
        for outside in ("/ui/../pyproject.toml", "/ui/%2e%2e/pyproject.toml", "/ui/nope.js"):
            answer = client.get(outside)
            assert answer.status_code == 404, outside
            assert "console" in answer.text
        assert (tmp_path / "dist" / "index.html").exists()
    finally:
        StoreExtension.get(app)[0].close()


def test_the_console_adds_no_api_route(app: Flask) -> None:
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert not any(rule.startswith("/ui") for rule in rules)
    paths = app.test_client().get("/api/v1/openapi.json").json["paths"]
    assert not any(path.startswith("/ui") for path in paths)
    assert any(r.rule == "/configs/validate" for r in ROUTES)


def test_validate_accepts_a_draft_without_storing_it(operator: Caller) -> None:
    body = {"node_type": "edge", "template": "edge", "params": {"edge_password": "s3cret-pass"}}
    answer = operator.post("/api/v1/configs/validate", json=body)
    assert answer.status_code == 200, answer.json
    assert answer.json["valid"] is True and "services:" in answer.json["config_data"]
    assert len(answer.json["checksum"]) == 64
    assert operator.get("/api/v1/configs").json["items"] == []
    created = operator.post("/api/v1/configs", json=body).json
    assert created["checksum"] == answer.json["checksum"]  # what a draft would store


def test_validate_lists_the_checker_issues_at_their_paths(operator: Caller) -> None:
    good = operator.post(
        "/api/v1/configs/validate",
        json={"node_type": "edge", "template": "edge", "params": {"edge_password": "s3cret-p"}},
    ).json["config_data"]
    broken = good.replace("addr: :443", "addr: :99999", 1)
    answer = operator.post(
        "/api/v1/configs/validate", json={"node_type": "edge", "config_data": broken}
    )
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_config"
    assert [i["path"] for i in answer.json["issues"]] == ["services[0].addr"]
    both = operator.post(
        "/api/v1/configs/validate",
        json={"node_type": "edge", "config_data": good, "template": "edge"},
    )
    assert both.status_code == 400 and "either config_data or template" in both.json["message"]
    assert operator.get("/api/v1/configs").json["items"] == []


def test_a_viewer_cannot_validate(viewer: Caller) -> None:
    answer = viewer.post(
        "/api/v1/configs/validate", json={"node_type": "edge", "config_data": "services: []"}
    )
    assert answer.status_code == 403
