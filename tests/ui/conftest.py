"""Fixtures of the browser tests: a real master (the app on the session's nx-27017, served by
waitress on loopback, with the built console at /ui), users of each role, and Debian's
Chromium driven by Playwright. Screenshots go to ``tests/ui/artifacts/<test>/`` (or
``AICDN_UI_ARTIFACTS``), which the test output names.

Skipped, with the reason, when Chromium, the playwright package or the console build is
missing -- unless ``AICDN_REQUIRE_UI`` is set (``.ci/run`` sets it and installs all three), in
which case a missing piece fails the tests instead.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.master.conftest import mongo_uri  # noqa: F401  (the session's nx-27017)
from tests.ui.master import REPO_ROOT, UI_DIR, Console, UiMaster, start_master

CHROMIUM = os.environ.get("AICDN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("AICDN_UI_ARTIFACTS", REPO_ROOT / "tests" / "ui" / "artifacts"))
# The flags Debian's Chromium needs here as root, headless, with no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _missing() -> str | None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (the [ui] extra: make venv-ui)"
    if not (UI_DIR / "index.html").is_file():
        return f"the web console is not built ({UI_DIR} has no index.html): run `make web`"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (each test gets its own context)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("AICDN_REQUIRE_UI"):
            pytest.fail(f"AICDN_REQUIRE_UI is set but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot folder, emptied first."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _SAVED.append(folder)
    return folder


@pytest.fixture
def master(mongo_uri: str, tmp_path: Path, browser: Any) -> Iterator[UiMaster]:  # noqa: F811
    """A master serving the API and the console, with a user of each role."""
    with start_master(mongo_uri, tmp_path, ui_dir=UI_DIR) as running:
        yield running


@pytest.fixture
def console(
    browser: Any, master: UiMaster, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Console]:
    """A fresh browser context on the master's console; prints where its screenshots are."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The console runs under the master's strict CSP: anything it refuses is a defect.
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    ui = Console(page, master, artifacts)
    try:
        yield ui
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ui.shot("failure")  # what the page showed when the test failed
        context.close()
        print(f"\nscreenshots of {request.node.name}: {artifacts}")
    assert errors == [], f"JavaScript errors or CSP refusals in the console: {errors}"


_SAVED: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where this run's screenshots are (they are kept after the run, gitignored)."""
    if _SAVED:
        terminalreporter.write_line(f"web console screenshots ({len(_SAVED)} tests): {ARTIFACTS}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so the console fixture can screenshot failures."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
