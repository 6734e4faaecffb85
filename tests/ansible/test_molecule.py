"""The molecule scenarios, run for real: `molecule test -s default` and `-s rollout`.

They need podman (with runc) and root, and the image of molecule/image/build.sh, which this
module builds or reuses (cached under /var/tmp). Without podman they are skipped - unless
AICDN_REQUIRE_MOLECULE=1 (set by .ci/run and `make test-ansible`), where that is a failure.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from aicdn_ansible_helpers import BIN, REPO

pytestmark = [pytest.mark.molecule, pytest.mark.slow]

#: Upper bound for one scenario (they take 3-6 minutes on 2 cores).
TIMEOUT = 25 * 60


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
