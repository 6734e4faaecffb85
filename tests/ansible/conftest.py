"""Fixtures of the Ansible tests (tests/ansible): see aicdn_ansible_helpers.

Everything here needs the `ansible` extra (`make venv-ansible`); without it the directory is
skipped, so a plain `make test` still runs on a machine that never installed Ansible.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess

import pytest

# ansible-core's own module, not the name: with tests/ on sys.path, this very directory would
# import as a namespace package called "ansible".
pytest.importorskip(
    "ansible.module_utils", reason="the ansible extra is not installed (make venv-ansible)"
)

from aicdn_ansible_helpers import BIN, REPO, stub_master  # noqa: F401 - the fixture

collect_ignore = ["aicdn_ansible_helpers.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "molecule: runs a molecule scenario in podman containers (minutes; needs root)"
    )


@pytest.fixture(scope="session")
def molecule_env() -> dict[str, str]:
    """The environment of a run on podman hosts (molecule, the demo), after building or reusing
    the hosts' image. Skips without root and podman -- unless AICDN_REQUIRE_MOLECULE=1 (set by
    .ci/run and `make test-ansible`), where that is a failure."""
    required = os.environ.get("AICDN_REQUIRE_MOLECULE") == "1"
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        reason = f"podman hosts need root and {', '.join(missing) or 'podman'}"
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
