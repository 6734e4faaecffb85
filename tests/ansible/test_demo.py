"""`make demo`, run for real as a user runs it: the master deploys the relay through Ansible to
a core and an edge, a completion streams through edge -> core -> origin, a config change is
applied hot under a running stream, and the config is rolled back (master_api.demo). Once on
podman hosts (containers booting systemd, where podman works) and once on local-connection
hosts (the relay role's process mode), the demo's fallback.

What is asserted is what the demo prints and promises: every step done, every token of every
stream once and in order, the reload hot (same relay PID), the rollback applied."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aicdn_ansible_helpers import BIN, REPO

pytestmark = [pytest.mark.slow]

TIMEOUT = 20 * 60


def run_demo(hosts: str, env: dict[str, str], tmp_path: Path) -> str:
    log = tmp_path / "demo.log"
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "master_api.demo", "--hosts", hosts,
             "--workdir", str(tmp_path / "demo")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    text = log.read_text(errors="replace")
    took = time.monotonic() - started
    print(f"demo on {hosts} hosts: rc={result.returncode} in {took:.0f}s (log {log})")
    assert result.returncode == 0, text[-6000:]
    return text


def assert_the_whole_loop(text: str) -> None:
    # Versions are numbered in the order the demo creates them: core v1, edge v2, edge v3.
    assert re.search(r"deployment \w+ successful in \d+ s \(core-1 ok, edge-1 ok\)", text), text
    assert "20 tokens, time to first token" in text
    hot = r"the edge runs config v3 \(idle_timeout 120s\); relay PID (\d+) -> (\d+)"
    pids = re.search(hot, text)
    assert pids and pids.group(1) == pids.group(2), text
    assert "stream across the reload: 1200/1200 tokens, in order, no break" in text
    assert "edge config rolled back: v3 -> v2" in text
    assert "the edge runs v2 again" in text
    assert re.search(r"rollback\s+v3 -> v2\s+by demo", text), text
    assert text.count(" reload   successful ") == 2 and " deploy   successful " in text
    assert "master, origin and hosts stopped" in text


@pytest.mark.molecule
def test_the_demo_on_podman_hosts(molecule_env: dict[str, str], tmp_path: Path) -> None:
    text = run_demo("podman", molecule_env, tmp_path)
    assert "podman hosts ready" in text
    assert_the_whole_loop(text)
    done = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    assert "aicdn-demo-" not in done.stdout, "the demo left containers behind"


def test_the_demo_on_local_hosts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    text = run_demo("local", env, tmp_path)
    assert "local hosts ready" in text
    assert_the_whole_loop(text)
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True, check=False
    )
    assert leftover.stdout == "", f"relays left running: {leftover.stdout}"
