"""What a deployment reports when ansible-playbook never ran to an exit code."""

from __future__ import annotations

from pathlib import Path

from master_api.jobs.job import _runner_output_tail


def test_the_runner_output_is_the_reason(tmp_path: Path) -> None:
    stdout = tmp_path / "artifacts" / "deploy" / "stdout"
    stdout.parent.mkdir(parents=True)
    stdout.write_text("x" * 5000 + "\nERROR! the playbook could not be started\n")

    reason = _runner_output_tail(tmp_path, "deploy")

    assert reason.endswith("ERROR! the playbook could not be started")
    assert len(reason) <= 1500


def test_no_output_is_said_plainly(tmp_path: Path) -> None:
    assert _runner_output_tail(tmp_path, "deploy").startswith("no runner output")
    empty = tmp_path / "artifacts" / "deploy" / "stdout"
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    assert _runner_output_tail(tmp_path, "deploy") == "the runner wrote nothing"
