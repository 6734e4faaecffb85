"""A deployment's events as a Server-Sent Events stream, read from ``deployment_events``.

The stream replays the events after a cursor (``?since=N`` or, on a reconnect, the
``Last-Event-ID`` header), then polls for new ones until the deployment has ended -- events are
stored before the final status, so one last read after seeing it loses nothing -- and closes
with an ``end`` event carrying that status. Each event's SSE ``id`` is its ``counter``, so a
client that reconnects resumes exactly where it stopped; the ``end`` event has no id.

Each open stream holds one HTTP worker thread, so a stream also ends after ``max_duration``
seconds (``Settings.deploy_stream_max``; the client reconnects with ``Last-Event-ID``), and a
comment line every ``keepalive`` seconds keeps idle proxies from closing it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from master_api.deployment_models import DeploymentEvent
from master_api.errors import NotFound, StoreUnavailable
from master_api.services.deployments import DeploymentService

__all__ = ["event_stream", "sse"]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
KEEPALIVE = 15.0
_PAGE = 500


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    """One SSE message (the JSON of ``data`` fits on one ``data:`` line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _message(event: DeploymentEvent) -> str:
    return sse(event.event, event.to_json(), event.counter)


def event_stream(
    service: DeploymentService,
    deployment_id: str,
    after: int,
    follow: bool,
    max_duration: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Yield the SSE messages of ``deployment_id`` after counter ``after``.

    With ``follow`` false it stops after the events stored so far (with an ``end`` event
    giving the current status). A store outage pauses the stream (it retries); a deployment
    deleted meanwhile ends it.
    """
    cursor = after
    started = last_sent = clock()
    yield "retry: 2000\n\n"
    while True:
        try:
            events = service.events(deployment_id, cursor, _PAGE)
            for event in events:
                cursor = event.counter
                yield _message(event)
            if len(events) == _PAGE:
                continue  # more waiting: drain before looking at the status
            if events:
                last_sent = clock()
            status = service.get(deployment_id).status
            if status not in ("queued", "running") or not follow:
                for event in service.events(deployment_id, cursor, _PAGE):
                    cursor = event.counter
                    yield _message(event)
                yield sse("end", {"status": status, "last_counter": cursor})
                return
        except NotFound:
            yield sse("end", {"status": "deleted", "last_counter": cursor})
            return
        except StoreUnavailable as exc:
            log.warning("event stream of %s paused: %s", deployment_id, exc.message)
        now = clock()
        if now - started >= max_duration:
            return  # the client reconnects with Last-Event-ID
        if now - last_sent >= KEEPALIVE:
            last_sent = now
            yield ": keepalive\n\n"
        sleep(POLL_INTERVAL)
