"""Processes of the agent-plane tests, started as operators start them: ``aicdn-master serve``,
``aicdn-relay run -C relay.yaml`` and ``aicdn-relay agent --config agent.yaml``, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from master_api.store import port_open
from tests.master.conftest import TEST_DB
from tests.master.helpers import wait_until
from tests.processes import RELAY, free_port, wait_http


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MasterProcess:
    """``aicdn-master serve`` on the test database, REST and gRPC on fixed loopback ports (so
    a restarted master comes back where its agents look for it)."""

    def __init__(self, mongo_uri: str, workdir: Path, **env: str) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "master.log"
        self.env = {
            **os.environ,
            "AICDN_MONGO_URI": mongo_uri,
            "AICDN_MONGO_DB": TEST_DB,
            "AICDN_JWT_SECRET": "t" * 48,
            "AICDN_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "AICDN_GRPC_ADDR": f"127.0.0.1:{self.grpc_port}",
            "AICDN_DATA_DIR": str(workdir / "var"),
            "AICDN_PASSWORD_TIME_COST": "1",
            "AICDN_PASSWORD_MEMORY_KIB": "8",
            "AICDN_PASSWORD_PARALLELISM": "1",
            "AICDN_LEADER_TTL": "2",
            "AICDN_LEADER_RENEW_INTERVAL": "0.5",
            "AICDN_HEARTBEAT_INTERVAL": "1",
            "AICDN_AGENT_SNAPSHOT_TTL": "0.1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "master_api", "serve"],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/api/v1/healthz", timeout=30)
        wait_until(lambda: port_open("127.0.0.1", self.grpc_port), 10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class RelayUnderAgent:
    """A relay process run from ``relay.yaml`` in its own directory, its log in a file (what
    the agent's ``logs`` command tails when there is no systemd)."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "relay.yaml"
        self.log_path = directory / "relay.log"
        self.api = free_port()
        self.metrics = free_port()
        self.config = self.with_endpoints(config)
        self.path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*RELAY, "run", "-C", str(self.path)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_http(f"http://127.0.0.1:{self.api}/healthz")

    def with_endpoints(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with this relay's admin API and metrics addresses."""
        return {
            **config,
            "api": {"addr": f"127.0.0.1:{self.api}"},
            "metrics": {"addr": f"127.0.0.1:{self.metrics}", "path": "/metrics"},
        }

    def health(self) -> dict[str, Any]:
        import json

        data: dict[str, Any] = json.loads(wait_http(f"http://127.0.0.1:{self.api}/healthz"))
        return data

    def stop(self) -> str:
        _stop(self.proc)
        return self.log_path.read_text(errors="replace")


class AgentProcess:
    """``aicdn-relay agent --config agent.yaml`` beside ``relay``."""

    def __init__(
        self,
        directory: Path,
        masters: list[str],
        node_id: str,
        token: str,
        relay: RelayUnderAgent,
        **options: Any,
    ) -> None:
        self.path = directory / "agent.yaml"
        self.log_path = directory / "agent.log"
        settings: dict[str, Any] = {
            "masters": masters,
            "node_id": node_id,
            "token": token,
            "relay_config": str(relay.path),
            "relay_api": f"127.0.0.1:{relay.api}",
            "heartbeat_interval": "0.5s",
            "service_manager": "none",
            "relay_log_file": str(relay.log_path),
            "reconnect_initial": "0.1s",
            "reconnect_max": "1s",
            "rpc_timeout": "5s",
            **options,
        }
        self.path.write_text(yaml.safe_dump(settings))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*RELAY, "agent", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> str:
        _stop(self.proc)
        return self.log_path.read_text(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
