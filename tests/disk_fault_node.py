"""A relay and the agent's config applier on a directory whose disk fills up or turns
read-only: run by tests/test_agent_disk_faults.py, inside a mount namespace of its own where
the directory is a tiny tmpfs (``python -m tests.disk_fault_node DIR full|readonly|chmod``).

Prints one JSON line: the refused apply (outcome, message, what the relay runs, whether the
file changed), then the same apply once the disk is writable again.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from relay.agent.apply import ConfigApplier, PushedConfig
from relay.agent.relay_api import RelayApi, RelayEndpoints
from relay.config.model import Address
from tests.processes import RelayProcess, edge_and_core_config, free_port


def _pushed(config: dict[str, Any], version: int) -> PushedConfig:
    text = yaml.safe_dump({**config, "version": version})
    return PushedConfig(version, hashlib.sha256(text.encode()).hexdigest(), text)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


async def main(directory: Path, mode: str) -> dict[str, Any]:
    config = edge_and_core_config(free_port())
    config["version"] = 1
    relay = RelayProcess(config, directory)
    try:
        api = RelayApi(RelayEndpoints(Address("127.0.0.1", relay.api), None, None), timeout=5)
        applier = ConfigApplier(str(relay.path), lambda: api, health_timeout=3)
        before = relay.path.read_bytes()
        config = yaml.safe_load(before)  # with the api and metrics sections RelayProcess adds
        filler = None
        if mode == "full":
            filler = _fill(directory)
        elif mode == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        else:
            directory.chmod(0o555)
        refused = await applier.apply(_pushed(config, 2))
        report: dict[str, Any] = {
            "outcome": refused.outcome,
            "message": refused.message,
            "applied_version": refused.applied_version,
            "running": await api.running_version(),
            "unchanged": relay.path.read_bytes() == before,
            "leftovers": sorted(p.name for p in directory.iterdir() if p.name.startswith(".")),
        }
        if filler is not None:
            filler.unlink()
        elif mode == "readonly":
            subprocess.run(["mount", "-o", "remount,rw", str(directory)], check=True)
        else:
            directory.chmod(0o755)
        again = await applier.apply(_pushed(config, 2))
        report["after"] = {"outcome": again.outcome, "running": await api.running_version()}
        if again.outcome != "applied":
            report["after"]["message"] = again.message
        return report
    finally:
        report_err = relay.stop()
        if "Traceback" in report_err:
            print(report_err, file=sys.stderr)


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
    print(json.dumps(result))
    sys.exit(0)
