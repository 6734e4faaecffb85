"""The relay_config module: the relay's checker, atomic install, backup, check and diff modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aicdn_ansible_helpers import load_plugin
from ansible.module_utils.testing import patch_module_args

relay_config = load_plugin("modules", "relay_config")

VALID = """\
api: {addr: "127.0.0.1:18080"}
services:
- name: entry
  addr: ":8080"
  listener: {type: tcp}
  handler: {type: http}
  forwarder: {nodes: [{name: origin, addr: "127.0.0.1:8000"}]}
version: 4
"""
INVALID = VALID.replace("type: tcp", "type: qic")


def run(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run the module in-process and return its JSON result (exit_json and fail_json exit)."""
    with patch_module_args(args), pytest.raises(SystemExit):
        relay_config.main()
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_installs_a_valid_config_then_reports_no_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "relay.yaml"
    first = run({"content": VALID, "dest": str(dest), "mode": "0640"}, capsys)
    assert first["changed"] is True
    assert first["services"] == ["entry"]
    assert first["version"] == 4
    assert dest.read_text() == VALID
    assert dest.stat().st_mode & 0o777 == 0o640
    second = run({"content": VALID, "dest": str(dest), "mode": "0640"}, capsys)
    assert second["changed"] is False
    assert second["checksum"] == first["checksum"]


def test_refuses_an_invalid_config_and_leaves_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "relay.yaml"
    dest.write_text(VALID)
    result = run({"content": INVALID, "dest": str(dest)}, capsys)
    assert result["failed"] is True
    assert "config refused" in result["msg"]
    [issue] = result["issues"]
    assert issue["path"] == "services[0].listener.type"
    assert "qic" in issue["message"]
    assert dest.read_text() == VALID
    assert list(tmp_path.iterdir()) == [dest]  # no temporary file left behind


def test_backup_keeps_the_previous_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "relay.yaml"
    old = VALID.replace("version: 4", "version: 3")
    dest.write_text(old)
    result = run({"content": VALID, "dest": str(dest), "backup": True}, capsys)
    assert result["changed"] is True
    assert Path(result["backup_file"]).read_text() == old


def test_check_mode_and_diff_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "relay.yaml"
    dest.write_text("version: 1\n")
    result = run(
        {"content": VALID, "dest": str(dest), "_ansible_check_mode": True, "_ansible_diff": True},
        capsys,
    )
    assert result["changed"] is True
    assert result["diff"]["before"] == "version: 1\n"
    assert result["diff"]["after"] == VALID
    assert dest.read_text() == "version: 1\n"


def test_check_files_looks_for_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = VALID.replace(
        "listener: {type: tcp}", "listener: {type: tls, tls: {certFile: c.pem, keyFile: c.key}}"
    )
    dest = tmp_path / "relay.yaml"
    refused = run({"content": tls, "dest": str(dest)}, capsys)
    assert refused["failed"] is True
    assert any(
        "c.pem" in issue["message"] or "certFile" in issue["path"] for issue in refused["issues"]
    )
    accepted = run({"content": tls, "dest": str(dest), "check_files": False}, capsys)
    assert accepted["changed"] is True


def test_missing_directory_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run({"content": VALID, "dest": str(tmp_path / "nope" / "relay.yaml")}, capsys)
    assert result["failed"] is True
    assert "does not exist" in result["msg"]
