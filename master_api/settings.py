"""The master's settings: one frozen, typed object per process (STYLE C1, D2).

Sources, later ones winning:

1. the field defaults below;
2. a TOML file named by ``AICDN_CONFIG`` (or passed to :meth:`Settings.load`), whose keys are the
   field names (``mongo_uri = "mongodb://..."``);
3. environment variables ``AICDN_<FIELD NAME IN UPPER CASE>`` (``AICDN_MONGO_URI``).

Parsing is strict: a value that does not parse, is out of range, or a file key that is not a
field raises :class:`SettingsError` whose message names the variable (``AICDN_LEADER_TTL: bad
duration 'x'; ...``), so a bad deployment stops at start-up instead of misbehaving later.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from relay.config import Address, parse_address, parse_duration

__all__ = ["ENV_PREFIX", "IPNetwork", "Settings", "SettingsError"]

ENV_PREFIX = "AICDN_"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_T = TypeVar("_T")
_DB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Variables with the prefix that belong to other programs or to the test suite, not to Settings.
_FOREIGN_ENV = frozenset({"AICDN_CONFIG", "AICDN_TEST_MONGO_URI"})
#: The checkout the master runs from (its playbooks/ and ansible.cfg are the defaults).
_REPO_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


def _loopback() -> tuple[IPNetwork, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the master reads from its environment. Build with :meth:`load`."""

    mongo_uri: str | None = None
    """MongoDB connection string. None: start the embedded nx-27017 store under ``data_dir``."""
    mongo_db: str = "aicdn"
    """Database name (``[A-Za-z_][A-Za-z0-9_]*``, a rule of the embedded store too)."""
    mongo_timeout: float = 2.0
    """Seconds the driver waits for a reachable server before a request fails with 503."""
    data_dir: str = "./var"
    """Directory for the embedded store (``<data_dir>/mongo``) and the generated JWT secret."""
    embedded_mongo_port: int = 27817
    """Loopback port of the embedded store (below 32768: outside the ephemeral range)."""
    http_addr: Address = field(default_factory=lambda: Address("0.0.0.0", 8080))
    """REST API listen address (``host:port``)."""
    grpc_addr: Address = field(default_factory=lambda: Address("0.0.0.0", 50051))
    """gRPC AgentService listen address (``host:port``; port 0 picks a free one)."""
    grpc_tls_cert_file: str | None = None
    """PEM certificate chain of the AgentService; with ``grpc_tls_key_file`` it serves TLS
    only. Unset: plaintext (loopback or a trusted network only)."""
    grpc_tls_key_file: str | None = None
    """PEM private key of ``grpc_tls_cert_file``."""
    grpc_tls_client_ca_file: str | None = None
    """CA bundle: when set (with TLS), agents must present a client certificate it signed."""
    grpc_keepalive_time: float = 30.0
    """Seconds between HTTP/2 keepalive pings on idle agent connections (seed §4.3)."""
    grpc_keepalive_timeout: float = 10.0
    """Seconds a keepalive ping may go unanswered before the connection is dropped."""
    grpc_threads: int = 8
    """Threads that run the AgentService's database calls (the gRPC loop never blocks)."""
    command_timeout: float = 10.0
    """Default time an agent has to answer ``POST /nodes/{id}/commands`` (then 504)."""
    agent_snapshot_ttl: float = 1.0
    """Seconds the AgentService may reuse one read of the active versions and of the peers it
    renders with, instead of reading them per call: a publish reaches agents up to this much
    later. 0: read on every call."""
    agent_auth_ttl: float = 30.0
    """Seconds the AgentService may reuse a node read when authenticating an agent (the token
    is checked on every call; a changed region or status is seen up to this much later)."""
    http_threads: int = 8
    """Worker threads of the production WSGI server (waitress)."""
    jwt_secret: str | None = None
    """HMAC key for JWTs, at least 32 characters. ``aicdn-master serve`` generates one into
    ``<data_dir>/jwt.secret`` when unset; several masters must share one explicitly."""
    access_token_ttl: float = 900.0
    """Lifetime of an access token, seconds (default 15 minutes)."""
    refresh_token_ttl: float = 86400.0
    """Lifetime of a refresh token, seconds (default 1 day)."""
    admin_allow: tuple[IPNetwork, ...] = field(default_factory=_loopback)
    """CIDRs allowed to the management API (comma separated). Default: loopback only. Health,
    readiness, metrics and the agent heartbeat are not management calls and are not filtered."""
    login_window: float = 60.0
    """Length of the login rate-limit window, seconds."""
    login_max_per_ip: int = 20
    """Login attempts allowed per client IP per window; more get 429."""
    login_max_per_user: int = 5
    """Failed logins allowed per user name per window; more get 429 until the window ends."""
    password_time_cost: int = 3
    """Argon2id iterations."""
    password_memory_kib: int = 65536
    """Argon2id memory cost in KiB (default 64 MiB)."""
    password_parallelism: int = 4
    """Argon2id lanes."""
    leader_ttl: float = 15.0
    """Leader lease lifetime, seconds: a dead leader is replaced within this time."""
    leader_renew_interval: float = 5.0
    """How often a master renews its lease and membership, seconds (less than half the TTL)."""
    heartbeat_interval: float = 10.0
    """Expected interval between a node's heartbeats, seconds."""
    offline_after_missed: int = 3
    """Missed heartbeats after which a node is marked offline (raising ``NodeOffline``)."""
    alert_p99_latency_ms: float = 100.0
    """``HighLatency`` fires when a node reports p99 latency above this (seed §8.2)."""
    alert_error_rate: float = 0.01
    """``HighErrorRate`` fires when a node reports an error ratio above this (1%)."""
    alert_connection_ratio: float = 0.9
    """``ConnectionExhaustion`` fires above this share of the node's connection limit (90%)."""
    alert_webhook: str | None = None
    """Optional http(s) URL; alert changes are POSTed to it as JSON."""
    webhook_timeout: float = 5.0
    """Timeout of one webhook POST, seconds."""
    node_base_dir: str = "/etc/aicdn"
    """Directory on the relay hosts that rendered configs use for certificates and keys."""
    ansible_playbook_dir: str = field(default_factory=lambda: str(_REPO_ROOT / "playbooks"))
    """Where deployments find ``deploy.yml``, ``rollback.yml`` and ``reload.yml`` (default: the
    ``playbooks/`` of the checkout the master runs from)."""
    ansible_config: str = field(default_factory=lambda: str(_REPO_ROOT / "ansible.cfg"))
    """The ``ansible.cfg`` deployments run with (default: the checkout's)."""
    deploy_work_dir: str | None = None
    """Parent of the deployments' private data dirs (0700, removed after each run). Unset: the
    system temp dir."""
    deploy_connections: tuple[str, ...] = ("ssh",)
    """Values a node's ``metadata.ansible_vars.ansible_connection`` may take (comma separated).
    ``local`` runs a host's tasks on the master itself: only for test and demo hosts."""
    deploy_idle_timeout: float = 600.0
    """A playbook silent this long is stopped (the deployment fails), seconds."""
    deploy_job_timeout: float = 3600.0
    """A playbook running this long is stopped (the deployment fails), seconds."""
    deploy_max_parallel: int = 2
    """Deployments the leader runs at once (they never share a node)."""
    deploy_poll_interval: float = 1.0
    """How often the leader looks for queued deployments and dead runs, seconds."""
    deploy_event_batch: int = 50
    """Events written to the store in one batch at most."""
    deploy_event_flush: float = 0.25
    """Longest time an event waits in the batch before it is written, seconds."""
    deploy_stream_max: float = 600.0
    """Longest life of one events stream (SSE); the client then reconnects, seconds."""
    max_body_bytes: int = 2 * 1024 * 1024
    """Largest accepted request body, bytes (larger: 413)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    # -- smart DNS (``aicdn-master dns``, master_api/dns) ---------------------------------------
    dns_addr: Address = field(default_factory=lambda: Address("0.0.0.0", 53))
    """Where ``aicdn-master dns`` answers, UDP and TCP (``host:port``; port 0: a free one)."""
    dns_zone: str = "aicdn.example"
    """The zone the DNS server is authoritative for (SOA, NS); other names get REFUSED."""
    dns_hostnames: tuple[str, ...] = ()
    """Service names answered with the nearest healthy edges (comma separated, inside
    ``dns_zone``). Empty: the zone apex itself."""
    dns_ttl: int = 30
    """TTL of the edge answers, seconds: short, so a failed edge leaves caches quickly."""
    dns_refresh: float = 1.0
    """How often the DNS server re-reads the edges from the store, seconds."""
    dns_max_answers: int = 4
    """Most edge addresses in one answer (rotated among a region's healthy edges)."""
    dns_missed_heartbeats: int = 2
    """An edge silent for ``heartbeat_interval`` x this is no longer answered (before the
    leader marks it offline after ``offline_after_missed``)."""
    dns_default_region: str = "us"
    """Region of clients whose country is unknown or listed in no region."""
    dns_regions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Countries per region, over the built-in table (master_api/dns/regions.py):
    ``"hk=HK,MO,TW;sg=SG,MY"`` (TOML: a table of lists). A country listed moves there."""
    dns_region_fallback: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Next-nearest regions per region, over the built-in order: ``"hk=sg,cn,us;us=hk"``."""
    dns_nameservers: tuple[str, ...] = ()
    """Names of the zone's name servers (NS records; the first is the SOA's MNAME)."""
    dns_metrics_addr: Address | None = None
    """Prometheus metrics of ``aicdn-master dns`` (``host:port``, path ``/metrics``); unset:
    none."""
    ui_dir: str = field(default_factory=lambda: str(_REPO_ROOT / "web" / "dist"))
    """The built web console the master serves at ``/ui`` (``make web`` builds it into the
    checkout's ``web/dist``, the default)."""
    http_tls_cert_file: str | None = None
    """PEM certificate chain of the REST API; with ``http_tls_key_file`` it serves TLS 1.3 only
    on ``http_addr`` (rotated files are picked up by new connections, no restart). Unset:
    plain HTTP (behind a TLS balancer, or on a trusted network)."""
    http_tls_key_file: str | None = None
    """PEM private key of ``http_tls_cert_file``."""
    http_trusted_proxy: str | None = None
    """Address of a load balancer in front of the REST API (nginx, the master cluster): its
    ``X-Forwarded-For``/``X-Forwarded-Proto`` are trusted, so the admin-allow check and the
    audit log see the real client. Unset: forwarded headers are ignored. ``*`` trusts anyone
    (only when nothing else can reach the port)."""
    failover_enabled: bool = True
    """The leader takes offline or degraded nodes out of their peers' chains (and puts them
    back), re-rendering and pushing the affected configs (``services/failover.py``)."""
    failover_node_types: tuple[str, ...] = ("core",)
    """Node types the failover watches (comma separated): the ones others chain to."""
    failover_hold_down: float = 60.0
    """A node taken out returns only after being healthy this long without a break, seconds."""
    failover_min_interval: float = 30.0
    """Least time between two changes of one node's failover state, seconds (taking an
    offline node out is never delayed)."""
    failover_recover_ratio: float = 0.5
    """Hysteresis: a degraded node counts as healthy again only once its error rate and p99
    latency are below this share of their alert thresholds."""
    autoscale_enabled: bool = False
    """The leader activates ``standby`` nodes when load stays high and drains active ones back
    to standby when it stays low (``services/autoscale.py``)."""
    autoscale_window: float = 300.0
    """Load must stay over (under) its threshold this long before a scale up (down), seconds."""
    autoscale_cooldown: float = 600.0
    """Least time between two decisions for one node type and region, seconds."""
    autoscale_up_connections: float = 5000.0
    """Scale up above this many open connections per active node (0: not used)."""
    autoscale_down_connections: float = 1000.0
    """Scale down below this many open connections per active node."""
    autoscale_up_rps: float = 0.0
    """Scale up above this many requests per second per active node (0: not used)."""
    autoscale_down_rps: float = 0.0
    """Scale down only while requests per second per active node are below this (0: not used)."""
    autoscale_bounds: tuple[str, ...] = ()
    """Active nodes allowed per group, comma separated ``type[:region]=min-max`` (``core:cn=1-4,
    edge=2-20``); groups not listed: 1-1000. A group below its minimum activates at once."""
    autoscale_drain_time: float = 300.0
    """Longest wait for a draining node's connections to reach zero before it goes to standby."""
    autoscale_release: str | None = None
    """Relay release the activation deployment installs (None: the playbook's default)."""

    def __post_init__(self) -> None:
        if self.password_memory_kib < 8 * self.password_parallelism:
            raise SettingsError(
                f"{ENV_PREFIX}PASSWORD_MEMORY_KIB: Argon2 needs at least 8 KiB per lane "
                f"({8 * self.password_parallelism} for {ENV_PREFIX}PASSWORD_PARALLELISM="
                f"{self.password_parallelism})"
            )
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise SettingsError(
                f"{ENV_PREFIX}GRPC_TLS_CERT_FILE and {ENV_PREFIX}GRPC_TLS_KEY_FILE go together"
            )
        if (self.http_tls_cert_file is None) != (self.http_tls_key_file is None):
            raise SettingsError(
                f"{ENV_PREFIX}HTTP_TLS_CERT_FILE and {ENV_PREFIX}HTTP_TLS_KEY_FILE go together"
            )
        if self.grpc_tls_client_ca_file is not None and self.grpc_tls_cert_file is None:
            raise SettingsError(
                f"{ENV_PREFIX}GRPC_TLS_CLIENT_CA_FILE needs {ENV_PREFIX}GRPC_TLS_CERT_FILE"
            )
        if self.leader_renew_interval * 2 > self.leader_ttl:
            raise SettingsError(
                f"{ENV_PREFIX}LEADER_RENEW_INTERVAL: {self.leader_renew_interval:g}s must be at "
                f"most half of {ENV_PREFIX}LEADER_TTL ({self.leader_ttl:g}s)"
            )

    @property
    def offline_after(self) -> float:
        """Seconds without a heartbeat after which a node counts as offline."""
        return self.heartbeat_interval * self.offline_after_missed

    @property
    def embedded(self) -> bool:
        """True when the master runs its own store (no ``mongo_uri``)."""
        return self.mongo_uri is None

    # ------------------------------------------------------------------------------------------
    # Alternative constructors

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, config_file: str | None = None
    ) -> Settings:
        """Settings from an optional TOML file (``config_file`` or ``$AICDN_CONFIG``) and env.

        Raises :class:`SettingsError` naming the first bad variable or file key.
        """
        env = os.environ if environ is None else environ
        path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
        values: dict[str, object] = {}
        if path:
            values.update(_read_toml(path))
        known = {f.name for f in fields(cls)}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key in _FOREIGN_ENV:
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name in known:
                values[name] = raw
        return cls.from_mapping(values, source="env")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], source: str = "settings") -> Settings:
        """Settings from field names to raw values (strings from env, or native TOML types).

        Unknown keys are refused: a typo must not silently fall back to a default.
        """
        known = {f.name for f in fields(cls)}
        parsed: dict[str, Any] = {}
        for name, raw in values.items():
            if name not in known:
                raise SettingsError(f"{source}: unknown setting {name!r}")
            label = f"{ENV_PREFIX}{name.upper()}"
            try:
                parsed[name] = _PARSERS[name](raw)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{label}: {exc}") from None
        return cls(**parsed)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (values already typed); used by tests and the CLI."""
        return replace(self, **changes)


def _read_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as stream:
            return dict(tomllib.load(stream))
    except OSError as exc:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: {path!r} is not valid TOML: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Strict value parsers: each takes a raw value (an env string or a TOML value) and returns the
# typed value or raises ValueError/TypeError with a message that completes "AICDN_X: ...".


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"expected a string, got {type(raw).__name__}")
    return raw.strip()


def _optional(parse: Callable[[object], _T]) -> Callable[[object], _T | None]:
    def parse_optional(raw: object) -> _T | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return parse(raw)

    return parse_optional


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse_int(raw: object) -> int:
        if isinstance(raw, bool):
            raise TypeError("expected an integer, got a boolean")
        if isinstance(raw, int):
            value = raw
        else:
            text = _text(raw)
            if not re.fullmatch(r"[+-]?[0-9]+", text):
                raise ValueError(f"expected an integer, got {text!r}")
            value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return parse_int


def _number(low: float, high: float) -> Callable[[object], float]:
    def parse_number(raw: object) -> float:
        if isinstance(raw, bool):
            raise TypeError("expected a number, got a boolean")
        if isinstance(raw, int | float):
            value = float(raw)
        else:
            text = _text(raw)
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
        if math.isnan(value) or not low <= value <= high:
            raise ValueError(f"{value:g} is out of range {low:g}-{high:g}")
        return value

    return parse_number


def _duration(low: float, high: float) -> Callable[[object], float]:
    def parse(raw: object) -> float:
        value = parse_duration(raw.strip() if isinstance(raw, str) else raw)
        if not low <= value <= high:
            raise ValueError(f"duration {value:g}s is out of range {low:g}s-{high:g}s")
        return value

    return parse


def _listen_address(raw: object) -> Address:
    return parse_address(_text(raw), listen=True)


def _cidrs(raw: object) -> tuple[IPNetwork, ...]:
    items: list[object]
    if isinstance(raw, list | tuple):
        items = list(raw)
    else:
        items = [part for part in _text(raw).split(",") if part.strip()]
    networks: list[IPNetwork] = []
    for item in items:
        text = _text(item)
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"bad CIDR {text!r}; expected e.g. 10.0.0.0/8 or ::1/128") from None
    if not networks:
        raise ValueError("no CIDR given; the management API would refuse everyone")
    return tuple(networks)


def _mongo_uri(raw: object) -> str:
    text = _text(raw)
    parts = urlsplit(text)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise ValueError(f"expected mongodb://host:port[/...], got {text!r}")
    return text


def _db_name(raw: object) -> str:
    text = _text(raw)
    if not _DB_NAME_RE.fullmatch(text):
        raise ValueError(f"bad database name {text!r}; expected [A-Za-z_][A-Za-z0-9_]*")
    return text


def _secret(raw: object) -> str:
    text = _text(raw)
    if len(text) < 32:
        raise ValueError(f"too short ({len(text)} characters); use at least 32 random characters")
    return text


def _http_url(raw: object) -> str:
    text = _text(raw)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        text = _text(raw).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _boolean(raw: object) -> bool:
    """true/false, yes/no, on/off, 1/0 (a TOML bool as is); anything else is an error."""
    if isinstance(raw, bool):
        return raw
    text = _text(raw).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_BOUND_RE = re.compile(r"(edge|core)(?::([A-Za-z0-9_.-]+))?=(\d+)-(\d+)")


def _scale_bounds(raw: object) -> tuple[str, ...]:
    """``type[:region]=min-max`` items (comma separated), min <= max."""
    items = list(raw) if isinstance(raw, list | tuple) else _text(raw).split(",")
    bounds = tuple(_text(item) for item in items if _text(item))
    for bound in bounds:
        match = _BOUND_RE.fullmatch(bound)
        if match is None:
            raise ValueError(f"bad bound {bound!r}; expected e.g. core:cn=1-4 or edge=2-20")
        if int(match.group(3)) > int(match.group(4)):
            raise ValueError(f"bound {bound!r}: the minimum is above the maximum")
    return bounds


def _names(raw: object) -> tuple[str, ...]:
    items = list(raw) if isinstance(raw, list | tuple) else _text(raw).split(",")
    names = tuple(_text(item) for item in items if _text(item))
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", name):
            raise ValueError(f"bad name {name!r}; expected e.g. ssh,local")
    if not names:
        raise ValueError("give at least one name")
    return names


def _path(raw: object) -> str:
    text = _text(raw)
    if not text:
        raise ValueError("expected a path, got an empty string")
    return text


_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # api.common.REGION_PATTERN


def _dns_name(raw: object) -> str:
    text = _text(raw).lower().rstrip(".")
    if not _HOSTNAME_RE.fullmatch(text):
        raise ValueError(f"bad DNS name {text!r}; expected e.g. api.cdn.example.com")
    return text


def _dns_names(raw: object) -> tuple[str, ...]:
    items = list(raw) if isinstance(raw, list | tuple) else _text(raw).split(",")
    return tuple(_dns_name(item) for item in items if _text(item))


def _region(raw: object) -> str:
    text = _text(raw).lower()
    if not _REGION_RE.fullmatch(text):
        raise ValueError(f"bad region {text!r}; expected e.g. hk, us, sg")
    return text


def _region_lists(
    item: Callable[[object], str],
) -> Callable[[object], tuple[tuple[str, tuple[str, ...]], ...]]:
    """``"hk=HK,MO;sg=SG"`` (or a TOML table of lists) -> ((region, (item, ...)), ...)."""

    def parse(raw: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
        entries: list[tuple[object, object]]
        if isinstance(raw, Mapping):
            entries = list(raw.items())
        else:
            entries = []
            for part in _text(raw).split(";"):
                if not part.strip():
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"bad entry {part.strip()!r}; expected region=A,B,...")
                entries.append((key, value))
        out: list[tuple[str, tuple[str, ...]]] = []
        for region, listed in entries:
            values: list[object] = (
                list(listed) if isinstance(listed, list | tuple) else list(_text(listed).split(","))
            )
            out.append((_region(region), tuple(item(v) for v in values if _text(v))))
        return tuple(out)

    return parse


def _country(raw: object) -> str:
    text = _text(raw).upper()
    if not re.fullmatch(r"[A-Z]{2}", text):
        raise ValueError(f"bad country code {text!r}; expected ISO 3166 alpha-2, e.g. HK")
    return text


_PARSERS: dict[str, Callable[[object], Any]] = {
    "mongo_uri": _optional(_mongo_uri),
    "mongo_db": _db_name,
    "mongo_timeout": _duration(0.05, 60.0),
    "data_dir": _path,
    "embedded_mongo_port": _integer(1, 65535),
    "http_addr": _listen_address,
    "grpc_addr": _listen_address,
    "grpc_tls_cert_file": _optional(_path),
    "grpc_tls_key_file": _optional(_path),
    "grpc_tls_client_ca_file": _optional(_path),
    "grpc_keepalive_time": _duration(1.0, 3600.0),
    "grpc_keepalive_timeout": _duration(0.5, 600.0),
    "grpc_threads": _integer(1, 256),
    "command_timeout": _duration(0.1, 300.0),
    "agent_snapshot_ttl": _duration(0.0, 60.0),
    "agent_auth_ttl": _duration(0.0, 3600.0),
    "http_threads": _integer(1, 256),
    "jwt_secret": _optional(_secret),
    "access_token_ttl": _duration(10.0, 86400.0),
    "refresh_token_ttl": _duration(60.0, 90 * 86400.0),
    "admin_allow": _cidrs,
    "login_window": _duration(1.0, 86400.0),
    "login_max_per_ip": _integer(1, 1_000_000),
    "login_max_per_user": _integer(1, 1_000_000),
    "password_time_cost": _integer(1, 100),
    "password_memory_kib": _integer(8, 4 * 1024 * 1024),
    "password_parallelism": _integer(1, 64),
    "leader_ttl": _duration(0.5, 3600.0),
    "leader_renew_interval": _duration(0.1, 1800.0),
    "heartbeat_interval": _duration(0.1, 3600.0),
    "offline_after_missed": _integer(1, 1000),
    "alert_p99_latency_ms": _number(0.0, 1e9),
    "alert_error_rate": _number(0.0, 1.0),
    "alert_connection_ratio": _number(0.0, 1.0),
    "alert_webhook": _optional(_http_url),
    "webhook_timeout": _duration(0.1, 120.0),
    "node_base_dir": _path,
    "ansible_playbook_dir": _path,
    "ansible_config": _path,
    "deploy_work_dir": _optional(_path),
    "deploy_connections": _names,
    "deploy_idle_timeout": _duration(1.0, 7 * 86400.0),
    "deploy_job_timeout": _duration(1.0, 7 * 86400.0),
    "deploy_max_parallel": _integer(1, 64),
    "deploy_poll_interval": _duration(0.05, 300.0),
    "deploy_event_batch": _integer(1, 10_000),
    "deploy_event_flush": _duration(0.01, 60.0),
    "deploy_stream_max": _duration(1.0, 86400.0),
    "max_body_bytes": _integer(1024, 1024 * 1024 * 1024),
    "log_level": _choice("debug", "info", "warning", "error"),
    "dns_addr": _listen_address,
    "dns_zone": _dns_name,
    "dns_hostnames": _dns_names,
    "dns_ttl": _integer(0, 86400),
    "dns_refresh": _duration(0.05, 60.0),
    "dns_max_answers": _integer(1, 16),
    "dns_missed_heartbeats": _integer(1, 1000),
    "dns_default_region": _region,
    "dns_regions": _region_lists(_country),
    "dns_region_fallback": _region_lists(_region),
    "dns_nameservers": _dns_names,
    "dns_metrics_addr": _optional(_listen_address),
    "ui_dir": _path,
    "http_tls_cert_file": _optional(_path),
    "http_tls_key_file": _optional(_path),
    "http_trusted_proxy": _optional(_text),
    "failover_enabled": _boolean,
    "failover_node_types": _names,
    "failover_hold_down": _duration(0.0, 86400.0),
    "failover_min_interval": _duration(0.0, 86400.0),
    "failover_recover_ratio": _number(0.0, 1.0),
    "autoscale_enabled": _boolean,
    "autoscale_window": _duration(0.0, 86400.0),
    "autoscale_cooldown": _duration(0.0, 86400.0),
    "autoscale_up_connections": _number(0.0, 1e9),
    "autoscale_down_connections": _number(0.0, 1e9),
    "autoscale_up_rps": _number(0.0, 1e9),
    "autoscale_down_rps": _number(0.0, 1e9),
    "autoscale_bounds": _scale_bounds,
    "autoscale_drain_time": _duration(0.0, 86400.0),
    "autoscale_release": _optional(_text),
}
