"""The molecule scenarios, run for real: `molecule test -s default` and `-s rollout`.

They need podman (with runc) and root, and the image of molecule/image/build.sh, which this
module builds or reuses (cached under /var/tmp). Without podman they are skipped - unless
AICDN_REQUIRE_MOLECULE=1 (set by .ci/run and `make test-ansible`), where that is a failure.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aicdn_ansible_helpers import BIN, REPO

pytestmark = [pytest.mark.molecule, pytest.mark.slow]

#: Upper bound for one scenario (they take 3-6 minutes on 2 cores).
TIMEOUT = 25 * 60


@pytest.fixture(scope="module")
def molecule_env() -> dict[str, str]:
    required = os.environ.get("AICDN_REQUIRE_MOLECULE") == "1"
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        reason = f"molecule needs root and {', '.join(missing) or 'podman'}"
        if required:
            pytest.fail(f"{reason} (AICDN_REQUIRE_MOLECULE=1)")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Instances get the open-file limit this shell may hand out (no CAP_SYS_RESOURCE here).
    env["AICDN_NOFILE"] = str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    subprocess.run(
        ["bash", str(REPO / "molecule/image/build.sh")], env=env, check=True, timeout=1200
    )
    return env


@pytest.mark.parametrize("scenario", ["default", "rollout"])
def test_molecule_scenario(scenario: str, molecule_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / f"molecule-{scenario}.log"
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [str(BIN / "molecule"), "test", "--scenario-name", scenario],
            cwd=REPO,
            env=molecule_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
            check=False,
        )
    elapsed = time.monotonic() - started
    lines = log.read_text(errors="replace").splitlines()
    print(f"molecule test -s {scenario}: rc={result.returncode} in {elapsed:.0f}s (log {log})")
    assert result.returncode == 0, "\n".join(lines[-200:])
