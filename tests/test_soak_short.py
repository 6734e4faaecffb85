"""A short run of bench/soak.py (make soak runs it for minutes): streams, aborted clients,
abandoned heads and reloads against a relay process, after which its connection gauges, file
descriptors and asyncio tasks are back at the warm baseline and its RSS within 25 % of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_returns_to_baseline() -> None:
    command = [sys.executable, "-m", "bench.soak", "--duration", "15", "--warmup", "6",
               "--warmup-settle", "12", "--settle", "32", "--clients", "16", "--every", "5",
               "--reload-every", "4"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    # The exit status first: a soak that failed before its report shows why.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{\n") : done.stdout.rindex("}") + 1])
    assert report["completed"] > 100 and report["aborted"] > 50 and report["reloads"] >= 3
    assert report["broken"] == 0 and report["errors"] == {}
    assert report["final"]["active"] == {"edge": 0.0, "core": 0.0}
    assert report["final"]["tasks"] <= report["baseline"]["tasks"]
