"""The web console in Debian's Chromium against a real master: log in (and a refused login),
every screen with real data (a drifting node highlighted, an alert raised by the monitor),
configs from draft to rollback through the screens, the viewer's read-only console, and a
session that ends cleanly when its refresh token is refused. Each screen is saved as a
screenshot under the test's artifacts."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from master_api.extensions import repos, settings
from master_api.services.monitor import Monitor
from tests.master.helpers import http
from tests.ui.master import UI_DIR, Console, UiMaster, start_master, wait_for

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails, in CI) with the reason
    expect = None

EDGE_PARAMS = {"edge_password": "s3cret-pass"}


def _node(master: UiMaster, name: str, type_: str, region: str, **extra: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "type": type_,
        "region": region,
        "addr": f"{name}.example",
        "port": 443 if type_ == "edge" else 8443,
        **extra,
    }
    node: dict[str, Any] = master.ok("POST", "/nodes", body)
    return node


def _beat(
    master: UiMaster, node: dict[str, Any], applied: int | None = None, **metrics: Any
) -> None:
    answer = http(
        "POST",
        f"{master.url}/api/v1/nodes/{node['id']}/heartbeat",
        {"metrics": metrics, "applied_version": applied},
        token=node["token"],
    )
    assert answer.status == 200, answer.body


def _run_monitor(app: Flask, later: float = 0.0) -> None:
    """One pass of the leader's monitor, as if ``later`` seconds from now."""
    with app.app_context():
        Monitor(repos(), settings(), None).run_once(time.time() + later)


def _text(console: Console, selector: str) -> str:
    return str(console.page.inner_text(selector))


def test_log_in_and_every_screen_shows_the_fleet(console: Console, master: UiMaster) -> None:
    edge = _node(master, "edge-hk-1", "edge", "hk", tags=["blue"])
    _node(master, "edge-sg-1", "edge", "sg")
    core = _node(master, "core-cn-1", "core", "cn")
    version = master.ok(
        "POST", "/configs", {"node_type": "edge", "template": "edge", "params": EDGE_PARAMS}
    )["version_id"]
    master.ok("POST", f"/configs/{version}/publish")
    # edge-hk-1 reports the version applied; edge-sg-1 never does: it drifts.
    _beat(master, edge, version, connections=12, max_connections=1000, p99_latency_ms=20.0)
    _beat(master, core, p99_latency_ms=450.0, connections=3, max_connections=1000)
    _run_monitor(master.app)  # HighLatency on core-cn-1

    page = console.page
    console.open()
    page.wait_for_selector("[data-testid=login-form]")
    console.shot("login")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", "not the password")
    page.click("[data-testid=login-submit]")
    page.wait_for_selector("[data-testid=error]")
    assert "401" in _text(console, "[data-testid=error]")
    assert "wrong password" in _text(console, "[data-testid=error]")
    console.shot("login-refused")

    console.login("operator")
    assert "operator" in _text(console, "[data-testid=who]")
    expect(page.locator("[data-testid=overview-nodes] .big")).to_have_text("3")
    expect(page.locator("[data-testid=overview-drift] .big")).to_have_text("1")
    expect(page.locator("[data-testid=overview-alerts] .big")).to_have_text("1")
    assert f"v{version}" in _text(console, "[data-testid=overview-active-table]")
    console.shot("overview")

    console.nav("nodes")
    page.wait_for_selector("tr[data-node=edge-sg-1]")
    drifting = page.locator("tr.drift")
    assert drifting.count() == 1
    assert drifting.get_attribute("data-node") == "edge-sg-1"
    assert drifting.get_attribute("data-drift") == "unreachable"  # no agent ever reported
    assert page.locator("tr[data-node=edge-hk-1]").get_attribute("data-drift") == ""
    assert "12 / 1000" in _text(console, "tr[data-node=edge-hk-1]")
    console.shot("nodes")
    page.select_option("[data-testid=filter-type]", "core")
    expect(page.locator("tr[data-node]")).to_have_count(1)
    assert page.locator("tr[data-node]").get_attribute("data-node") == "core-cn-1"
    console.shot("nodes-filtered")

    console.nav("configs")
    page.click(f"tr[data-version='{version}']")
    page.wait_for_selector("[data-testid=yaml]")
    assert "services:" in _text(console, "[data-testid=yaml]")
    console.shot("configs")

    console.nav("deployments")
    page.wait_for_selector("[data-testid=deploy-form]")
    console.shot("deployments")

    console.nav("alerts")
    page.wait_for_selector("tr[data-alert=HighLatency]")
    assert "core-cn-1" in _text(console, "tr[data-alert=HighLatency]")
    console.shot("alerts")
    _beat(master, core, p99_latency_ms=30.0, connections=3, max_connections=1000)
    # 10 s on, with no heartbeat since: both reporting nodes are offline (NodeOffline), and
    # core-cn-1's latency alert is resolved.
    _run_monitor(master.app, later=10.0)
    page.click("[data-testid=alerts-resolved]")
    expect(page.locator("tr[data-alert=HighLatency]")).to_contain_text("resolved")
    page.click("[data-testid=alerts-active]")
    offline = page.locator("tr[data-alert=NodeOffline]")
    expect(offline).to_have_count(2)
    expect(offline.filter(has_text="edge-hk-1")).to_have_count(1)
    expect(page.locator("tr[data-alert=HighLatency]")).to_have_count(0)
    page.click("[data-testid=alerts-resolved]")
    console.shot("alerts-resolved")

    page.click("[data-testid=logout]")
    page.wait_for_selector("[data-testid=session-notice]")
    assert "Logged out" in _text(console, "[data-testid=session-notice]")


def test_a_config_from_draft_to_publish_diff_rollback_and_deprecate(
    console: Console, master: UiMaster
) -> None:
    page = console.page
    console.login("operator")
    console.nav("configs")
    draft = page.locator("[data-testid=draft-form]")

    # A template parameter the checker refuses: the issue is shown at its path.
    page.fill("[data-testid=draft-params]", '{"edge_password": "s3cret-pass", "port": 70000}')
    draft.locator("[data-testid=validate]").click()
    issues = draft.locator("[data-testid=issues]")
    expect(issues).to_contain_text("params.port")
    expect(issues).to_contain_text("70000")
    console.shot("validate-refused")
    page.fill("[data-testid=draft-params]", '{"edge_password": "s3cret-pass"}')
    draft.locator("[data-testid=validate]").click()
    expect(draft.locator("[data-testid=validation-ok]")).to_be_visible()
    expect(issues).to_have_count(0)
    page.fill("[data-testid=draft-description]", "first edge config")
    draft.locator("[data-testid=create-draft]").click()
    page.wait_for_url(re.compile(r".*#/configs/1$"))
    expect(page.locator("[data-testid=version-status]")).to_have_text("draft")

    page.click("[data-testid=publish]")
    expect(page.locator("[data-testid=confirm-dialog]")).to_contain_text("Publish v1?")
    console.shot("publish-confirm")
    console.confirm()
    expect(page.locator("[data-testid=notice]")).to_contain_text("Published v1")
    expect(page.locator("[data-testid=version-status]")).to_have_text("active")
    assert master.ok("GET", "/configs/1", user="viewer")["active_regions"] == ["*"]

    # v2 from v1's YAML: first with a broken service (refused at its path), then fixed.
    page.click("[data-testid=start-from]")
    yaml_box = page.locator("[data-testid=draft-yaml]")
    original = yaml_box.input_value()
    assert "level: info" in original and "addr: :443" in original
    yaml_box.fill(original.replace("addr: :443", "addr: :99999", 1))
    draft.locator("[data-testid=create-draft]").click()
    expect(issues).to_contain_text("services[0].addr")
    expect(issues).to_contain_text("out of range")
    # ... and at the line of the YAML it names.
    broken_line = original.split("\n").index("  addr: :443") + 1
    cell = issues.locator("[data-path='services[0].addr'] .issue-line")
    expect(cell).to_have_attribute("data-line", str(broken_line))
    expect(cell).to_contain_text("addr: :99999")
    console.shot("draft-refused")
    assert len(master.ok("GET", "/configs", user="viewer")["items"]) == 1  # nothing stored
    yaml_box.fill(original.replace("level: info", "level: debug", 1))
    draft.locator("[data-testid=create-draft]").click()
    page.wait_for_url(re.compile(r".*#/configs/2$"))
    page.click("[data-testid=publish]")
    console.confirm()
    expect(page.locator("[data-testid=notice]")).to_contain_text("v1 → v2")
    expect(page.locator("[data-testid=version-status]")).to_have_text("active")

    page.select_option("[data-testid=diff-against]", "1")
    diff = page.locator("[data-testid=diff]")
    expect(diff.locator(".diff-del")).to_contain_text(["level: info"])
    expect(diff.locator(".diff-add")).to_contain_text(["level: debug"])
    console.shot("diff")

    rollback = page.locator("[data-testid=rollback-form]")
    rollback.locator("[data-testid=rollback-region]").fill("*")
    rollback.locator("[data-testid=rollback-reason]").fill("debug logs are too loud")
    rollback.locator("[data-testid=rollback]").click()
    expect(page.locator("[data-testid=confirm-dialog]")).to_contain_text("previous version")
    console.confirm()
    expect(page.locator("[data-testid=notice]")).to_contain_text("back from v2 to v1")
    assert master.ok("GET", "/configs/1")["status"] == "active"
    assert master.ok("GET", "/configs/2")["status"] == "published"
    expect(page.locator("[data-testid=history-table]")).to_contain_text("rollback")
    console.shot("rolled-back")

    # The API's refusal is shown, not swallowed: v1 is already active.
    rollback.locator("[data-testid=rollback-to]").fill("1")
    rollback.locator("[data-testid=rollback]").click()
    console.confirm()
    error = page.locator("[data-testid=configs] > [data-testid=error]")
    expect(error).to_contain_text("409")
    console.shot("rollback-refused")

    page.click("tr[data-version='2']")
    page.wait_for_url(re.compile(r".*#/configs/2$"))
    page.click("[data-testid=deprecate]")
    console.confirm()
    expect(page.locator("[data-testid=version-status]")).to_have_text("deprecated")
    expect(page.locator("[data-testid=publish]")).to_have_count(0)


def test_a_viewer_sees_no_buttons_it_cannot_use(console: Console, master: UiMaster) -> None:
    version = master.ok(
        "POST", "/configs", {"node_type": "edge", "template": "edge", "params": EDGE_PARAMS}
    )["version_id"]
    page = console.page
    console.login("viewer")
    assert "viewer" in _text(console, "[data-testid=who]")
    console.nav("configs")
    page.click(f"tr[data-version='{version}']")
    expect(page.locator("[data-testid=yaml]")).to_contain_text("services:")
    expect(page.locator("[data-testid=version-status]")).to_have_text("draft")
    for hidden in ("publish", "deprecate", "draft-form", "rollback-form", "validate"):
        expect(page.locator(f"[data-testid={hidden}]")).to_have_count(0)
    console.shot("configs-viewer")
    console.nav("deployments")
    expect(page.locator("[data-testid=deployments-table]")).to_be_visible()
    expect(page.locator("[data-testid=deploy-form]")).to_have_count(0)
    console.shot("deployments-viewer")
    # And the master agrees: the viewer's own token cannot publish.
    answer = master.api("POST", f"/configs/{version}/publish", user="viewer")
    assert answer.status == 403, answer.body
    assert master.ok("GET", f"/configs/{version}", user="viewer")["status"] == "draft"


@pytest.mark.slow
def test_the_session_refreshes_then_ends_cleanly(
    browser: Any, mongo_uri: str, tmp_path: Path, artifacts: Path
) -> None:
    """Access tokens of 10 s: the console refreshes before they expire and keeps working;
    once the master refuses the refresh (the user was deleted), it shows the login screen
    with the reason instead of failing call after call."""
    with start_master(mongo_uri, tmp_path, ui_dir=UI_DIR, access_token_ttl=10.0) as master:
        password = "a long enough password"
        master.ok("POST", "/users", {"name": "temp", "role": "operator", "password": password},
                  user="admin")  # fmt: skip
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        try:
            console = Console(context.new_page(), master, artifacts)
            page = console.page
            console.login("temp", password)
            logged_in = time.monotonic()

            def refreshed() -> bool:
                entries = master.ok("GET", "/audit?actor=temp", user="admin")["items"]
                return any(e["path"] == "/api/v1/auth/refresh" for e in entries)

            wait_for(refreshed, 20.0, interval=0.5)  # the console refreshed on its own
            wait_for(lambda: time.monotonic() - logged_in > 11.0, 15.0, interval=0.2)
            console.nav("nodes")  # past the first access token's life: still works
            expect(page.locator("[data-testid=nodes-table]")).to_be_visible()
            expect(page.locator("[data-testid=error]")).to_have_count(0)

            assert master.api("DELETE", "/users/temp", user="admin").status == 204
            notice = page.locator("[data-testid=session-notice]")
            expect(notice).to_contain_text("session has expired", timeout=20_000)
            expect(notice).to_contain_text("no longer exists")
            expect(page.locator("[data-testid=who]")).to_have_count(0)
            console.shot("session-expired")
        finally:
            context.close()
