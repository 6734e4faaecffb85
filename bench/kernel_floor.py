"""What this machine's kernel charges for moving one token across one loopback hop (issue 13).

    python -m bench.kernel_floor

A proxy hop costs, per SSE token, at least one ``send`` and one ``recv`` of ~100 bytes on
loopback TCP and one wake-up of the process that reads them. These are measured here with no
proxy at all, so the CPU-per-token figures of ``bench.run`` can be read against what the
machine allows: on a host whose system calls are dear (a nested virtual machine, say), every
contender's CPU per token rises alike, and a target set on another host may lie below what any
program can do here.

* ``send+recv`` — one process writes 100 bytes on a TCP_NODELAY loopback connection and reads
  them at the other end: the kernel's share of one hop when nobody sleeps (the reader is busy).
  A token crosses two proxy hops as two such pairs (each hop reads it and writes it on), so
  twice this is the least two hops can spend per token in the kernel, before any wake-up,
  ``epoll_wait`` or user-space work.
* ``wake-up`` — the same 100 bytes between two processes that sleep in ``epoll_wait`` between
  messages (round trips, halved): the CPU both spend per message and the wall time. This is the
  worst case, every token reaching an idle relay; under load wake-ups are shared by many tokens.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import time
from collections.abc import Callable

from bench.system import cpu_seconds

_MESSAGE = b"x" * 100
_ROUNDS = 20_000


def _best(run: Callable[[], None], count: int, repeats: int = 5) -> float:
    """Nanoseconds per item: the least disturbed of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e9


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    for sock in (client, accepted):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, accepted


def _echo(sock: socket.socket) -> None:
    """The far end of the round trips: sleep in epoll until a message comes, send it back."""
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    while True:
        poller.poll()
        data = sock.recv(65536)
        if not data:
            return
        sock.send(data)


def measure() -> dict[str, float]:
    """The figures, in nanoseconds."""
    getppid = os.getppid

    def syscalls() -> None:
        for _ in range(200_000):
            getppid()

    syscall_ns = _best(syscalls, 200_000)

    writer, reader = _pair()

    def send_recv() -> None:
        for _ in range(_ROUNDS):
            writer.send(_MESSAGE)
            reader.recv(65536)

    pair_ns = _best(send_recv, _ROUNDS)
    writer.close()
    reader.close()

    near, far = _pair()
    echo = multiprocessing.get_context("fork").Process(target=_echo, args=(far,), daemon=True)
    echo.start()
    far.close()
    poller = select.epoll()
    poller.register(near.fileno(), select.EPOLLIN)
    assert echo.pid is not None
    best_wall = best_cpu = float("inf")
    for _ in range(3):
        cpu_before = time.process_time() + cpu_seconds([echo.pid])
        started = time.perf_counter()
        for _ in range(_ROUNDS):
            near.send(_MESSAGE)
            poller.poll()
            near.recv(65536)
        best_wall = min(best_wall, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() + cpu_seconds([echo.pid]) - cpu_before)
    near.close()
    poller.close()
    echo.terminate()  # it shares ``near`` by the fork, so it would not see the close
    echo.join()
    return {
        "syscall_ns": syscall_ns,
        "send_recv_ns": pair_ns,
        "two_hops_send_recv_ns": 2 * pair_ns,
        "wake_up_cpu_ns": best_cpu / (2 * _ROUNDS) * 1e9,
        "wake_up_wall_ns": best_wall / (2 * _ROUNDS) * 1e9,
    }


def main() -> int:
    figures = measure()
    lines = (
        ("a system call (getppid, from Python)", "syscall_ns"),
        ("send+recv of 100 bytes, loopback TCP", "send_recv_ns"),
        ("  twice: two hops' kernel floor per token", "two_hops_send_recv_ns"),
        ("a message that wakes a sleeper: CPU", "wake_up_cpu_ns"),
        ("  and its wall time", "wake_up_wall_ns"),
    )
    for label, key in lines:
        print(f"{label:<42} {figures[key] / 1e3:7.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
