"""The JSON access log of the ``http`` handler (``accessLog`` in the config; issue 12).

One line per request or stream, written when it ends::

    {"ts": 1764400000.123, "request_id": "...", "service": "edge", "client": "203.0.113.9",
     "key": "3f2a...", "method": "POST", "status": 200, "ttfb_ms": 41.2,
     "duration_ms": 5120.7, "bytes_in": 312, "bytes_out": 18230, "upstream": "core-1",
     "stream": true, "tokens": 142, "block": ""}

``key`` is the hash of the bearer token (``relay.usage.key_of``), never the token; ``block``
names the policy or quota that refused the request ("" when none did); ``ttfb_ms`` is null
when no response byte came from upstream.

Off the hot path: the event loop only serialises the line and appends it to a bounded deque;
a writer thread empties the deque every :data:`FLUSH_INTERVAL` seconds in one write, and
rotates the file by size (``file.1`` is the newest backup). Under a flood at most
``ratePerSecond`` lines per second are kept (a token bucket with one second of burst); the
rest, and anything beyond :data:`MAX_PENDING` lines waiting for the writer, are dropped and
counted (``aicdn_access_log_dropped_total``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque

from relay.config.model import AccessLogConfig

__all__ = ["FLUSH_INTERVAL", "MAX_PENDING", "AccessLog"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2
MAX_PENDING = 50_000


class AccessLog:
    """An open access log; :meth:`write` from the event loop, :meth:`close` at the end."""

    def __init__(self, config: AccessLogConfig, base_dir: str = ".", worker: str = "") -> None:
        """``worker`` (``workers: N``): each worker writes and rotates a file of its own,
        ``access-worker-0.log`` for ``access.log``, as several processes cannot share one
        file's rotation."""
        self.config = config
        self.base_dir = base_dir
        self.worker = worker
        self.path = os.path.join(base_dir, config.file)
        if worker:
            stem, ext = os.path.splitext(self.path)
            self.path = f"{stem}-{worker}{ext}"
        self.dropped = 0
        """Lines dropped by the rate bound or a full queue (read by the metrics collector)."""
        self.written = 0
        self._pending: deque[str] = deque()
        self._rate = float(config.rate_per_second)
        self._tokens = self._rate
        self._refilled = time.monotonic()
        self._stop = threading.Event()
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the writer thread
        self._size = self._file.tell()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, entry: dict[str, object]) -> bool:
        """Queue one line; False when it was dropped (rate bound or full queue)."""
        # DANGER ZONE: once per request. No I/O here; the writer thread does it.
        if self._stop.is_set():  # closed by a reload: a straggler of the old config
            self.dropped += 1
            return False
        now = time.monotonic()
        tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if tokens < 1.0 or len(self._pending) >= MAX_PENDING:
            self._tokens = tokens
            self.dropped += 1
            return False
        self._tokens = tokens - 1.0
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        return True

    def close(self) -> None:
        """Write what is queued and close the file (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10.0)

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.wait(FLUSH_INTERVAL):
                self._flush()
            self._flush()
        except OSError as exc:  # a full disk must not take the relay down; say so once
            log.error("access log %s: writing stopped: %s", self.path, exc)
        finally:
            self._file.close()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        lines: list[str] = []
        # popleft is atomic against the loop thread's append: nothing is lost or doubled.
        while pending:
            lines.append(pending.popleft())
        data = ("\n".join(lines) + "\n").encode()
        if self._size and self._size + len(data) > self.config.max_size:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        self.written += len(lines)

    def _rotate(self) -> None:
        self._file.close()
        backups = self.config.max_backups
        if backups > 0:
            for index in range(backups - 1, 0, -1):
                older = f"{self.path}.{index}"
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
            self._file = open(self.path, "ab")  # noqa: SIM115
        else:
            self._file = open(self.path, "wb")  # noqa: SIM115
        self._size = 0
