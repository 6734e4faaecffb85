"""Alert notifications to an optional webhook, sent from a background thread.

Sending never blocks the caller (the leader's monitor): events go through a bounded queue;
when it is full an event is dropped and logged. A failed POST is logged with its cause and not
retried (the alert stays visible in ``GET /alerts``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

from master_api.models import Alert

__all__ = ["WebhookNotifier"]

log = logging.getLogger(__name__)

_QUEUE_SIZE = 1000


class WebhookNotifier:
    """POSTs ``{"event": "fired"|"resolved", "alert": {...}}`` to ``url``."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def notify(self, event: str, alert: Alert) -> None:
        """Queue one notification (never blocks)."""
        try:
            self._queue.put_nowait({"event": event, "alert": alert.to_json()})
        except queue.Full:
            log.warning("alert webhook queue full; dropped %s %s", event, alert.name)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("alert webhook queue still full at shutdown; pending events dropped")
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            self._send(payload)

    def _send(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("alert webhook %s failed: %s", self.url, exc)
