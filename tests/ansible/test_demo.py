"""`make demo`, run for real as a user runs it: the master deploys the relay through Ansible to
two podman hosts, a completion streams through edge -> core -> origin, a config change is
applied hot under a running stream, and the config is rolled back (master_api.demo).

What is asserted is what the demo prints and promises: every step done, every token of every
stream once and in order, the reload hot (same relay PID), the rollback applied."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aicdn_ansible_helpers import REPO

pytestmark = [pytest.mark.molecule, pytest.mark.slow]

TIMEOUT = 20 * 60


def test_the_demo_runs_the_whole_loop(molecule_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "master_api.demo", "--workdir", str(tmp_path / "demo")],
            cwd=REPO,
            env=molecule_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
            check=False,
        )
    text = log.read_text(errors="replace")
    print(f"make demo: rc={result.returncode} in {time.monotonic() - started:.0f}s (log {log})")
    assert result.returncode == 0, text[-6000:]

    # Versions are numbered in the order the demo creates them: core v1, edge v2, edge v3.
    assert re.search(r"deployment \w+ successful in \d+ s \(core-1 ok, edge-1 ok\)", text), text
    assert "20 tokens, time to first token" in text
    pids = re.search(
        r"the edge runs config v3 \(idle_timeout 120s\); relay PID (\d+) -> (\d+)", text
    )
    assert pids and pids.group(1) == pids.group(2), text
    assert "stream across the reload: 1200/1200 tokens, in order, no break" in text
    assert "edge config rolled back: v3 -> v2" in text
    assert "the edge runs v2 again" in text
    assert re.search(r"rollback\s+v3 -> v2\s+by demo", text), text
    assert text.count(" reload   successful ") == 2 and " deploy   successful " in text
    assert "master, origin and hosts stopped" in text
    done = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    assert "aicdn-demo-" not in done.stdout, "the demo left containers behind"
