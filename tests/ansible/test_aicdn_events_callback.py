"""The aicdn_events callback reports a plain ansible-playbook run, and never fails it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aicdn_ansible_helpers import BIN, REPO, StubMaster, ansible_env

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


def test_run_is_registered_and_its_events_posted(tmp_path: Path, stub_master: StubMaster) -> None:
    result = run_playbook(
        tmp_path, AICDN_MASTER_URL=stub_master.url, AICDN_MASTER_TOKEN=stub_master.token
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [deployment] = stub_master.deployments
    assert deployment["playbook"] == "play.yml"
    assert deployment["source"] == "ansible-playbook"
    kinds = [e["event"] for e in stub_master.events]
    assert kinds[0] == "playbook_on_start"
    assert kinds[-1] == "playbook_on_stats"
    assert {e["deployment"] for e in stub_master.events} == {deployment["id"]}
    counters = [e["counter"] for e in stub_master.events]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    oks = {e["task"]: e for e in stub_master.events if e["event"] == "runner_on_ok"}
    assert oks["Change something"]["changed"] is True
    assert oks["Say hello"]["host"] == "localhost"
    assert "msg" not in oks["Keep a secret"]  # no_log results carry no message
    stats = stub_master.events[-1]
    assert stats["status"] == "successful"
    assert stats["stats"]["localhost"]["changed"] == 1


def test_existing_deployment_id_is_reused(tmp_path: Path, stub_master: StubMaster) -> None:
    result = run_playbook(
        tmp_path,
        AICDN_MASTER_URL=stub_master.url,
        AICDN_MASTER_TOKEN=stub_master.token,
        AICDN_DEPLOYMENT_ID="dep-42",
    )
    assert result.returncode == 0, result.stderr
    assert stub_master.deployments == []
    assert {e["deployment"] for e in stub_master.events} == {"dep-42"}


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
