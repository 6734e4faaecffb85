"""Deployments from the console against a leading master: the real ansible-runner on
local-connection hosts (tests.master's tiny project, batched by ``serial``). The operator
starts one in the browser and watches its events arrive live, batch by batch, until it
succeeds; another is canceled from the console while its play pauses."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.master.deployments_project import DEPLOY
from tests.ui.master import UI_DIR, Console, UiMaster, start_master

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails, in CI) with the reason
    expect = None

_PLAYBOOK_BIN = shutil.which(
    "ansible-playbook",
    path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
)
# Like tests/master's deployment tests: skipped without Ansible, never in CI.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _PLAYBOOK_BIN is None and not os.environ.get("CI"),
        reason="ansible-playbook is not installed (the [ansible] extra: make venv-ansible)",
    ),
]

TERMINAL = ("successful", "failed", "canceled", "rolled_back", "interrupted")


@pytest.fixture
def master(mongo_uri: str, tmp_path: Path, browser: Any) -> Iterator[UiMaster]:
    """A leading master: it claims and runs the deployments the console starts."""
    with start_master(mongo_uri, tmp_path, ui_dir=UI_DIR, leader=True) as running:
        yield running


def _local_node(master: UiMaster, name: str, **host: Any) -> dict[str, Any]:
    prefix = master.root / "hosts" / name
    prefix.mkdir(parents=True)
    ansible_vars = {"ansible_connection": "local", "aicdn_prefix": str(prefix), **host}
    node: dict[str, Any] = master.ok(
        "POST",
        "/nodes",
        {
            "name": name,
            "type": "edge",
            "region": "hk",
            "addr": f"{name}.example",
            "port": 443,
            "metadata": {"ansible_vars": ansible_vars},
        },
    )
    node["prefix"] = prefix
    return node


def _start(console: Console, **fields: str) -> str:
    """Fill the start form, start, and return the new deployment's id (from the URL)."""
    page = console.page
    form = page.locator("[data-testid=deploy-form]")
    for name, value in fields.items():
        form.locator(f"[data-testid=deploy-{name}]").fill(value)
    form.locator("[data-testid=deploy-start]").click()
    page.wait_for_url(re.compile(r".*#/deployments/[0-9a-f]{24}$"))
    return page.url.rsplit("/", 1)[1]


def _status(console: Console) -> str:
    return str(console.page.inner_text("[data-testid=deployment-status]")).strip()


def test_a_deployment_started_in_the_console_streams_its_batches_live(
    console: Console, master: UiMaster
) -> None:
    nodes = [_local_node(master, name, aicdn_sleep="2") for name in ("n1", "n2")]
    # An online core for the edges' config to chain to (not a target of the deployment).
    master.ok(
        "POST",
        "/nodes",
        {"name": "core-1", "type": "core", "region": "cn", "addr": "core-1.example", "port": 8443},
    )
    version = master.ok(
        "POST",
        "/configs",
        {"node_type": "edge", "template": "edge", "params": {"edge_password": "s3cret-pass"}},
    )["version_id"]
    page = console.page
    console.login("operator")
    console.nav("deployments")
    expect(page.locator("[data-testid=deploy-auto-rollback]")).to_be_checked()
    deployment_id = _start(
        console, config=str(version), release="1.0.0", nodes="n1, n2", serial="1"
    )
    expect(page.locator("[data-testid=live]")).to_be_visible()

    # Events must show up while the deployment still runs (two batches pausing 2 s each).
    log = page.locator("[data-testid=event-log] .event")
    seen_live = False
    shot_live = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = _status(console)
        results = page.locator("[data-testid=event-log] [data-event=runner_on_ok]").count()
        if status == "running" and results > 0:
            seen_live = True
            if not shot_live:
                console.shot("deployment-running")
                shot_live = True
        if status in TERMINAL:
            break
        time.sleep(0.1)
    assert seen_live, "no playbook result reached the console while the deployment ran"
    expect(page.locator("[data-testid=deployment-status]")).to_have_text("successful")
    expect(page.locator("[data-testid=live]")).to_have_count(0)  # the stream ended

    # One batch per host (serial 1), both complete, with their host and tasks.
    batches = page.locator("[data-testid=batches] .batch")
    expect(batches).to_have_count(2)
    expect(page.locator("[data-batch=deploy-1]")).to_have_attribute("data-done", "yes")
    expect(page.locator("[data-batch=deploy-2]")).to_have_attribute("data-done", "yes")
    expect(page.locator("[data-batch=deploy-1] .batch-head")).to_contain_text("n1")
    expect(page.locator("[data-batch=deploy-2] .batch-head")).to_contain_text("n2")
    tasks = DEPLOY.count("\n    - name: ")
    expect(page.locator("[data-batch=deploy-2] .batch-head")).to_contain_text(f"{tasks} tasks")

    # The log holds every stored event, in order, ending with the master's own.
    stored = master.ok("GET", f"/deployments/{deployment_id}")
    counters = [int(c) for c in log.locator(".counter").all_inner_texts()]
    assert counters == list(range(1, len(counters) + 1)) and len(counters) > 10
    names = log.locator(".name").all_inner_texts()
    assert names[0] == "deployment_started" and names[-1] == "deployment_finished"
    assert names.count("playbook_on_play_start") == 2
    assert "Write the done marker" in page.inner_text("[data-testid=event-log]")
    hosts = page.locator("[data-testid=hosts-deploy]")
    expect(hosts).to_contain_text("n1")
    expect(hosts).to_contain_text("n2")
    expect(page.locator(f"tr[data-deployment='{deployment_id}']")).to_contain_text("successful")
    console.shot("deployment-done")

    assert stored["status"] == "successful" and stored["serial"] == 1
    for node in nodes:
        assert (node["prefix"] / "release").read_text() == "1.0.0 \n"
        assert (node["prefix"] / "done").read_text().strip() == str(version)


def test_a_running_deployment_is_canceled_from_the_console(
    console: Console, master: UiMaster
) -> None:
    node = _local_node(master, "slow", aicdn_sleep="60")
    page = console.page
    console.login("operator")
    console.nav("deployments")
    deployment_id = _start(console, release="2.0.0", nodes="slow")
    expect(page.locator("[data-testid=event-log]")).to_contain_text(
        "Wait when told to", timeout=60_000
    )
    expect(page.locator("[data-testid=deployment-status]")).to_have_text("running")
    page.click("[data-testid=cancel]")
    console.shot("cancel-confirm")
    console.confirm()
    expect(page.locator("[data-testid=deployment-status]")).to_have_text("canceled", timeout=30_000)
    expect(page.locator("[data-testid=cancel]")).to_have_count(0)
    expect(page.locator("[data-testid=event-log]")).to_contain_text("runner canceled")
    expect(page.locator("[data-batch=deploy-1]")).to_have_attribute("data-outcome", "canceled")
    expect(page.locator(f"tr[data-deployment='{deployment_id}']")).to_contain_text("canceled")
    console.shot("canceled")
    stored = master.ok("GET", f"/deployments/{deployment_id}")
    assert stored["status"] == "canceled" and stored["canceled_by"] == "operator"
    assert not (node["prefix"] / "done").exists()
