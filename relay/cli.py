"""``aicdn-relay``: run a relay node, check a config, or run the LLM-like dev origin."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from relay import __version__
from relay.config import ConfigError, RelayConfig, config_from_urls, load_config_file
from relay.config.model import LogConfig

log = logging.getLogger("relay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aicdn-relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a relay node")
    run.add_argument("-C", "--config", help="relay config file (YAML)")
    run.add_argument(
        "-L", dest="listen", action="append", default=[],
        help="service URL, e.g. http://:8080 or relay+tls://user:pass@:8443/127.0.0.1:8000",
    )  # fmt: skip
    run.add_argument(
        "-F", dest="forward", action="append", default=[],
        help="chain node URL, e.g. relay+wss://core.example:8444?path=/tunnel",
    )  # fmt: skip

    # Internal: a worker process of a supervised node (``workers: N``).
    run.add_argument("--worker-socket", help=argparse.SUPPRESS)

    check = commands.add_parser("check", help="validate a config file; exit 0 if valid, 1 if not")
    check.add_argument("-C", "--config", required=True, help="relay config file (YAML)")

    # The node agent (relay/agent; DESIGN §5).
    agent = commands.add_parser("agent", help="run the node agent beside the relay")
    agent.add_argument("--config", required=True, help="agent config file (YAML)")
    agent.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    # Access logs (``accessLog``; issue 12).
    logs = commands.add_parser("logs", help="access log tools")
    logs_commands = logs.add_subparsers(dest="logs_command", required=True)
    stats = logs_commands.add_parser(
        "stats", help="summarise an access log: top keys, error rates, TTFB p50/p99"
    )
    stats.add_argument("file", help="access log file (JSON lines)")
    stats.add_argument("--top", type=int, default=10, help="keys to list (default 10)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")

    commands.add_parser(
        "dev-origin", add_help=False, help="run the LLM-like test origin (see dev-origin --help)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev-origin"]:  # its own argument parser takes the rest
        from relay import dev_origin

        return dev_origin.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "logs":
        return _log_stats(args.file, args.top, args.json)
    if args.command == "agent":
        from relay.agent.main import run_agent

        return run_agent(args.config, args.log_level)
    return _run(args)


def _log_stats(path: str, top: int, as_json: bool) -> int:
    import json

    from relay.log_stats import format_stats, summarise

    try:
        with open(path, "rb") as stream:
            stats = summarise(stream)
    except OSError as exc:
        print(f"aicdn-relay logs stats: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(stats.to_json(top), indent=2))
    else:
        print(format_stats(stats, top), end="")
    return 0


def _check(path: str) -> int:
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: {len(exc.issues)} error(s); config refused", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(config.services)} services, {len(config.chains)} chains)")
    return 0


def _run(args: argparse.Namespace) -> int:
    source: Callable[[], RelayConfig] | None
    if args.config:
        if args.listen or args.forward:
            print("aicdn-relay run: use either -C or -L/-F, not both", file=sys.stderr)
            return 2
        path: str = args.config

        def source() -> RelayConfig:
            return load_config_file(path)

    elif args.listen:
        source = None
    else:
        print("aicdn-relay run: give -C FILE or at least one -L URL", file=sys.stderr)
        return 2
    try:
        config = source() if source else config_from_urls(args.listen, args.forward)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    configure_logging(config.log)
    import uvloop

    if config.workers > 1 and args.worker_socket is None:
        if source is None:
            print("aicdn-relay run: workers need a config file (-C)", file=sys.stderr)
            return 2
        return uvloop.run(_supervise(config, args.config, source))
    return uvloop.run(_serve(config, source, args.worker_socket))


async def _supervise(config: RelayConfig, path: str, source: Callable[[], RelayConfig]) -> int:
    from relay.workers import Supervisor

    supervisor = Supervisor(config, path, source)
    try:
        await supervisor.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await supervisor.stop()
        return 1
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_stop() -> None:
        if stopping.is_set():  # a second SIGTERM/SIGINT: workers close at once
            supervisor.signal_all(signal.SIGTERM)
        stopping.set()

    reloads: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        task: asyncio.Task[object] = loop.create_task(_quietly(supervisor.reload_from_source()))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stopping.wait()
    await supervisor.stop()
    return 0


async def _stop_when_orphaned(stopping: asyncio.Event) -> None:
    """A worker whose supervisor died (even by SIGKILL) drains and exits instead of lingering."""
    parent = os.getppid()
    while not stopping.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("supervisor %d is gone; stopping", parent)
            stopping.set()


async def _quietly(reload: Awaitable[RelayConfig]) -> object:
    try:
        return await reload
    except (ConfigError, OSError) as exc:
        log.error("reload refused, the running config stays: %s", exc)
        return None


async def _serve(
    config: RelayConfig, source: Callable[[], RelayConfig] | None, worker_socket: str | None
) -> int:
    from relay.admin import NoReloadSource
    from relay.server import RelayNode

    node = RelayNode(config, reload_source=source, worker_socket=worker_socket)
    try:
        await node.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    # What start-up made (modules, config, TLS contexts) lives as long as the process: frozen,
    # the collector stops walking it. And a collection per 10,000 allocations, not 700: every
    # connection makes dozens. perf on an edge with 2,000 streams: GC 1.9 % -> 0.35 % of its CPU.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_stop() -> None:
        if stopping.is_set():  # a second SIGTERM/SIGINT: close everything at once
            node.abort_all()
        stopping.set()

    async def reload() -> None:
        try:
            await node.reload_from_source()
        except (ConfigError, OSError, NoReloadSource):
            pass  # logged by the node; the running config stays

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watchdog = loop.create_task(_stop_when_orphaned(stopping)) if worker_socket else None
    await stopping.wait()
    if watchdog is not None:
        watchdog.cancel()
    log.info("stopping: draining open connections for up to %gs", node.config.shutdown_timeout)
    await node.stop()
    # QUIC and multiplexed tunnels are shared by the whole process (one per core node): close
    # them last, so cores see a clean close instead of waiting out the idle timeout.
    from relay.transports.mux.client import tunnel_pool as mux_tunnels
    from relay.transports.quic.client import tunnel_pool

    tunnel_pool().close()
    mux_tunnels().close()
    return 0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(config: LogConfig) -> None:
    handler = logging.StreamHandler()
    if config.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = {"warn": "WARNING"}.get(config.level, config.level.upper())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # aioquic logs every connection's handshake and every stream a peer resets at INFO: with
    # clients that abort streams (routine for chat UIs) that is two lines per abort, which
    # buries the relay's own log (bench/soak.py measured ~1,500 lines a minute at 20 clients).
    # Its INFO lines show at the relay's debug level only.
    quiet = logging.getLogger().level > logging.DEBUG
    logging.getLogger("quic").setLevel(logging.WARNING if quiet else logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
