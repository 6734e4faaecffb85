"""``aicdn-master dns``: the process. Start-up: settings -> store client (``mongo_uri``, else
the embedded store a running ``aicdn-master serve`` keeps on ``embedded_mongo_port``; this
command never starts one) -> the edge view (first read now, then every ``dns_refresh``) ->
metrics on ``dns_metrics_addr`` when set -> UDP and TCP on ``dns_addr``. A store that is down
at start is not fatal: queries get SERVFAIL until the first read succeeds, and a later outage
keeps the last view. SIGTERM/SIGINT: close the sockets, stop the metrics server and the
refresh thread, close the store client.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import uvloop
from prometheus_client import CollectorRegistry, start_http_server

from master_api.dns.config import DnsConfig
from master_api.dns.edges import EdgeWatcher
from master_api.dns.metrics import DnsCollector
from master_api.dns.responder import Responder
from master_api.dns.server import DnsServer
from master_api.repos import Repos
from master_api.settings import Settings
from master_api.store import EmbeddedMongo, Store

__all__ = ["run_dns"]

log = logging.getLogger("master_api.dns")


def run_dns(settings: Settings) -> int:
    """Run the DNS server until SIGTERM/SIGINT; the exit status. Raises ``SettingsError``
    for DNS settings that contradict each other (a host name outside the zone)."""
    config = DnsConfig.from_settings(settings)
    uri = settings.mongo_uri
    if uri is None:
        uri = EmbeddedMongo(Path(settings.data_dir) / "mongo", settings.embedded_mongo_port).uri
    store = Store(uri, settings.mongo_db, settings.mongo_timeout)
    watcher = EdgeWatcher(Repos(store.db), config.refresh, config.max_silence)
    metrics: WSGIServer | None = None
    try:
        watcher.start()
        responder = Responder(config, lambda: watcher.view)
        if settings.dns_metrics_addr is not None:
            registry = CollectorRegistry()
            registry.register(DnsCollector(responder.stats, watcher))
            addr = settings.dns_metrics_addr
            metrics, _ = start_http_server(addr.port, addr.host or "0.0.0.0", registry)
            log.info("metrics on http://%s:%d/metrics", addr.host or "0.0.0.0", metrics.server_port)
        return uvloop.run(_serve(config, responder))
    finally:
        if metrics is not None:
            metrics.shutdown()
        watcher.stop()
        store.close()


async def _serve(config: DnsConfig, responder: Responder) -> int:
    server = DnsServer(responder, config.addr.host, config.addr.port)
    try:
        sockets = await server.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.addr.host, config.addr.port, exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    zone = b".".join(config.zone).decode()
    log.info("aicdn-master dns: zone %s on %s:%d (UDP, TCP)", zone, sockets.host, sockets.port)
    await stop.wait()
    await server.close()
    log.info("aicdn-master dns stopped: %s", responder.stats)
    return 0
