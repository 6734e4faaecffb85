"""Render a ``RelayConfig`` back into a gost-style (camelCase) mapping.

``config_to_mapping`` is the inverse of ``config_from_mapping``: loading its output with the
same ``base_dir`` gives an equal ``RelayConfig``. ``redacted_mapping`` is the same rendering
with every secret replaced by ``"***"``; the admin API's ``GET /config`` serves it. Both return
fresh plain data (dicts, lists, strings, numbers, booleans) ready for ``json.dumps`` or
``yaml.safe_dump``; nothing in it aliases the live config.
"""

from __future__ import annotations

from relay.config.model import (
    Auth,
    ChainConfig,
    DialerConfig,
    ForwarderConfig,
    HandlerConfig,
    HopConfig,
    ListenerConfig,
    NodeConfig,
    ProbeConfig,
    RelayConfig,
    SelectorConfig,
    ServiceConfig,
    TLSConfig,
)

__all__ = ["REDACTED", "config_to_mapping", "redacted_mapping"]

REDACTED = "***"
#: Metadata keys whose values are redacted (matched as substrings, case-insensitively):
#: metadata is free-form, so a later feature may well put a credential there.
_SECRET_HINTS = ("password", "passwd", "secret", "token", "credential", "apikey", "api_key")


def redacted_mapping(config: RelayConfig) -> dict[str, object]:
    """``config`` as gost-style plain data with passwords and tokens replaced by ``"***"``."""
    return config_to_mapping(config, redact=True)


def config_to_mapping(config: RelayConfig, *, redact: bool = False) -> dict[str, object]:
    """``config`` as gost-style plain data; ``redact`` hides secrets (see ``redacted_mapping``)."""
    r = _Renderer(redact)
    out: dict[str, object] = {"log": {"level": config.log.level, "format": config.log.format}}
    if config.api is not None:
        api: dict[str, object] = {"addr": str(config.api.addr)}
        if config.api.token is not None:
            api["auth"] = {"token": r.secret(config.api.token)}
        if config.api.tls is not None:
            api["tls"] = r.tls(config.api.tls)
        out["api"] = api
    if config.metrics is not None:
        metrics: dict[str, object] = {
            "addr": str(config.metrics.addr),
            "path": config.metrics.path,
        }
        if config.metrics.tls is not None:
            metrics["tls"] = r.tls(config.metrics.tls)
        out["metrics"] = metrics
    if config.tls is not None:
        out["tls"] = r.tls(config.tls)
    out["services"] = [r.service(service) for service in config.services]
    if config.chains:
        out["chains"] = [r.chain(chain) for chain in config.chains]
    out.update(_policies(config))
    out["workers"] = config.workers
    out["shutdownTimeout"] = duration(config.shutdown_timeout)
    out["version"] = config.version
    if config.access_log is not None:
        log = config.access_log
        out["accessLog"] = {
            "file": log.file,
            "maxSize": log.max_size,
            "maxBackups": log.max_backups,
            "ratePerSecond": log.rate_per_second,
        }
    return out


def duration(seconds: float) -> str | float:
    """A gost duration string (``"10s"``, ``"0.25s"``) that parses back to exactly ``seconds``;
    a plain number of seconds where a string could not (``1e-09``)."""
    if seconds.is_integer() and abs(seconds) < 1e15:
        return f"{int(seconds)}s"
    text = repr(seconds)
    return seconds if "e" in text or "n" in text else f"{text}s"


def _policies(config: RelayConfig) -> dict[str, object]:
    out: dict[str, object] = {}
    if config.admissions:
        out["admissions"] = [
            {"name": a.name, "whitelist": a.whitelist, "matchers": list(a.matchers)}
            for a in config.admissions
        ]
    if config.shields:
        out["shields"] = [
            {
                "name": s.name,
                "window": duration(s.window),
                "maxRequests": s.max_requests,
                "blockDuration": duration(s.block_duration),
                "algorithm": s.algorithm,
                "whitelist": list(s.whitelist),
                "blacklist": list(s.blacklist),
                "strict": s.strict,
            }
            for s in config.shields
        ]
    if config.ccs:
        out["ccs"] = [
            {
                "name": c.name,
                "rateLimit": c.rate_limit,
                "burstSize": c.burst_size,
                "blockDuration": duration(c.block_duration),
                "checkInterval": duration(c.check_interval),
            }
            for c in config.ccs
        ]
    for key, limiters in (("climiters", config.climiters), ("rlimiters", config.rlimiters)):
        if limiters:
            out[key] = [{"name": lim.name, "limits": list(lim.limits)} for lim in limiters]
    return out


class _Renderer:
    """Section renderers sharing one redaction switch."""

    def __init__(self, redact: bool) -> None:
        self.redact = redact

    def secret(self, value: str) -> str:
        return REDACTED if self.redact else value

    def metadata(self, meta: dict[str, object]) -> dict[str, object]:
        return {key: self._plain(key, value) for key, value in meta.items()}

    def _plain(self, key: str, value: object) -> object:
        """Deep copy of validated plain data, redacting values under secret-looking keys."""
        if self.redact and isinstance(key, str) and any(h in key.lower() for h in _SECRET_HINTS):
            return REDACTED
        if isinstance(value, dict):
            return {k: self._plain(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._plain("", v) for v in value]
        return value

    def tls(self, tls: TLSConfig) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in (
            ("certFile", tls.cert_file),
            ("keyFile", tls.key_file),
            ("caFile", tls.ca_file),
            ("serverName", tls.server_name),
        ):
            if value is not None:
                out[key] = value
        if tls.insecure_skip_verify:
            out["insecureSkipVerify"] = True
        return out

    def auth(self, auth: Auth) -> dict[str, object]:
        return {"username": auth.username, "password": self.secret(auth.password)}

    def service(self, service: ServiceConfig) -> dict[str, object]:
        out: dict[str, object] = {
            "name": service.name,
            "addr": str(service.addr),
            "listener": self.listener(service.listener),
            "handler": self.handler(service.handler),
        }
        if service.forwarder is not None:
            out["forwarder"] = self.forwarder(service.forwarder)
        for key, name in (
            ("admission", service.admission),
            ("shield", service.shield),
            ("cc", service.cc),
            ("climiter", service.climiter),
            ("rlimiter", service.rlimiter),
        ):
            if name is not None:
                out[key] = name
        out["metadata"] = {"bufferSize": service.buffer_size}
        return out

    def listener(self, listener: ListenerConfig) -> dict[str, object]:
        out: dict[str, object] = {"type": listener.type}
        if listener.tls is not None:
            out["tls"] = self.tls(listener.tls)
        meta: dict[str, object] = {"path": listener.path}
        if listener.proxy_protocol:
            meta["proxyProtocol"] = listener.proxy_protocol
        out["metadata"] = {**meta, **self.metadata(listener.metadata)}
        return out

    def handler(self, handler: HandlerConfig) -> dict[str, object]:
        out: dict[str, object] = {"type": handler.type}
        if handler.chain is not None:
            out["chain"] = handler.chain
        if handler.auth is not None:
            out["auth"] = self.auth(handler.auth)
        http = handler.http
        meta: dict[str, object] = {
            "ttfbTimeout": duration(http.ttfb_timeout),
            "idleTimeout": duration(http.idle_timeout),
            "totalTimeout": duration(http.total_timeout),
            "keepaliveTimeout": duration(http.keepalive_timeout),
            "retryBuffer": http.retry_buffer,
            "maxHeaderSize": http.max_header_size,
            "maxBodySize": http.max_body_size,
            "headerTimeout": duration(http.header_timeout),
            **({"trustedProxies": list(http.trusted_proxies)} if http.trusted_proxies else {}),
            **self.metadata(handler.metadata),
        }
        if handler.type == "relay":
            resume = handler.resume
            meta["resumeWindow"] = duration(resume.window if resume.enabled else 0)
            meta["resumeBuffer"] = resume.buffer
        out["metadata"] = meta
        return out

    def forwarder(self, forwarder: ForwarderConfig) -> dict[str, object]:
        out: dict[str, object] = {
            "nodes": [{"name": node.name, "addr": str(node.addr)} for node in forwarder.nodes],
            "selector": self.selector(forwarder.selector),
        }
        if forwarder.probe is not None:
            out["probe"] = self.probe(forwarder.probe)
        return out

    def selector(self, selector: SelectorConfig) -> dict[str, object]:
        return {
            "strategy": selector.strategy,
            "maxFails": selector.max_fails,
            "failTimeout": duration(selector.fail_timeout),
        }

    def probe(self, probe: ProbeConfig) -> dict[str, object]:
        return {
            "type": probe.type,
            "interval": duration(probe.interval),
            "timeout": duration(probe.timeout),
            "path": probe.path,
        }

    def chain(self, chain: ChainConfig) -> dict[str, object]:
        return {"name": chain.name, "hops": [self.hop(hop) for hop in chain.hops]}

    def hop(self, hop: HopConfig) -> dict[str, object]:
        out: dict[str, object] = {
            "name": hop.name,
            "selector": self.selector(hop.selector),
            "nodes": [self.node(node) for node in hop.nodes],
        }
        if hop.probe is not None:
            out["probe"] = self.probe(hop.probe)
        return out

    def node(self, node: NodeConfig) -> dict[str, object]:
        out: dict[str, object] = {"name": node.name, "addr": str(node.addr)}
        if node.connector is not None:
            connector: dict[str, object] = {"type": node.connector.type}
            if node.connector.auth is not None:
                connector["auth"] = self.auth(node.connector.auth)
            resume = node.connector.resume
            if resume is not None:
                connector["metadata"] = {
                    "resume": True,
                    "resumeWindow": duration(resume.window),
                    "resumeBuffer": resume.buffer,
                }
            out["connector"] = connector
        out["dialer"] = self.dialer(node.dialer)
        return out

    def dialer(self, dialer: DialerConfig) -> dict[str, object]:
        out: dict[str, object] = {"type": dialer.type}
        if dialer.tls is not None:
            out["tls"] = self.tls(dialer.tls)
        meta: dict[str, object] = {"path": dialer.path}
        if dialer.host is not None:
            meta["host"] = dialer.host
        meta["keepalive"] = duration(dialer.keepalive)
        meta["timeout"] = duration(dialer.timeout)
        out["metadata"] = {**meta, **self.metadata(dialer.metadata)}
        return out
