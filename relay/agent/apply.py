"""Hot push on the node: apply a config version the master sent, or refuse it and say why.

The pipeline (DESIGN §5), each step's failure ending it with an :class:`ApplyResult`:

1. the SHA-256 of the YAML must equal the checksum the master sent -> else ``rejected``;
2. the relay's own checker must accept it *here* (certificate files must exist on this host,
   relative paths resolve against the relay config's directory), and its ``version`` must be
   the pushed version -> else ``rejected``, with the checker's issues. The relay is untouched;
3. the file is replaced atomically (written aside, fsynced, renamed), the previous content
   kept as ``<file>.previous``;
4. the relay reloads (``POST /reload``) and must then report the new version on ``/healthz``
   within ``health_timeout`` -> else the previous file is restored, the relay reloaded again,
   and the result is ``rolled_back`` with what went wrong.

``applied`` means the relay runs the version and is healthy. One apply runs at a time
(callers hold :attr:`ConfigApplier.lock`, which commands that reload the relay share).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.agent.relay_api import RelayApi, RelayApiError
from relay.config import ConfigError, ConfigIssue, load_config_text

__all__ = ["ApplyResult", "ConfigApplier", "Outcome", "PushedConfig", "atomic_write"]

log = logging.getLogger(__name__)

Outcome = Literal["applied", "rejected", "rolled_back"]
_HEALTH_POLL = 0.1


@dataclass(frozen=True, slots=True)
class PushedConfig:
    """What ``PushConfig`` answered."""

    version: int
    checksum: str
    yaml: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one apply, as ``ReportStatus`` carries it."""

    version: int
    outcome: Outcome
    message: str
    issues: tuple[ConfigIssue, ...] = ()
    applied_version: int | None = None
    """The version the relay runs afterwards (None: unknown or not a master version)."""


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix:
    written to a temporary file in the same directory, fsynced, renamed, directory fsynced."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ConfigApplier:
    """Applies pushed versions to the relay config at ``path`` through ``api``."""

    def __init__(
        self,
        path: str,
        api: Callable[[], RelayApi],
        health_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.previous_path = f"{path}.previous"
        self._api = api
        self._health_timeout = health_timeout
        self.lock = asyncio.Lock()
        """Held while the relay's config or process is being changed."""

    async def apply(self, pushed: PushedConfig) -> ApplyResult:
        """Run the pipeline of the module docstring; never raises for a bad config or a relay
        that misbehaves (those are results). Must be called with :attr:`lock` held."""
        digest = hashlib.sha256(pushed.yaml.encode("utf-8")).hexdigest()
        if digest != pushed.checksum.lower():
            return ApplyResult(
                pushed.version,
                "rejected",
                f"checksum mismatch: got sha256 {digest}, the master announced {pushed.checksum}",
                applied_version=await self._api().running_version(),
            )
        issues = await asyncio.to_thread(self._check, pushed)
        if issues:
            return ApplyResult(
                pushed.version,
                "rejected",
                f"refused by the relay checker on this node ({len(issues)} issue(s))",
                issues,
                applied_version=await self._api().running_version(),
            )
        try:
            previous = await asyncio.to_thread(self._install, pushed.yaml.encode("utf-8"))
        except OSError as exc:
            return ApplyResult(
                pushed.version,
                "rejected",
                f"cannot write {self.path}: {exc}",
                applied_version=await self._api().running_version(),
            )
        problem = await self._reload_and_check(pushed.version)
        if problem is None:
            log.info("config version %d applied", pushed.version)
            return ApplyResult(pushed.version, "applied", "applied", (), pushed.version)
        log.error("config version %d failed on the relay (%s); restoring", pushed.version, problem)
        restore = await self._restore(previous)
        return ApplyResult(
            pushed.version,
            "rolled_back",
            f"{problem}; {restore}",
            applied_version=await self._api().running_version(),
        )

    # --- steps --------------------------------------------------------------------------------

    def _check(self, pushed: PushedConfig) -> tuple[ConfigIssue, ...]:
        base_dir = os.path.dirname(os.path.abspath(self.path))
        try:
            config = load_config_text(pushed.yaml, base_dir=base_dir, check_files=True)
        except ConfigError as exc:
            return exc.issues
        if config.version != pushed.version:
            return (
                ConfigIssue(
                    "version", f"is {config.version}, but the master pushed {pushed.version}"
                ),
            )
        return ()

    def _install(self, data: bytes) -> bytes | None:
        """Keep the current file as ``.previous``, put ``data`` in place; returns the previous
        content (None when there was no file)."""
        try:
            with open(self.path, "rb") as stream:
                previous: bytes | None = stream.read()
            mode = os.stat(self.path).st_mode & 0o777
        except FileNotFoundError:
            previous, mode = None, 0o600
        if previous is not None:
            atomic_write(self.previous_path, previous, mode)
        atomic_write(self.path, data, mode)
        return previous

    async def _reload_and_check(self, version: int) -> str | None:
        """None when the relay reloaded and reports ``version`` healthy; else what failed."""
        api = self._api()
        try:
            answer = await api.reload()
        except RelayApiError as exc:
            return f"reload failed: {exc}"
        if answer.status != 200:
            return f"the relay refused the reload ({answer.status}): {answer.body[:300]!r}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._health_timeout
        last = "no answer"
        while True:
            try:
                health = await api.health()
                if health.get("version") == version and health.get("status") == "ok":
                    return None
                last = (
                    f"healthz says status {health.get('status')!r}, "
                    f"version {health.get('version')!r}"
                )
            except RelayApiError as exc:
                last = str(exc)
            if loop.time() >= deadline:
                return f"health check failed after {self._health_timeout:g}s: {last}"
            await asyncio.sleep(_HEALTH_POLL)

    async def _restore(self, previous: bytes | None) -> str:
        """Put the previous file back and reload; says how that went."""
        if previous is None:
            return "there was no previous file to restore"
        try:
            await asyncio.to_thread(
                atomic_write, self.path, previous, os.stat(self.path).st_mode & 0o777
            )
        except OSError as exc:
            return f"restoring the previous file failed: {exc}"
        try:
            answer = await self._api().reload()
        except RelayApiError as exc:
            return f"previous file restored; its reload failed: {exc}"
        if answer.status != 200:
            return f"previous file restored; its reload answered {answer.status}"
        return "previous config restored and reloaded"
