"""Typed, frozen configuration of one relay node (DESIGN §3.2).

The YAML uses gost v3's key names (camelCase); the dataclasses use Python names. The loader in
``relay.config.loader`` is the only place that maps one onto the other, and the only place that
validates. Everything downstream receives a fully validated, immutable ``RelayConfig``: hot
reload builds a new one and swaps it in, never mutating a live one.

Durations are seconds (``float``); addresses are ``Address`` values. ``None`` means "not set".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LISTENER_TYPES = ("tcp", "tls", "ws", "wss", "mtcp", "mtls", "quic", "http3")
DIALER_TYPES = ("tcp", "tls", "ws", "wss", "mtcp", "mtls", "quic")
HANDLER_TYPES = ("http", "forward", "relay")
CONNECTOR_TYPES = ("relay",)
STRATEGIES = ("round", "rand", "fifo", "hash")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")

ListenerType = Literal["tcp", "tls", "ws", "wss", "mtcp", "mtls", "quic", "http3"]
DialerType = Literal["tcp", "tls", "ws", "wss", "mtcp", "mtls", "quic"]
HandlerType = Literal["http", "forward", "relay"]
Strategy = Literal["round", "rand", "fifo", "hash"]


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` pair. ``host`` is "" for "all interfaces" (``":8080"``)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS material. Paths are as written in the file (resolved against its directory)."""

    cert_file: str | None = None
    key_file: str | None = None
    #: CA bundle: dialers verify the server against it (else the system store); listeners
    #: that set it require and verify client certificates.
    ca_file: str | None = None
    #: SNI and the name the server certificate must carry (dialers).
    server_name: str | None = None
    #: Dialers only: skip server certificate verification. Off by default; for labs only.
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class Auth:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class APIConfig:
    """Admin API of this node: ``GET /healthz``, ``GET /config``, ``POST /reload``."""

    addr: Address
    #: Bearer token required on every endpoint but ``/healthz`` when set.
    token: str | None = None
    #: Serve the admin API over TLS 1.3 (certFile + keyFile; caFile: require client
    #: certificates). The agent verifies it against ``caFile`` (or the system store).
    tls: TLSConfig | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    addr: Address
    path: str = "/metrics"
    #: Serve the metrics over TLS 1.3 (certFile + keyFile; caFile: require client
    #: certificates, e.g. Prometheus's). When metrics share the API's address, the API's wins.
    tls: TLSConfig | None = None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    type: ListenerType = "tcp"
    #: Listener TLS; falls back to the top-level ``tls`` for tls/wss/mtls/quic/http3.
    tls: TLSConfig | None = None
    #: WebSocket listeners: the request path accepted (others get 404).
    path: str = "/"
    #: PROXY protocol version (1 or 2) a load balancer in front sends; 0 = none. The client
    #: address then comes from its header instead of the socket.
    proxy_protocol: int = 0
    #: Transport options (``keepalive`` for ws/wss, ``proxyProtocol`` later, ...).
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HTTPHandlerOptions:
    """Options of the ``http`` handler (``handler.metadata``). All durations in seconds."""

    #: From the request being sent upstream to the first response byte. Reasoning models
    #: think for minutes before their first token, hence the long default.
    ttfb_timeout: float = 600.0
    #: Longest silence between two response chunks once the response has started.
    idle_timeout: float = 300.0
    #: Whole exchange, request start to response end. 0 disables.
    total_timeout: float = 3600.0
    #: Idle keep-alive client connections are closed after this long.
    keepalive_timeout: float = 75.0
    #: Request bytes kept so a request can be retried on another node while no byte of it
    #: is known to have reached an origin. Larger bodies are not retried.
    retry_buffer: int = 1 << 20
    #: Longest request head accepted from a client.
    max_header_size: int = 64 * 1024
    #: Longest request body accepted (bytes); a larger one is answered 413. 0 disables.
    #: Checked against ``Content-Length`` up front and counted as a chunked body streams.
    max_body_size: int = 64 * 1024 * 1024
    #: A request head must arrive within this long of its first byte, else 408 and close
    #: (slowloris: heads dribbled in byte by byte would otherwise hold a connection forever).
    header_timeout: float = 30.0
    #: Peers (IPs/CIDRs) whose ``X-Forwarded-For`` is believed: the client IP is then the
    #: rightmost address in it that is not itself a trusted proxy.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResumeOptions:
    """Resumable tunneled streams (``relay.protocols.resume``). On a ``relay`` handler
    (``handler.metadata``): whether and how long the core holds a broken stream; on a chain
    node's connector (``connector.metadata``): whether the edge asks for it."""

    #: Core: accept resumable streams. Edge: ask the node for them (``resume: true``).
    enabled: bool = True
    #: Seconds a broken stream is held (core) or re-dialed (edge) before it is lost
    #: (``resumeWindow``). On the core, 0 disables resume.
    window: float = 30.0
    #: Bytes of unacknowledged data one stream keeps for replay, per direction
    #: (``resumeBuffer``); a sender that reaches it waits for an acknowledgement.
    buffer: int = 1 << 20


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    type: HandlerType
    chain: str | None = None
    #: ``relay`` handler: the credentials tunnel clients must present.
    auth: Auth | None = None
    #: ``http`` handler options (parsed from ``metadata``).
    http: HTTPHandlerOptions = field(default_factory=HTTPHandlerOptions)
    #: Everything else in ``metadata`` that a later feature may read.
    metadata: dict[str, object] = field(default_factory=dict)
    #: ``relay`` handler: resumable streams (``resumeWindow``, ``resumeBuffer``).
    resume: ResumeOptions = field(default_factory=ResumeOptions)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Active health probe of a node group's nodes."""

    type: Literal["tcp", "http"] = "tcp"
    interval: float = 10.0
    timeout: float = 2.0
    #: ``http`` probes: path requested with GET; any status below 500 is healthy.
    path: str = "/healthz"


@dataclass(frozen=True, slots=True)
class SelectorConfig:
    strategy: Strategy = "round"
    #: Consecutive failures after which a node is skipped ...
    max_fails: int = 1
    #: ... for this many seconds.
    fail_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    type: Literal["relay"] = "relay"
    auth: Auth | None = None
    #: Ask the node for resumable streams (``metadata.resume: true``); None: plain tunnels.
    resume: ResumeOptions | None = None


@dataclass(frozen=True, slots=True)
class DialerConfig:
    type: DialerType = "tcp"
    tls: TLSConfig | None = None
    #: ws/wss: request path and Host header.
    path: str = "/"
    host: str | None = None
    #: ws/wss: seconds between keepalive pings; 0 disables.
    keepalive: float = 15.0
    #: Connect (and handshake) timeout.
    timeout: float = 10.0
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A chain hop node (with connector and dialer) or a forwarder target (addr only)."""

    name: str
    addr: Address
    connector: ConnectorConfig | None = None
    dialer: DialerConfig = field(default_factory=DialerConfig)


@dataclass(frozen=True, slots=True)
class HopConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    probe: ProbeConfig | None = None


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    hops: tuple[HopConfig, ...]


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    nodes: tuple[NodeConfig, ...]
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    probe: ProbeConfig | None = None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    addr: Address
    listener: ListenerConfig
    handler: HandlerConfig
    forwarder: ForwarderConfig | None = None
    #: Names of policies (resolved by the loader; validated to exist).
    admission: str | None = None
    shield: str | None = None
    cc: str | None = None
    climiter: str | None = None
    rlimiter: str | None = None
    #: Bytes buffered per connection direction before the reading side is paused.
    buffer_size: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    name: str
    whitelist: bool = False
    matchers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ShieldConfig:
    name: str
    window: float = 5.0
    max_requests: int = 10
    block_duration: float = 60.0
    algorithm: Literal["sliding_window", "token_bucket"] = "sliding_window"
    whitelist: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    strict: bool = False


@dataclass(frozen=True, slots=True)
class CCConfig:
    name: str
    rate_limit: int = 1000
    burst_size: int = 2000
    block_duration: float = 300.0
    check_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """climiter / rlimiter: gost limit lines (``"$ 100"``, ``"$$ 10"``, ``"10.0.0.0/8 5"``)."""

    name: str
    limits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """``accessLog``: one JSON line per HTTP request (issue 12), written off the hot path."""

    file: str
    """Path of the log (relative: against the config file's directory)."""
    max_size: int = 100 * 1024 * 1024
    """``maxSize``: bytes before the file is rotated (``file.1``, ``file.2``, ...); 100 MiB."""
    max_backups: int = 5
    """``maxBackups``: rotated files kept; 0 truncates instead of keeping any."""
    rate_per_second: int = 1000
    """``ratePerSecond``: lines per second at most (burst: one second's worth); more are
    dropped and counted in ``aicdn_access_log_dropped_total``."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    services: tuple[ServiceConfig, ...] = ()
    chains: tuple[ChainConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    api: APIConfig | None = None
    metrics: MetricsConfig | None = None
    tls: TLSConfig | None = None
    admissions: tuple[AdmissionConfig, ...] = ()
    shields: tuple[ShieldConfig, ...] = ()
    ccs: tuple[CCConfig, ...] = ()
    climiters: tuple[LimiterConfig, ...] = ()
    rlimiters: tuple[LimiterConfig, ...] = ()
    #: Worker processes (``workers: auto`` = CPU count). 1 until the workers feature lands.
    workers: int = 1
    #: Graceful shutdown: how long open connections may drain.
    shutdown_timeout: float = 30.0
    #: Version label reported in ``aicdn_config_version`` (set by the master's renderer).
    version: int = 0
    #: Directory the file was loaded from; relative certificate paths resolve against it.
    base_dir: str = "."
    #: ``accessLog``: JSON access log of the http services (None: none).
    access_log: AccessLogConfig | None = None

    def chain(self, name: str) -> ChainConfig:
        for chain in self.chains:
            if chain.name == name:
                return chain
        raise KeyError(name)
