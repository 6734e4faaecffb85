"""TLS 1.3 for the master's REST API and certificates that follow their files.

waitress speaks plain HTTP only, so with ``AICDN_HTTP_TLS_CERT_FILE`` the REST API is served
through :class:`TlsFront`: an asyncio TLS terminator on its own thread, listening on
``AICDN_HTTP_ADDR`` and relaying each connection to waitress bound on loopback. The client's
address would be lost on that hop, so the front remembers which backend connection (by its
local port) carries which client and :class:`ClientAddressFromFront` (WSGI middleware) puts it
back into ``REMOTE_ADDR`` -- the admin-allow check and the audit log see the real client --
and sets ``wsgi.url_scheme`` to ``https``.

Rotation without a restart: :class:`CertificateFiles` re-reads certificate and key when their
files change (checked at most once a second, on new handshakes). Connections already open keep
the certificate they were served; a half-written pair (key and certificate not matching yet)
is skipped until it matches. The gRPC AgentService uses the same watcher through
``grpc.dynamic_ssl_server_credentials`` (:func:`grpc_credentials`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc

__all__ = ["CertificateFiles", "ClientAddressFromFront", "TlsFront", "grpc_credentials"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0
#: Least time between two looks at the certificate files (a ``stat`` each).
_CHECK_INTERVAL = 1.0


class CertificateFiles:
    """A certificate/key pair (and optional client CA) on disk, re-read when they change."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self._checked = clock()
        self.generation = 0
        """Incremented each time new files were taken into use."""

    def _paths(self) -> Iterable[str]:
        yield self.cert_file
        yield self.key_file
        if self.client_ca_file:
            yield self.client_ca_file

    def _read_stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths():
            info = os.stat(path)
            stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def changed(self) -> bool:
        """True (once) when the files changed since they were last taken into use; looks at
        most once per second."""
        now = self._clock()
        with self._lock:
            if now - self._checked < _CHECK_INTERVAL:
                return False
            self._checked = now
            try:
                stamp = self._read_stamp()
            except OSError as exc:
                log.warning("certificate files unreadable, keeping the current ones: %s", exc)
                return False
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            return True

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.3 server context from the files as they are now (raises ``ssl.SSLError``
        or ``OSError`` for a pair that does not load)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def grpc_configuration(self) -> Any:
        """The files as a ``grpc.ssl_server_certificate_configuration``."""
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def grpc_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Server credentials that pick up rotated files on the next handshake."""

    def fetch() -> Any:
        # gRPC calls this before each handshake; None keeps the current configuration.
        if not files.changed():
            return None
        try:
            configuration = files.grpc_configuration()
            files.server_context()  # refuse a pair that does not match (half-written)
        except (OSError, ssl.SSLError) as exc:
            log.warning("gRPC: new certificate files refused, keeping the current ones: %s", exc)
            return None
        log.info("gRPC: serving the new certificate from %s", files.cert_file)
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        files.grpc_configuration(),
        fetch,
        require_client_authentication=files.client_ca_file is not None,
    )


class TlsFront:
    """TLS terminator in front of a loopback HTTP backend; :meth:`start`, :meth:`stop`."""

    def __init__(self, host: str, port: int, backend_port: int, files: CertificateFiles) -> None:
        self._host = host
        self._port = port
        self._backend_port = backend_port
        self._files = files
        self._first = files.server_context()
        self._current = self._first
        self._first.sni_callback = self._pick_context
        self._clients: dict[int, str] = {}
        self._clients_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    # --- certificates ---------------------------------------------------------------------------

    def _pick_context(self, conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: Any) -> None:
        """Every ClientHello: move the connection onto the newest certificate."""
        if self._files.changed():
            try:
                self._current = self._files.server_context()
                log.info("REST: serving the new certificate from %s", self._files.cert_file)
            except (OSError, ssl.SSLError) as exc:
                log.warning("REST: new certificate files refused, keeping the current: %s", exc)
        if self._current is not self._first:
            conn.context = self._current

    # --- client addresses -----------------------------------------------------------------------

    def client_of(self, backend_port: int) -> str | None:
        """The client address whose connection reaches the backend from ``backend_port``."""
        with self._clients_lock:
            return self._clients.get(backend_port)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> int:
        """Listen (on a thread of its own); returns the bound port. Raises ``OSError``."""
        ready: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tls-front")
        self._thread.daemon = True
        self._thread.start()
        self.port = ready.result(timeout=30)
        return self.port

    def _run(self, ready: Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._serve,
                    self._host or None,
                    self._port,
                    ssl=self._first,
                    ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
                    reuse_address=True,
                )
            )
        except OSError as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(int(self._server.sockets[0].getsockname()[1]))
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop listening and close the relayed connections."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        self._thread.join(10)
        self._thread = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        backend_port: int | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._backend_port)
            backend_port = int(up_writer.get_extra_info("sockname")[1])
            with self._clients_lock:
                self._clients[backend_port] = client
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side went away: nothing to answer
        finally:
            if backend_port is not None:
                with self._clients_lock:
                    self._clients.pop(backend_port, None)
            if up_writer is not None:
                up_writer.close()
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (TLS cannot half-close: the connection is closed,
    which also ends the other direction)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (OSError, RuntimeError):
        writer.close()


class ClientAddressFromFront:
    """WSGI middleware: requests that came through :class:`TlsFront` get the client's address
    as ``REMOTE_ADDR`` and ``https`` as their scheme."""

    def __init__(self, app: Callable[..., Any], front: TlsFront) -> None:
        self._app = app
        self._front = front

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            port = int(environ.get("REMOTE_PORT") or 0)
        except ValueError:
            port = 0
        client = self._front.client_of(port) if environ.get("REMOTE_ADDR") == "127.0.0.1" else None
        if client is not None:
            environ["REMOTE_ADDR"] = client
            environ["wsgi.url_scheme"] = "https"
        return self._app(environ, start_response)
