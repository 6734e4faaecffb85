"""Stopping what a canceled or timed-out playbook leaves behind.

runner stops a run by SIGKILL to the process group of ``ansible-playbook``. Since ansible-core
2.15 every worker process calls ``setsid()`` (it detaches from the terminal), so its process
group -- the worker and the module processes it started, a ``pause`` or a ``command: sleep``
-- is not in that group: killed that way, the main process dies and its workers live on as
orphans, some of them blocked for ever on a result queue nobody reads. (Ansible forwards
SIGTERM to its workers itself, but SIGKILL cannot be caught.)

So after each run the job sweeps: every process whose command line names the run's private
data dir (unique, so only this run's processes match; workers are forks of the main process
and keep its arguments) gets SIGTERM on its process group -- a worker then stops its own group
-- and SIGKILL after a grace period if still there. Linux only (``/proc``); elsewhere a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

__all__ = ["find_processes", "stop_leftovers"]

log = logging.getLogger(__name__)

_PROC = Path("/proc")


def find_processes(marker: str) -> list[int]:
    """Pids of the processes (other than this one) whose command line contains ``marker``."""
    if not _PROC.is_dir():
        return []
    needle = marker.encode()
    found: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def _signal_groups(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        try:
            group = os.getpgid(pid)
            if group == os.getpgrp():
                os.kill(pid, signum)  # never our own group
            else:
                os.killpg(group, signum)
        except ProcessLookupError:
            continue
        except PermissionError as exc:
            log.warning("cannot signal leftover process %d: %s", pid, exc)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (orphans' zombies may never be reaped
    in a container whose init does not wait for them)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def stop_leftovers(marker: str, grace: float = 2.0) -> int:
    """Stop the process groups of every process naming ``marker`` (SIGTERM, then SIGKILL after
    ``grace`` seconds); returns how many processes were found. Never raises."""
    pids = [pid for pid in find_processes(marker) if _alive(pid)]
    if not pids:
        return 0
    found = len(pids)
    log.warning("stopping %d leftover Ansible process(es) of %s: %s", found, marker, pids)
    _signal_groups(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if _alive(pid)]
    if pids:
        _signal_groups(pids, signal.SIGKILL)
    return found
