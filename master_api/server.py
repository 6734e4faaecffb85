"""``aicdn-master serve``: the production process.

Order of start-up: settings -> embedded store (when no ``AICDN_MONGO_URI``) -> JWT secret ->
app (waits for the database) -> the gRPC AgentService (``AICDN_GRPC_ADDR``, sharing the app's
services) -> leader election and the leader's jobs -> waitress. SIGTERM or SIGINT stops
waitress (in-flight requests finish), then the AgentService (agents reconnect to another
master), then the jobs (a running deployment's playbook is stopped: it ends
interrupted), then gives the lease up (so another master leads at once), closes the
database client and stops the embedded store.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from pathlib import Path
from types import FrameType

from flask import Flask
from waitress import create_server

from master_api import create_app
from master_api.errors import StoreUnavailable
from master_api.extensions import StoreExtension, repos, services
from master_api.grpc import AgentGrpcServer
from master_api.leader import BackgroundWorker, DeploymentWorker, LeaderElector, housekeeping
from master_api.metrics import MasterMetrics
from master_api.services.autoscale import Autoscaler
from master_api.services.failover import FailoverController
from master_api.services.monitor import Monitor
from master_api.services.notify import WebhookNotifier
from master_api.settings import Settings
from master_api.store import EmbeddedMongo
from master_api.tls import CertificateFiles, ClientAddressFromFront, TlsFront

__all__ = ["load_or_create_secret", "serve", "wait_for_app"]

log = logging.getLogger("master_api")


class _Stop(SystemExit):
    """Raised in the main thread by the signal handler; waitress stops on SystemExit."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    log.info("received %s; stopping", signal.Signals(signum).name)
    raise _Stop(0)


def load_or_create_secret(path: Path) -> str:
    """The JWT secret stored at ``path``, created (0600, 256 random bits) on first use.

    Fine for a single master; several masters must share ``AICDN_JWT_SECRET`` instead.
    """
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(secret + "\n")
    log.info("generated a JWT secret in %s", path)
    return secret


def wait_for_app(settings: Settings) -> Flask:
    """``create_app``, retried with backoff while the database does not answer."""
    delay = 0.5
    while True:
        try:
            return create_app(settings)
        except StoreUnavailable as exc:
            log.warning("%s; retrying in %.1fs", exc.message, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def serve(settings: Settings) -> int:
    """Run the master until SIGTERM/SIGINT; returns the exit status."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    embedded: EmbeddedMongo | None = None
    elector: LeaderElector | None = None
    worker: BackgroundWorker | None = None
    deployments: DeploymentWorker | None = None
    notifier: WebhookNotifier | None = None
    agents: AgentGrpcServer | None = None
    front: TlsFront | None = None
    app: Flask | None = None
    try:
        if settings.mongo_uri is None:
            embedded = EmbeddedMongo(
                Path(settings.data_dir) / "mongo", settings.embedded_mongo_port
            )
            embedded.start()
            settings = settings.with_overrides(mongo_uri=embedded.uri)
        if settings.jwt_secret is None:
            secret = load_or_create_secret(Path(settings.data_dir) / "jwt.secret")
            settings = settings.with_overrides(jwt_secret=secret)
        app = wait_for_app(settings)
        agents = AgentGrpcServer(app, settings)
        try:
            grpc_port = agents.start()
        except OSError as exc:
            log.error("%s", exc)
            agents = None
            return 1
        proxy: dict[str, object] = {}
        if settings.http_trusted_proxy:
            proxy = {
                "trusted_proxy": settings.http_trusted_proxy,
                "trusted_proxy_count": 1,
                "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
                "clear_untrusted_proxy_headers": True,
            }
        wsgi: object = app
        host, port = settings.http_addr.host or "0.0.0.0", settings.http_addr.port
        if settings.http_tls_cert_file and settings.http_tls_key_file:
            # waitress speaks plain HTTP: it listens on loopback behind the TLS front.
            files = CertificateFiles(settings.http_tls_cert_file, settings.http_tls_key_file)
            backend = create_server(
                app, host="127.0.0.1", port=0, threads=settings.http_threads,
                ident="aicdn-master", **proxy,
            )  # fmt: skip
            front = TlsFront(host, port, int(backend.effective_port), files)
            wsgi = ClientAddressFromFront(app, front)
            backend.application = wsgi
            try:
                port = front.start()
            except OSError as exc:
                log.error("cannot serve TLS on %s:%d: %s", host, port, exc)
                front = None
                return 1
            server = backend
            scheme = "https"
        else:
            server = create_server(
                app, host=host, port=port, threads=settings.http_threads,
                ident="aicdn-master", **proxy,
            )  # fmt: skip
            port = int(server.effective_port)
            scheme = "http"
        http_addr = f"{host}:{port}"
        elector = LeaderElector(repos(app), settings, http_addr)
        app.extensions["aicdn_elector"] = elector
        MasterMetrics.get(app).is_leader = lambda: elector is not None and elector.is_leader
        if settings.alert_webhook:
            notifier = WebhookNotifier(settings.alert_webhook, settings.webhook_timeout)
        monitor = Monitor(repos(app), settings, notifier)
        failover = FailoverController(repos(app), settings, services(app).configs, notifier)
        autoscaler = Autoscaler(
            repos(app), settings, services(app).configs, services(app).deployments
        )
        worker = BackgroundWorker(
            lambda: elector is not None and elector.is_leader,
            [
                ("monitor", monitor.run_once),
                ("failover", failover.run_once),
                ("autoscale", autoscaler.run_once),
                ("housekeeping", lambda: housekeeping(repos(app), settings)),
            ],
            settings.leader_renew_interval,
        )
        deployments = DeploymentWorker(
            lambda: elector is not None and elector.is_leader,
            repos(app),
            settings,
            elector.member_id,
        )
        elector.start()
        worker.start()
        deployments.start()
        log.info(
            "aicdn-master serving %s://%s and gRPC %s:%d (member %s)",
            scheme,
            http_addr,
            settings.grpc_addr.host or "0.0.0.0",
            grpc_port,
            elector.member_id,
        )
        server.run()
        return 0
    except _Stop:
        return 0
    finally:
        # A second signal must not cut the clean-up short (and leave the store running).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if front is not None:
            front.stop()
        if agents is not None:
            agents.stop(grace=1.0)
        if deployments is not None:
            deployments.stop()  # running playbooks end interrupted, their locks given back
        if worker is not None:
            worker.stop()
        if elector is not None:
            elector.stop(release=True)
        if notifier is not None:
            notifier.close()
        if app is not None:
            StoreExtension.get(app)[0].close()
        if embedded is not None:
            embedded.stop()
        log.info("aicdn-master stopped")
