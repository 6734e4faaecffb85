"""Child processes the bench starts, and the guarantee that none outlives it.

Every process starts in a session (and so a process group) of its own. Stopping one sends
SIGTERM to its group, waits, then SIGKILLs the group: nginx and haproxy workers, relay workers
and anything else they spawned go with it. ``stop_all`` (registered with ``atexit`` and called
from the CLI's signal handlers) does that for whatever is still running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

#: Children run from the repository root, so ``python -m bench.…`` and ``-m relay`` resolve.
REPO = Path(__file__).resolve().parent.parent
_running: list[Proc] = []


class Proc:
    """One child process (and its process group), its stderr captured to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=self._log,
            env=env,
            cwd=cwd or REPO,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _running.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL it; returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive their master by a moment: the group goes in any case.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()
        if self in _running:
            _running.remove(self)
        return self.popen.returncode


def stop_all() -> None:
    """Stop every process this bench started and has not stopped yet (newest first)."""
    for proc in reversed(list(_running)):
        proc.stop(timeout=2.0)


def wait_exit(procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.0, deadline - time.monotonic()))


atexit.register(stop_all)
