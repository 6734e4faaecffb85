"""The AgentService server: grpc.aio on its own thread and event loop beside waitress.

Agents keep a command stream open for as long as they are connected, so a thread per RPC (the
synchronous gRPC server) would need a thread per agent; an asyncio server holds thousands of
streams on one thread, and the database calls run on a small pool (``grpc_threads``).

``aicdn-master serve`` starts it after the app (sharing the app's services) and stops it before
the app's store is closed. The app finds the :class:`~master_api.grpc.hub.CommandHub` in
``app.extensions["aicdn_agent_hub"]`` (``POST /nodes/{id}/commands``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.aio
from flask import Flask

from master_api.extensions import services
from master_api.grpc.hub import HUB_KEY, CommandHub
from master_api.grpc.service import AgentServicer
from master_api.settings import Settings
from master_api.tls import CertificateFiles, grpc_credentials
from relay.agent.rpc import Keepalive, add_servicer, server_options

__all__ = ["HUB_KEY", "AgentGrpcServer"]

log = logging.getLogger(__name__)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials that follow rotated files (``master_api.tls``), or None (plaintext)."""
    if settings.grpc_tls_cert_file is None or settings.grpc_tls_key_file is None:
        return None
    return grpc_credentials(
        CertificateFiles(
            settings.grpc_tls_cert_file,
            settings.grpc_tls_key_file,
            settings.grpc_tls_client_ca_file,
        )
    )


class AgentGrpcServer:
    """Serves AgentService for ``app`` on ``settings.grpc_addr``; :meth:`start`, :meth:`stop`."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.hub = CommandHub()
        self.port: int | None = None
        """The bound port (after :meth:`start`)."""
        self._app = app
        self._settings = settings
        self._executor = ThreadPoolExecutor(settings.grpc_threads, "aicdn-grpc-db")
        # Renders are CPU-bound Python (the GIL makes more threads useless for them): two
        # threads keep them off the heartbeats' pool.
        self._render_executor = ThreadPoolExecutor(2, "aicdn-grpc-render")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._grace = 5.0
        self._error: BaseException | None = None

    def start(self) -> int:
        """Bind and serve; returns the port. Raises ``OSError`` when the address cannot be
        bound (or the TLS files cannot be read)."""
        self._thread = threading.Thread(target=self._run, name="aicdn-grpc", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._executor.shutdown(wait=False)
            self._render_executor.shutdown(wait=False)
            raise self._error
        self._app.extensions[HUB_KEY] = self.hub
        assert self.port is not None
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() on the main thread
            self._error = exc
            self._started.set()
        finally:
            # As asyncio.run does: let what is left (handlers being cancelled) finish first.
            left = asyncio.all_tasks(self._loop)
            for task in left:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        settings = self._settings
        keepalive = Keepalive(settings.grpc_keepalive_time, settings.grpc_keepalive_timeout)
        server = grpc.aio.server(options=server_options(keepalive))
        self.hub.bind(asyncio.get_running_loop())
        servicer = AgentServicer(
            services(self._app).nodes,
            self.hub,
            self._executor,
            settings,
            render_executor=self._render_executor,
            usage=services(self._app).usage,
        )
        add_servicer(servicer, server)
        address = f"{settings.grpc_addr.host or '0.0.0.0'}:{settings.grpc_addr.port}"
        if ":" in (settings.grpc_addr.host or ""):
            address = f"[{settings.grpc_addr.host}]:{settings.grpc_addr.port}"
        credentials = _credentials(settings)
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            raise OSError(f"cannot listen on {address} for gRPC: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address} for gRPC")
        await server.start()
        self.port = port
        self._stop_requested = asyncio.Event()
        log.info(
            "AgentService listening on %s:%d (%s)",
            settings.grpc_addr.host or "0.0.0.0", port, "TLS" if credentials else "plaintext",
        )  # fmt: skip
        self._started.set()
        await self._stop_requested.wait()
        # Stopping from inside the loop: awaiting server.stop() from another thread's
        # run_coroutine_threadsafe while wait_for_termination() runs here never completes.
        self.hub.close_all()  # the command streams would otherwise hold the whole grace
        await server.stop(self._grace)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, give open calls ``grace`` seconds, close the command streams."""
        self._app.extensions.pop(HUB_KEY, None)
        self._grace = grace
        event = self._stop_requested
        if event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(grace + 5.0)
            if self._thread.is_alive():
                log.warning("the gRPC server did not stop within %.0fs", grace + 5.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._render_executor.shutdown(wait=False, cancel_futures=True)
