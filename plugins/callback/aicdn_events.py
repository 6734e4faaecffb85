# Copyright (c) AI CDN Tunnel authors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
name: aicdn_events
type: notification
short_description: Report a plain ansible-playbook run to the AI CDN Tunnel master
version_added: "0.1.0"
author: AI CDN Tunnel authors (@aicdn)
description:
  - Sends the events of a playbook run (plays, tasks, per-host results and the final stats) to
    the master, so a deploy started by hand shows up beside those the master runs itself.
  - On start it registers the run as an external deployment
    (C(POST /api/v1/deployments/external)) unless O(deployment_id) names one; events are posted
    in batches to C(POST /api/v1/deployments/{id}/events), and the final stats end it.
  - Never fails the play. When the master cannot be reached it warns once and stops reporting
    for the rest of the run.
  - Results are reduced to what an operator needs (status, changed, msg, rc); a task with
    C(no_log) reports no message at all.
  - Does nothing unless O(url) is set.
requirements:
  - enable in ansible.cfg (C(callbacks_enabled = aicdn.tunnel.aicdn_events))
options:
  url:
    description: Base URL of the master (without C(/api/v1)); empty disables the plugin.
    type: str
    env:
      - name: AICDN_MASTER_URL
    ini:
      - section: callback_aicdn_events
        key: url
  token:
    description: A JWT access token of an operator.
    type: str
    env:
      - name: AICDN_MASTER_TOKEN
    ini:
      - section: callback_aicdn_events
        key: token
  deployment_id:
    description: Report into this existing deployment instead of registering a new one.
    type: str
    env:
      - name: AICDN_DEPLOYMENT_ID
  timeout:
    description: Seconds to wait for the master on each request.
    type: int
    default: 5
    env:
      - name: AICDN_EVENTS_TIMEOUT
  batch_size:
    description: Events sent per request (the rest wait for the next task or the end).
    type: int
    default: 50
  validate_certs:
    description: Verify the master's TLS certificate.
    type: bool
    default: true
    env:
      - name: AICDN_MASTER_VALIDATE_CERTS
"""

import json
import os
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.urls import open_url
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Posts playbook events to the master; warns, never fails, when it is unreachable."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "aicdn.tunnel.aicdn_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._url = ""
        self._deployment: str | None = None
        self._buffer: list[dict[str, Any]] = []
        self._counter = 0
        self._play = ""
        self._broken = False

    def set_options(
        self, task_keys: Any = None, var_options: Any = None, direct: Any = None
    ) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._url = (self.get_option("url") or "").rstrip("/")
        if not self._url:
            self.disabled = True

    # -- transport ------------------------------------------------------------------------------

    def _post(self, path: str, body: Any) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self.get_option("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = open_url(
            self._url + path,
            method="POST",
            data=json.dumps(body),
            headers=headers,
            timeout=self.get_option("timeout"),
            validate_certs=self.get_option("validate_certs"),
        )
        raw = response.read()
        return json.loads(raw) if raw else None

    def _give_up(self, what: str, exc: Exception) -> None:
        if not self._broken:
            self._display.warning(
                f"aicdn_events: cannot {what} at {self._url}: {to_native(exc)}; "
                "the run goes on without reporting to the master"
            )
        self._broken = True
        self._buffer.clear()

    def _flush(self) -> None:
        if self._broken or not self._buffer or self._deployment is None:
            return
        batch, self._buffer = self._buffer, []
        try:
            self._post(f"/api/v1/deployments/{self._deployment}/events", {"events": batch})
        except Exception as exc:
            self._give_up("post events", exc)

    def _emit(self, event: str, host: str | None = None, task: str | None = None,
              **data: Any) -> None:
        if self._broken:
            return
        self._counter += 1
        entry: dict[str, Any] = {
            "event": event,
            "counter": self._counter,
            "data": {"created": datetime.now(UTC).isoformat(), "play": self._play, **data},
        }
        if host is not None:
            entry["host"] = host
        if task is not None:
            entry["task"] = task
        self._buffer.append(entry)
        if len(self._buffer) >= self.get_option("batch_size"):
            self._flush()

    # -- playbook events ------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        name = os.path.basename(to_native(playbook._file_name))
        self._deployment = self.get_option("deployment_id") or None
        if self._deployment is None:
            try:
                answer = self._post(
                    "/api/v1/deployments/external",
                    {"playbook": name, "source": "ansible-playbook"},
                )
            except Exception as exc:
                self._give_up("register the run", exc)
                return
            if not isinstance(answer, dict) or not answer.get("id"):
                self._give_up("register the run", ValueError("the answer carries no id"))
                return
            self._deployment = str(answer["id"])
        self._emit("playbook_on_start", playbook=name)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._play = to_native(play.get_name())
        self._emit("playbook_on_play_start")

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._flush()
        self._emit("playbook_on_task_start", task=to_native(task.get_name()))

    def _result(self, event: str, status: str, result: Any) -> None:
        res = result._result
        data: dict[str, Any] = {
            "host": to_native(result._host.get_name()),
            "task": to_native(result._task.get_name()),
            "status": status,
            "changed": bool(res.get("changed", False)),
        }
        if not result._task.no_log:
            if res.get("msg"):
                data["msg"] = to_native(res["msg"])[:2000]
            if "rc" in res:
                data["rc"] = res["rc"]
        self._emit(event, **data)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result("runner_on_ok", "ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("runner_on_failed", "ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result("runner_on_skipped", "skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("runner_on_unreachable", "unreachable", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        summary = [{"host": host, **stats.summarize(host)} for host in sorted(stats.processed)]
        failed = any(s["failures"] or s["unreachable"] for s in summary)
        self._emit("playbook_on_stats", stats=summary, status="failed" if failed else "successful")
        self._flush()
