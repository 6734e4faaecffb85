"""The demo's own processes on this machine: the master (with its embedded store) and the
LLM-like origin. Each writes its log under the demo's directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoProcesses", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.2)


@dataclass
class DemoProcesses:
    """Starts and stops the master and the origin; ``workdir`` holds their data and logs."""

    workdir: Path
    master_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def master_env(self, connection: str = "local") -> dict[str, str]:
        """The master's settings (``AICDN_*``): its ports, data dir, and the Ansible connection
        its demo hosts need."""
        if not self.env:
            http_port, grpc_port, mongo_port = free_port(), free_port(), free_port()
            self.env = {
                "AICDN_HTTP_ADDR": f"127.0.0.1:{http_port}",
                "AICDN_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
                "AICDN_EMBEDDED_MONGO_PORT": str(mongo_port),
                "AICDN_DATA_DIR": str(self.workdir / "master"),
                "AICDN_DEPLOY_CONNECTIONS": connection,
                "AICDN_DEPLOY_POLL_INTERVAL": "0.2s",
                "AICDN_LOG_LEVEL": "info",
            }
            self.master_url = f"http://127.0.0.1:{http_port}"
        return self.env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # Ctrl-C in the terminal reaches the demo only
            )
        self._procs.append(proc)
        with open(self.workdir / "pids", "a") as pids:
            pids.write(f"{proc.pid}\n")
        return proc

    def start_origin(self, listen: str) -> None:
        proc = self._spawn(
            "origin", [sys.executable, "-m", "relay", "dev-origin", "--listen", listen], {}
        )
        _wait_http(f"http://{listen}/v1/models", 15, proc, self.logs / "origin.log")

    def start_master(self, username: str, password: str, connection: str) -> None:
        """Create the operator (this starts the embedded store for the call), then serve;
        ``connection`` is the Ansible connection of the demo's hosts."""
        env = {**os.environ, **self.master_env(connection)}
        created = subprocess.run(
            [sys.executable, "-m", "master_api", "user", "create", username,
             "--role", "operator", "--password-stdin"],
            input=password.encode(), env=env, capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"creating the operator failed: {created.stderr.decode().strip()}")
        proc = self._spawn("master", [sys.executable, "-m", "master_api", "serve"], self.env)
        _wait_http(f"{self.master_url}/api/v1/readyz", 60, proc, self.logs / "master.log")

    def stop_recorded(self) -> None:
        """SIGTERM the processes a kept demo left running (their PIDs are in ``pids``)."""
        path = self.workdir / "pids"
        if not path.exists():
            return
        for line in path.read_text().split():
            try:
                os.kill(int(line), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        path.unlink()

    def stop(self) -> None:
        """SIGTERM every process (the master shuts down cleanly), then wait."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
