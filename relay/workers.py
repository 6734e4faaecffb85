"""``workers: N``: N relay processes sharing the listening ports, under one supervisor.

Each worker is a full relay node (``aicdn-relay run -C FILE --worker-socket PATH``) whose
listeners bind with SO_REUSEPORT, so the kernel spreads new connections across them. The
supervisor owns the admin API and the metrics endpoint: it reloads workers one by one through
their control sockets, merges their metrics into one view, and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from relay.admin import AdminServer, AdminTarget, Response, json_response, serve_one
from relay.config import ConfigError
from relay.config.model import RelayConfig

log = logging.getLogger(__name__)

#: Waits before restarting a worker that keeps dying: 0.5 s doubling up to 30 s.
RESTART_BACKOFF = (0.5, 30.0)
#: Per-process families are kept apart with a ``worker`` label instead of being summed.
_PER_PROCESS_PREFIXES = ("process_", "python_")
#: Gauges every worker holds the same value of (not a share of a total): merged with min, so
#: the config version reads as the version all workers run (the oldest one during a reload).
_SAME_IN_EVERY_WORKER = frozenset({"aicdn_config_version", "aicdn_usage_blocked_keys"})


@dataclass
class _Worker:
    index: int
    socket_path: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    """Starts, supervises, reloads and stops the workers of one relay node."""

    def __init__(
        self, config: RelayConfig, config_path: str, source: Callable[[], RelayConfig]
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._source = source
        self._rundir = tempfile.mkdtemp(prefix="aicdn-workers-")  # 0700: control sockets
        self._workers = [
            _Worker(i, os.path.join(self._rundir, f"worker-{i}.sock"))
            for i in range(config.workers)
        ]
        self._admin = AdminServer(self)
        #: The worker whose usage batch ``GET /usage`` looks at first (see usage_request).
        self._usage_next = 0
        self._stopping = False
        self._monitors: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> RelayConfig:
        return self._config

    async def usage_request(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, object]]:
        """``/usage`` of the node from its workers' meters.

        ``GET /usage`` returns one worker's pending batch (batch ids are unique per worker
        process), starting from the worker after the last one drained, so that every worker is
        drained in turn and a batch is always one worker's, resent unchanged until acked.
        Acknowledgements and over-quota keys go to every worker.
        """
        count = len(self._workers)
        if method == "GET" and path == "/usage":
            for step in range(count):
                worker = self._workers[(self._usage_next + step) % count]
                status, payload = await self._ask_json(worker, "GET", "/usage")
                if status == 200 and payload.get("batch") is not None:
                    self._usage_next = (worker.index + 1) % count
                    return 200, payload
            return 200, {"batch": None}
        answers = [
            await self._ask_json(w, method, f"{path}?{query}" if query else path, body)
            for w in self._workers
        ]
        failed = [f"worker {w.index}: {a[1]}" for w, a in zip(self._workers, answers, strict=True)
                  if a[0] not in (200, 400, 405, 404)]  # fmt: skip
        if failed:
            return 502, {"error": "worker_failed", "message": "; ".join(failed)}
        status, payload = answers[0]
        if status == 200 and path == "/usage/ack":
            return 200, {"acked": any(a[1].get("acked") is True for a in answers)}
        return status, payload

    async def _ask_json(
        self, worker: _Worker, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, object]]:
        """(status, JSON object) of a worker's answer; (599, error) when it does not answer."""
        try:
            head, data = await self._ask_raw(worker, method, path, body)
            status = int(head.split(b" ", 2)[1])
            payload = json.loads(data)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            return 599, {"error": f"no answer: {exc}"}
        return status, payload if isinstance(payload, dict) else {"error": "not an object"}

    async def start(self) -> None:
        for worker in self._workers:
            await self._spawn(worker)
        await self._admin.start(self._config)

    async def _spawn(self, worker: _Worker) -> None:
        # A dead worker's socket file would block its replacement's bind; its presence also
        # tells that a worker is ready (it is created once the listeners are up).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.socket_path)
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "run", "-C", self._config_path,
            "--worker-socket", worker.socket_path,
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which then drains
            # the workers with one SIGTERM each (a second one would cut their streams).
            start_new_session=True,
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._watch(worker, worker.process))
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _watch(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping:
            return
        worker.restarts += 1
        delay = min(RESTART_BACKOFF[0] * 2 ** (worker.restarts - 1), RESTART_BACKOFF[1])
        log.error("worker %d (pid %d) exited with %s; restarting in %.1fs",
                  worker.index, process.pid, code, delay)  # fmt: skip
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(worker)

    # --- AdminTarget ------------------------------------------------------------------------

    async def metrics_text(self) -> bytes:
        texts = await asyncio.gather(
            *(self._ask(w, "GET", "/metrics") for w in self._workers), return_exceptions=True
        )
        pairs = zip(self._workers, texts, strict=True)
        return merge_expositions([(w.index, t) for w, t in pairs if isinstance(t, bytes)])

    async def reload_from_source(self) -> RelayConfig:
        """Validate the file here (an invalid one is refused before any worker sees it), then
        have each worker reload it. A change of ``workers`` applies at the next restart."""
        new = self._source()
        failures = []
        for worker in self._workers:
            try:
                answer = await self._ask(worker, "POST", "/reload")
            except OSError as exc:
                failures.append(f"worker {worker.index}: {exc}")
                continue
            if b'"reloaded"' not in answer:
                failures.append(f"worker {worker.index}: {answer.decode(errors='replace')}")
        if failures:
            raise OSError("; ".join(failures))
        self._config = new
        await self._admin.reconfigure(new)
        return new

    async def _ask(self, worker: _Worker, method: str, path: str) -> bytes:
        return (await self._ask_raw(worker, method, path))[1]

    async def _ask_raw(
        self, worker: _Worker, method: str, path: str, body: bytes = b""
    ) -> tuple[bytes, bytes]:
        """(head, body) of one request to a worker's control socket."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(worker.socket_path), 5.0
        )
        try:
            length = f"content-length: {len(body)}\r\n" if body else ""
            request = f"{method} {path} HTTP/1.1\r\nhost: worker\r\n{length}\r\n"
            writer.write(request.encode() + body)
            data = await asyncio.wait_for(reader.read(), 30.0)
        finally:
            writer.close()
        head, _, answer = data.partition(b"\r\n\r\n")
        return head, answer

    def health(self) -> dict[str, object]:
        workers = self._worker_status()
        ready = all(w["ready"] for w in workers)
        return {"status": "ok" if ready else "degraded", "version": self._config.version,
                "workers": workers}  # fmt: skip

    def _worker_status(self) -> list[dict[str, object]]:
        return [
            {
                "index": w.index,
                "pid": w.process.pid if w.process else None,
                "alive": bool(w.process and w.process.returncode is None),
                "ready": bool(w.process and w.process.returncode is None)
                and os.path.exists(w.socket_path),
                "restarts": w.restarts,
                "socket": w.socket_path,
            }
            for w in self._workers
        ]

    # --- shutdown ---------------------------------------------------------------------------

    def signal_all(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains for ``shutdownTimeout``) and wait for them."""
        self._stopping = True
        await self._admin.stop()
        self.signal_all(signal.SIGTERM)
        deadline = self._config.shutdown_timeout + 5.0
        for worker in self._workers:
            if worker.process is None:
                continue
            try:
                await asyncio.wait_for(worker.process.wait(), deadline)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
        for task in list(self._monitors):
            task.cancel()
        shutil.rmtree(self._rundir, ignore_errors=True)


async def serve_worker_control(node: AdminTarget, path: str) -> asyncio.AbstractServer:
    """A worker's control socket: ``GET /metrics``, ``GET /healthz``, ``POST /reload``."""

    async def route(method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        if target.startswith("/usage"):
            path, _, query = target.partition("?")
            return json_response(*await node.usage_request(method, path, query, body))
        if target == "/metrics":
            return Response(200, await node.metrics_text(), "text/plain; version=0.0.4")
        if target == "/healthz":
            return json_response(200, {**node.health(), "pid": os.getpid()})
        if target == "/reload" and method == "POST":
            try:
                new = await node.reload_from_source()
            except ConfigError as exc:
                return json_response(400, {"error": "invalid_config", "message": str(exc)})
            except OSError as exc:
                return json_response(500, {"error": "reload_failed", "message": str(exc)})
            return json_response(200, {"status": "reloaded", "version": new.version})
        return json_response(404, {"error": "not_found", "message": target})

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_one(reader, writer, route)

    return await asyncio.start_unix_server(handle, path)


def merge_expositions(parts: list[tuple[int, bytes]]) -> bytes:
    """One exposition from several workers': samples with equal name and labels are summed
    (gauges that every worker holds alike, ``_SAME_IN_EVERY_WORKER``, take the least);
    per-process families (``process_*``, ``python_*``) get a ``worker`` label instead."""
    order: list[str] = []
    families: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in parts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                order.append(family.name)
                families[family.name] = (family.type, family.documentation)
                samples[family.name] = {}
            per_process = family.name.startswith(_PER_PROCESS_PREFIXES)
            alike = family.name in _SAME_IN_EVERY_WORKER
            bucket = samples[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation timestamps do not add up
                labels = dict(sample.labels)
                if per_process:
                    labels["worker"] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                if key not in bucket:
                    bucket[key] = sample.value
                elif alike:
                    bucket[key] = min(bucket[key], sample.value)
                else:
                    bucket[key] += sample.value
    lines: list[str] = []
    for name in order:
        kind, doc = families[name]
        exposed = f"{name}_total" if kind == "counter" else name  # text format 0.0.4 naming
        lines.append(f"# HELP {exposed} {_escape_help(doc)}")
        lines.append(f"# TYPE {exposed} {kind}")
        for (sample_name, label_pairs), value in samples[name].items():
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in label_pairs)
            selector = f"{{{rendered}}}" if rendered else ""
            lines.append(f"{sample_name}{selector} {value!r}")
    return ("\n".join(lines) + "\n").encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
