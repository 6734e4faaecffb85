"""Commands the master sends down the ExecuteCommand stream, run against the local relay.

=========  =====================================================================================
reload     ``POST /reload`` on the relay's admin API (``systemctl reload`` when the API is down
           and systemd runs the relay)
restart    ``systemctl restart <relay_service>``; unsupported without systemd
stop       ``systemctl stop <relay_service>``; unsupported without systemd
status     JSON: the relay's ``/healthz``, what the agent knows, and ``systemctl show`` fields
           under systemd
logs       the last ``lines`` (default 100, at most 5000) lines: ``journalctl -u`` under
           systemd, else the tail of ``relay_log_file``; with ``source: access``, the tail of
           the relay's JSON access log (``accessLog.file`` of its config)
=========  =====================================================================================

Every command returns a :class:`CommandOutcome`; failures are outcomes (``ok`` false and an
``error``), never exceptions, so one bad command cannot break the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from relay.agent.config import AgentConfig
from relay.agent.relay_api import RelayApi, RelayApiError
from relay.config import ConfigError, load_config_file

__all__ = ["COMMANDS", "CommandOutcome", "CommandRunner", "systemd_present"]

COMMANDS: Final = ("reload", "restart", "stop", "status", "logs")
#: Output is cut to this many bytes (a gRPC message must stay well under its limit).
MAX_OUTPUT = 1024 * 1024
_SUBPROCESS_TIMEOUT = 60.0
_DEFAULT_LINES = 100
_MAX_LINES = 5000


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    ok: bool
    output: str = ""
    error: str = ""


def systemd_present() -> bool:
    """True when this host runs systemd (``sd_booted()``'s test) and ``systemctl`` exists."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def _cut(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_OUTPUT:
        return text
    return "[... cut ...]\n" + data[-MAX_OUTPUT:].decode("utf-8", "replace")


async def _run(*argv: str) -> CommandOutcome:
    """Run a program; ok when it exits 0. Output is stdout and stderr merged."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return CommandOutcome(False, error=f"cannot run {argv[0]}: {exc}")
    try:
        out, _ = await asyncio.wait_for(process.communicate(), _SUBPROCESS_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return CommandOutcome(False, error=f"{' '.join(argv)} did not finish in time")
    text = _cut(out.decode("utf-8", "replace"))
    if process.returncode != 0:
        return CommandOutcome(False, text, f"{' '.join(argv)} exited {process.returncode}")
    return CommandOutcome(True, text)


def tail_lines(path: str, lines: int, max_bytes: int = MAX_OUTPUT) -> str:
    """The last ``lines`` lines of the file at ``path`` (reading at most ``max_bytes`` from its
    end). Raises ``OSError`` when it cannot be read."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(max(0, size - max_bytes))
        data = stream.read()
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:]) + ("\n" if text else "")


def _merged_tails(paths: list[str], lines: int) -> str:
    """The last ``lines`` JSON lines of the files at ``paths`` (missing ones skipped), in the
    order of their ``ts``."""
    entries: list[tuple[float, str]] = []
    for path in paths:
        try:
            text = tail_lines(path, lines, MAX_OUTPUT // max(1, len(paths)))
        except OSError:
            continue
        for line in text.splitlines():
            try:
                ts = json.loads(line).get("ts", 0.0)
            except (ValueError, AttributeError):
                ts = 0.0
            entries.append((ts if isinstance(ts, int | float) else 0.0, line))
    entries.sort(key=lambda entry: entry[0])
    kept = [line for _, line in entries[-lines:]]
    return "\n".join(kept) + ("\n" if kept else "")


class CommandRunner:
    """Runs commands; ``agent_status`` supplies the agent's own part of ``status``."""

    def __init__(
        self,
        config: AgentConfig,
        api: Callable[[], RelayApi],
        agent_status: Callable[[], Mapping[str, object]],
        lock: asyncio.Lock,
    ) -> None:
        self._config = config
        self._api = api
        self._agent_status = agent_status
        self._lock = lock

    @property
    def systemd(self) -> bool:
        """Whether the relay's service manager is systemd (per ``service_manager``)."""
        if self._config.service_manager == "auto":
            return systemd_present()
        return self._config.service_manager == "systemd"

    async def run(self, command: str, args: Mapping[str, str]) -> CommandOutcome:
        """Run ``command`` (one of :data:`COMMANDS`) with ``args``."""
        if command == "status":
            return await self._status()
        if command == "logs":
            return await self._logs(args)
        if command not in COMMANDS:
            return CommandOutcome(False, error=f"unknown command {command!r}")
        async with self._lock:  # never while a config is being applied
            if command == "reload":
                return await self._reload()
            if not self.systemd:
                return CommandOutcome(
                    False, error=f"{command} needs systemd, which does not manage the relay here"
                )
            return await _run("systemctl", command, self._config.relay_service)

    async def _reload(self) -> CommandOutcome:
        try:
            answer = await self._api().reload()
        except RelayApiError as exc:
            if self.systemd:
                return await _run("systemctl", "reload", self._config.relay_service)
            return CommandOutcome(False, error=f"the relay's admin API is unreachable: {exc}")
        body = answer.body.decode("utf-8", "replace")
        if answer.status == 200:
            return CommandOutcome(True, body)
        return CommandOutcome(False, body, f"reload answered {answer.status}")

    async def _status(self) -> CommandOutcome:
        status: dict[str, object] = {"agent": dict(self._agent_status())}
        ok = True
        try:
            status["relay"] = await self._api().health()
        except RelayApiError as exc:
            status["relay"] = {"error": str(exc)}
            ok = False
        if self.systemd:
            shown = await _run(
                "systemctl", "show", self._config.relay_service,
                "--property=ActiveState,SubState,MainPID,ActiveEnterTimestamp",
            )  # fmt: skip
            status["service"] = shown.output if shown.ok else {"error": shown.error}
        text = json.dumps(status, indent=2, sort_keys=True, default=str)
        return CommandOutcome(ok, text, "" if ok else "the relay does not answer")

    async def _logs(self, args: Mapping[str, str]) -> CommandOutcome:
        raw = args.get("lines", str(_DEFAULT_LINES))
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LINES:
            return CommandOutcome(False, error=f"lines: expected 1-{_MAX_LINES}, got {raw!r}")
        lines = int(raw)
        source = args.get("source", "relay")
        if source == "access":
            return await self._access_log(lines)
        if source != "relay":
            return CommandOutcome(False, error=f"source: expected relay or access, got {source!r}")
        if self.systemd:
            return await _run(
                "journalctl", "-u", self._config.relay_service, "-n", str(lines),
                "--no-pager", "-o", "short-iso",
            )  # fmt: skip
        path = self._config.relay_log_file
        if path is None:
            return CommandOutcome(
                False, error="no log source: the relay is not under systemd and agent.yaml sets "
                "no relay_log_file",
            )  # fmt: skip
        try:
            return CommandOutcome(True, await asyncio.to_thread(tail_lines, path, lines))
        except OSError as exc:
            return CommandOutcome(False, error=f"cannot read {path}: {exc}")

    async def _access_log(self, lines: int) -> CommandOutcome:
        try:
            relay = load_config_file(self._config.relay_config)
        except ConfigError as exc:
            return CommandOutcome(False, error=f"cannot read the relay config: {exc}")
        if relay.access_log is None:
            return CommandOutcome(False, error="the relay config sets no accessLog")
        path = os.path.join(relay.base_dir, relay.access_log.file)
        if relay.workers <= 1:
            try:
                return CommandOutcome(True, await asyncio.to_thread(tail_lines, path, lines))
            except OSError as exc:
                return CommandOutcome(False, error=f"cannot read {path}: {exc}")
        # workers: N write access-worker-<i>.log each (relay.access_log): their tails, merged
        # by time.
        stem, ext = os.path.splitext(path)
        paths = [f"{stem}-worker-{i}{ext}" for i in range(relay.workers)]
        return CommandOutcome(True, await asyncio.to_thread(_merged_tails, paths, lines))
