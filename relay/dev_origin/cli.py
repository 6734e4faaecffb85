"""``main``: the dev origin's command line (``aicdn-relay dev-origin``), run until a signal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import uvloop

from relay.dev_origin.server import serve_origin


def _parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; an empty host means all interfaces."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aicdn-relay dev-origin",
        description="LLM-like HTTP origin (OpenAI chat completions, SSE) for tests and benchmarks.",
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8000)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    return parser


async def _run(host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    server = await serve_origin(host, port, ssl_context=ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    scheme = "https" if ssl_context else "http"
    print(
        f"dev-origin listening on {scheme}://{bound_host}:{bound_port}", file=sys.stderr, flush=True
    )
    try:
        await stop.wait()
    finally:
        # No wait_closed(): since Python 3.12 it also waits for every client connection to end,
        # and a benchmark client holding keep-alive connections would block shutdown.
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the dev origin until SIGINT/SIGTERM; returns the process exit status.

    Never calls ``sys.exit``: argparse's own exits (``--help``, usage errors) are turned into the
    returned status, so this can be embedded in another CLI.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("dev-origin: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    host, port = args.listen
    try:
        uvloop.run(_run(host, port, ssl_context))
    except OSError as exc:
        print(f"dev-origin: {exc}", file=sys.stderr)
        return 1
    return 0
