"""What the bench reads from the machine: /proc accounting, free ports, readiness, machine facts."""

from __future__ import annotations

import os
import platform
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


#: Ports handed out by ``free_port`` in this process: never handed out twice.
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port that is free now and was not handed out before in this run.

    Chosen below the kernel's ephemeral range when there is room, so the thousands of outgoing
    connections a scenario opens cannot take it between now and the moment a server binds it.
    """
    low, _ = _ephemeral_range()
    start = 10000 if low > 12000 else 1024
    candidates = range(start, low) if low - start > 1000 else range(0)
    for _ in range(200):
        port = random.choice(candidates) if candidates else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
    raise OSError("no free loopback port found")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def descendants(pids: list[int]) -> list[int]:
    """``pids`` plus all their live descendants (nginx/haproxy workers, relay workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in found or not Path(f"/proc/{pid}").exists():
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (each summed over its threads by the kernel), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the command name: state is [0], utime [11], stime [12].
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_kib(pids: list[int]) -> int:
    """Resident set size of ``pids``, added up, in KiB."""
    total = 0
    for pid in pids:
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += pages * PAGE_KIB
    return total


def fd_limit() -> int:
    """The hard RLIMIT_NOFILE, after raising the soft limit to it (children inherit both)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_http_ok(
    port: int,
    path: str = "/healthz",
    timeout: float = 15.0,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until ``GET path`` on ``127.0.0.1:port`` answers 200 (through whatever listens).

    Gives up early, with ``ChildProcessError``, as soon as ``alive()`` turns false.
    """
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(request)
                head = sock.recv(4096)
            if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return
            last = head[:60].decode("latin-1", "replace")
        except OSError as exc:
            last = str(exc)
        if not alive():
            raise ChildProcessError(last)
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port}{path} not ready after {timeout:g}s: {last}")


def wait_listening(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until something accepts TCP connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError as exc:
            if not alive():
                raise ChildProcessError(str(exc)) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"127.0.0.1:{port} not listening after {timeout:g}s") from None
        time.sleep(0.02)


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    """A one-shot ``GET`` returning the body (small admin/metrics answers only)."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).partition(b"\r\n\r\n")[2]


@dataclass(frozen=True)
class Machine:
    nproc: int
    cpu_model: str
    kernel: str
    python: str
    memory_gib: float
    fd_limit: int
    loadavg: str
    tools: dict[str, str]
    #: ``bench.kernel_floor``'s figures (ns) taken as the run starts: what the kernel charges
    #: any proxy per token and hop on this machine, to read the run's CPU figures against.
    kernel_floor: dict[str, float] = field(default_factory=dict)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return 0.0


def tool_version(argv: list[str]) -> str:
    """First version-looking token a tool prints about itself, or "" when it is missing."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"\d+\.\d+(\.\d+)?", done.stdout + done.stderr)
    if match:
        return match.group(0)
    return "?" if done.returncode == 0 else ""


def source_revision(repo: Path, paths: tuple[str, ...] = ("relay",)) -> str:
    """``<commit>`` plus how many files under ``paths`` differ from it (the relay measured
    is the working tree, which may carry uncommitted work)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}" + (
        f" + {len(dirty)} uncommitted file(s) in {', '.join(paths)}" if dirty else ""
    )


def machine_info(tools: dict[str, str], kernel_floor: dict[str, float] | None = None) -> Machine:
    return Machine(
        nproc=os.cpu_count() or 1,
        cpu_model=_cpu_model(),
        kernel=platform.release(),
        python=sys.version.split()[0],
        memory_gib=_memory_gib(),
        fd_limit=fd_limit(),
        loadavg=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        tools=tools,
        kernel_floor=kernel_floor or {},
    )


class HostLoad:
    """How busy the whole machine was over an interval, and how much of that was not ours.

    "Ours" is this process, its waited-for children (load generators, wrk) and the processes
    passed in (proxies, origin). The rest ("foreign") is other work sharing the machine: when
    it is high, the figures of that measurement are noisy.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.busy0, self.total0 = host_cpu()
        self.own0 = own_cpu()
        self.tracked0 = cpu_seconds(pids)

    def finish(self) -> tuple[float, float]:
        """(busy cores, foreign cores) averaged over the interval."""
        busy, total = host_cpu()
        wall = max(1e-9, (total - self.total0) / (os.cpu_count() or 1))
        ours = own_cpu() - self.own0 + cpu_seconds(self.pids) - self.tracked0
        busy_cores = (busy - self.busy0) / wall
        return busy_cores, max(0.0, busy_cores - ours / wall)
