"""The aicdn_events callback never fails the run it reports. What it reports, and that the
master takes it, is tested against the real master: tests/master/test_external_runs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aicdn_ansible_helpers import BIN, REPO, ansible_env

PLAYBOOK = """\
- name: A small run
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
    - name: Keep a secret
      ansible.builtin.debug:
        msg: the secret
      no_log: true
"""


def run_playbook(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter={{ ansible_playbook_python }}",
            str(playbook),
        ],
        cwd=REPO,
        env=ansible_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_master_down_warns_and_the_play_succeeds(tmp_path: Path) -> None:
    result = run_playbook(tmp_path, AICDN_MASTER_URL="http://127.0.0.1:9", AICDN_EVENTS_TIMEOUT="2")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "aicdn_events: cannot register the run at http://127.0.0.1:9" in output
    assert output.count("aicdn_events: cannot") == 1  # warned once


def test_without_a_url_it_stays_silent(tmp_path: Path) -> None:
    result = run_playbook(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "aicdn_events" not in result.stdout + result.stderr
