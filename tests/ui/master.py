"""The master the browser tests drive: the real app on a real store, served by waitress on a
loopback port (so the browser talks HTTP to it), optionally leading with its deployment worker
(the real ansible-runner on the local-connection project of ``tests.master``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from pymongo import MongoClient

from master_api import create_app
from master_api.extensions import StoreExtension, repos
from master_api.leader import DeploymentWorker, LeaderElector
from master_api.models import ROLES
from master_api.settings import Settings
from tests.master.conftest import PASSWORD, make_user
from tests.master.deployments_project import DEPLOY, deploy_settings
from tests.master.helpers import HttpAnswer, http, serve_in_thread, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The console build the master serves (``make web``).
UI_DIR = REPO_ROOT / "web" / "dist"


@dataclass
class UiMaster:
    """A running master: its base URL, app and settings, and API calls as any user."""

    url: str
    app: Flask
    settings: Settings
    root: Path
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def token(self, user: str, password: str = PASSWORD) -> str:
        """An access token of ``user``, logged in again when half its life has passed."""
        token, obtained = self._tokens.get(user, ("", 0.0))
        if time.monotonic() - obtained > self.settings.access_token_ttl / 2:
            answer = http(
                "POST",
                f"{self.url}/api/v1/auth/login",
                {"username": user, "password": password},
            )
            assert answer.status == 200, answer.body
            token, obtained = answer.json()["access_token"], time.monotonic()
            self._tokens[user] = (token, obtained)
        return token

    def api(self, method: str, path: str, body: Any = None, user: str = "operator") -> HttpAnswer:
        """One API call over HTTP as ``user`` (a role name: each role has a user so named)."""
        return http(method, f"{self.url}/api/v1{path}", body, token=self.token(user))

    def ok(self, method: str, path: str, body: Any = None, user: str = "operator") -> Any:
        answer = self.api(method, path, body, user)
        assert 200 <= answer.status < 300, (answer.status, answer.body)
        return answer.json()


@contextmanager
def start_master(
    mongo_uri: str, root: Path, ui_dir: Path, leader: bool = False, **overrides: Any
) -> Iterator[UiMaster]:
    """Serve a master on a fresh test database (dropped afterwards), with users ``admin``,
    ``operator`` and ``viewer``; with ``leader`` it also leads and runs deployments."""
    settings = deploy_settings(mongo_uri, root, ui_dir=str(ui_dir), **overrides)
    # tests.master's deploy.yml, but batched by the deployment's serial, as the real one is.
    batched = DEPLOY.replace(
        "  hosts: all\n", "  hosts: all\n  serial: \"{{ aicdn_serial | default('100%') }}\"\n", 1
    )
    assert batched != DEPLOY
    Path(settings.ansible_playbook_dir, "deploy.yml").write_text(batched)
    assert settings.mongo_uri is not None
    MongoClient(settings.mongo_uri).drop_database(settings.mongo_db)
    app = create_app(settings)
    for role in ROLES:
        make_user(app, role, role)
    with ExitStack() as stack:
        stack.callback(_drop, app, settings)
        if leader:
            elector = LeaderElector(repos(app), settings, "ui-test")
            assert elector.tick()
            elector.start()
            stack.callback(elector.stop)
            worker = DeploymentWorker(
                lambda: elector.is_leader, repos(app), settings, elector.member_id
            )
            worker.start()
            stack.callback(worker.stop)
        url = stack.enter_context(serve_in_thread(app, threads=12))
        yield UiMaster(url, app, settings, root)


def _drop(app: Flask, settings: Settings) -> None:
    store = StoreExtension.get(app)[0]
    store.client.drop_database(settings.mongo_db)
    store.close()


class Console:
    """The console in one browser page: log in, open screens, save numbered screenshots."""

    def __init__(self, page: Any, master: UiMaster, artifacts: Path) -> None:
        self.page = page
        self.master = master
        self.artifacts = artifacts
        self._shots = 0

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot as ``NN-name.png`` in this test's artifacts."""
        self._shots += 1
        path = self.artifacts / f"{self._shots:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def open(self, screen: str = "") -> None:
        self.page.goto(f"{self.master.url}/ui/#/{screen}")

    def login(self, user: str, password: str = PASSWORD) -> None:
        """Log in from the login screen and wait for the console to show the user."""
        page = self.page
        if not page.url.startswith(f"{self.master.url}/ui/"):
            self.open()
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("[data-testid=login-submit]")
        page.wait_for_selector("[data-testid=who]")

    def nav(self, screen: str) -> None:
        """Open a screen with the top bar's link (as a person would)."""
        self.page.click(f"[data-testid=nav-{screen}]")
        self.page.wait_for_selector(f"[data-testid={screen}]")

    def confirm(self) -> None:
        self.page.click("[data-testid=confirm-ok]")
        self.page.wait_for_selector("[data-testid=confirm-dialog]", state="detached")


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> float:
    """``tests.master.helpers.wait_until`` (re-exported for the browser tests)."""
    return wait_until(predicate, timeout, interval)
