"""Static checks of the Ansible content: syntax of every playbook, ansible-lint at the
production profile (offline), and the collection artifact builds."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest
from aicdn_ansible_helpers import BIN, REPO, ansible_env

PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str) -> None:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", f"playbooks/{playbook}"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile() -> None:
    env = ansible_env()
    env.pop("ANSIBLE_CONFIG")  # ansible-lint reads ansible.cfg from the project itself
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def test_collection_builds(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "collections/build.sh", str(tmp_path)],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [artifact] = tmp_path.glob("aicdn-tunnel-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    for expected in (
        "plugins/modules/relay_config.py",
        "plugins/filter/gost_config.py",
        "plugins/inventory/aicdn_master.py",
        "plugins/callback/aicdn_events.py",
        "roles/relay/tasks/main.yml",
        "roles/relay/meta/argument_specs.yml",
        "roles/monitoring/files/aicdn-fleet.json",
    ):
        assert expected in names, expected
    assert not any("__pycache__" in name for name in names)


@pytest.mark.slow
def test_ansible_test_sanity() -> None:
    """ansible-test sanity on the collection (all but changelog; see collections/sanity.sh)."""
    result = subprocess.run(
        ["bash", "collections/sanity.sh"],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
