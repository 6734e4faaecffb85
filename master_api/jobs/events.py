"""From ansible-runner's callbacks to stored events: :class:`EventSink` numbers and batches a
deployment's events, :class:`RunRecorder` is one playbook run's ``event_handler`` and
``status_handler``.

DANGER ZONE: :meth:`RunRecorder.on_event` runs for every line Ansible prints, in the thread
that pumps the playbook's output. It must stay O(1) and never wait on the database per event
(STYLE X2): events go into a buffer that is written with one ``insert_many`` every
``batch_size`` events or ``flush_interval`` seconds, whichever comes first. The time-based flush
also happens from the cancel callback, which runner calls at least every ``pexpect_timeout``, so
a quiet playbook's last events are not held back. The handler returns False: the events are
stored here, so runner need not also write them as files into the private data dir.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from master_api.deployment_models import DeploymentEvent, HostResult
from master_api.errors import StoreUnavailable
from master_api.repos.deployment_events import DeploymentEventsRepo

__all__ = ["EventSink", "RunRecorder"]

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STDOUT_MAX = 4096
_MSG_MAX = 1024
#: Events kept while the store is down; past this, new ones are dropped (and counted).
_BUFFER_MAX = 10_000
_TOUCHING = frozenset(
    {
        "runner_on_ok",
        "runner_on_failed",
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_on_async_ok",
        "runner_on_async_failed",
    }
)
_STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failures",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


class EventSink:
    """Numbers a deployment's events (``counter`` = previous + 1) and stores them in batches.

    Not thread-safe: one playbook run at a time writes into it, from runner's thread.
    """

    def __init__(
        self,
        repo: DeploymentEventsRepo,
        deployment_id: str,
        last_counter: int,
        batch_size: int,
        flush_interval: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._repo = repo
        self._deployment_id = deployment_id
        self._counter = last_counter
        self._batch_size = max(1, batch_size)
        self._flush_interval = flush_interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._buffer: list[DeploymentEvent] = []
        self._last_flush = clock()
        self.dropped = 0

    @property
    def counter(self) -> int:
        """The counter of the last event emitted (0: none yet)."""
        return self._counter

    def emit(
        self,
        event: str,
        playbook: str,
        *,
        host: str | None = None,
        task: str | None = None,
        stdout: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one event; writes the batch when it is full or due. O(1) unless it flushes."""
        self._counter += 1
        if len(self._buffer) >= _BUFFER_MAX:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("deployment %s: event buffer full; dropping", self._deployment_id)
        else:
            self._buffer.append(
                DeploymentEvent(
                    deployment_id=self._deployment_id,
                    counter=self._counter,
                    event=event,
                    playbook=playbook,
                    created=self._wall_clock(),
                    host=host,
                    task=task,
                    stdout=stdout,
                    data=dict(data or {}),
                )
            )
        if len(self._buffer) >= self._batch_size:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        """Write the buffer if ``flush_interval`` passed since the last write."""
        if self._buffer and self._clock() - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> bool:
        """Write every buffered event now. False (events kept for the next try) when the store
        does not answer: an outage must not stop the playbook."""
        self._last_flush = self._clock()
        if not self._buffer:
            return True
        try:
            self._repo.append(self._buffer)
        except StoreUnavailable as exc:
            log.warning(
                "deployment %s: %d event(s) not stored yet: %s",
                self._deployment_id,
                len(self._buffer),
                exc.message,
            )
            return False
        self._buffer = []
        return True


def _clean(text: object, limit: int) -> str:
    value = _ANSI.sub("", str(text or "")).replace("\r", "").strip("\n")
    return value if len(value) <= limit else value[: limit - 3] + "..."


class RunRecorder:
    """One playbook run's ``event_handler`` and ``status_handler``: every runner event becomes
    a :class:`DeploymentEvent` on ``sink``; the recap (``playbook_on_stats``) and the hosts
    tasks ran on are kept for the result. ``host_ids`` maps inventory host names to node ids.
    """

    def __init__(self, sink: EventSink, playbook: str, host_ids: Mapping[str, str]) -> None:
        self._sink = sink
        self._playbook = playbook
        self._host_ids = dict(host_ids)
        self._stats: dict[str, dict[str, int]] = {}
        self._touched: dict[str, None] = {}  # insertion-ordered set
        self.statuses: list[str] = []

    def on_event(self, event_data: Mapping[str, Any]) -> bool:
        """runner's ``event_handler``. Returns False: runner must not store the event too.

        Never raises (an exception here would stop runner pumping the playbook's output): a
        failure is logged with its traceback and the event skipped.
        """
        try:
            self._record(event_data)
        except Exception:  # runner callback boundary (STYLE E6)
            log.exception("could not record a %s event", event_data.get("event"))
        return False

    def _record(self, event_data: Mapping[str, Any]) -> None:
        name = str(event_data.get("event") or "unknown")
        data = event_data.get("event_data")
        details: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        host = details.get("host") or details.get("remote_addr")
        host_name = str(host) if host else None
        if name in _TOUCHING and host_name:
            self._touched[host_name] = None
        if name == "playbook_on_stats":
            self._keep_stats(details)
        self._sink.emit(
            name,
            self._playbook,
            host=host_name,
            task=str(details["task"]) if details.get("task") else None,
            stdout=_clean(event_data.get("stdout"), _STDOUT_MAX),
            data=self._summary(name, details, event_data.get("counter")),
        )

    def on_status(self, status_data: Mapping[str, Any], runner_config: Any = None) -> None:
        """runner's ``status_handler`` (starting, running, successful, failed, canceled,
        timeout): recorded as a ``runner_status`` event, written at once."""
        status = str(status_data.get("status") or "")
        self.statuses.append(status)
        self._sink.emit("runner_status", self._playbook, data={"status": status})
        self._sink.flush()

    def _summary(self, name: str, details: Mapping[str, Any], counter: object) -> dict[str, Any]:
        out: dict[str, Any] = {"runner_counter": counter if isinstance(counter, int) else None}
        for key in ("play", "task_action", "role"):
            if details.get(key):
                out[key] = str(details[key])
        res = details.get("res")
        if isinstance(res, Mapping):
            if "changed" in res:
                out["changed"] = bool(res.get("changed"))
            if res.get("msg"):
                out["msg"] = _clean(res.get("msg"), _MSG_MAX)
        if name == "playbook_on_stats":
            out["hosts"] = [h.to_json() for h in self.host_results()]
        return out

    def _keep_stats(self, details: Mapping[str, Any]) -> None:
        for key, field_name in _STAT_KEYS.items():
            counts = details.get(key)
            if not isinstance(counts, Mapping):
                continue
            for host, count in counts.items():
                entry = self._stats.setdefault(str(host), {})
                entry[field_name] = entry.get(field_name, 0) + int(count or 0)
        processed = details.get("processed")
        if isinstance(processed, Mapping):
            for host in processed:
                self._stats.setdefault(str(host), {})

    def host_results(self) -> tuple[HostResult, ...]:
        """Per-host counters of the recap, by host name (empty before the recap)."""
        return tuple(
            HostResult(node_id=self._host_ids.get(host, ""), host=host, **counts)
            for host, counts in sorted(self._stats.items())
        )

    @property
    def touched(self) -> tuple[str, ...]:
        """Hosts on which at least one task ran (ok or failed), in the order first seen."""
        return tuple(self._touched)
