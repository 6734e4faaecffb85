"""Disk full or read-only on a node: the agent's config write fails cleanly (the apply is
refused with the reason, the config file and the running relay are untouched, no temporary
file is left) and the same version applies once the disk is writable again.

As root the directory is a 256 KiB tmpfs in a private mount namespace (``unshare -m``), filled
up or remounted read-only; otherwise a directory without write permission stands in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CAN_MOUNT = os.geteuid() == 0 and shutil.which("unshare") is not None


def _run(directory: Path, mode: str) -> dict[str, object]:
    node = [sys.executable, "-m", "tests.disk_fault_node", str(directory), mode]
    if mode in ("full", "readonly"):
        script = 'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"'
        node = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                str(directory), *node]  # fmt: skip
    done = subprocess.run(node, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


NEEDS_MOUNT = pytest.mark.skipif(not CAN_MOUNT, reason="a tmpfs needs root and unshare")
NOT_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        pytest.param("full", "No space left", marks=NEEDS_MOUNT),
        pytest.param("readonly", "Read-only file system", marks=NEEDS_MOUNT),
        pytest.param("chmod", "Permission denied", marks=NOT_ROOT),
    ],
)
def test_a_config_write_that_fails_keeps_the_running_config(
    tmp_path: Path, mode: str, reason: str
) -> None:
    report = _run(tmp_path, mode)
    assert report["outcome"] == "rejected", report
    assert "cannot write" in str(report["message"]) and reason in str(report["message"]), report
    assert report["running"] == 1 and report["applied_version"] == 1
    assert report["unchanged"] is True
    assert report["leftovers"] == []  # no half-written temporary file
    assert report["after"] == {"outcome": "applied", "running": 2}
