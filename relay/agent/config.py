"""``agent.yaml``: the agent's settings (DESIGN §5), one frozen object loaded strictly.

::

    masters: ["master-1.example:50051", "master-2.example:50051"]   # tried in order
    node_id: 5f0c...                  # from POST /api/v1/nodes
    token: "..."                      # the node's agent token (shown once at creation)
    relay_config: /opt/aicdn/current/relay.yaml
    relay_api: 127.0.0.1:18080        # default: the relay config's api.addr
    relay_api_token: "..."            # default: the relay config's api.auth.token
    heartbeat_interval: 10s
    tls: {ca_file: /etc/aicdn/tls/ca.pem}    # present: gRPC over TLS (cert_file/key_file: mTLS)

Unknown keys and malformed values are refused with every problem named by its path
(``heartbeat_interval: duration '-1s' is negative``), as the relay's own checker does: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import yaml

from relay.config import Address, ConfigError, ConfigIssue, parse_address, parse_duration

__all__ = ["SERVICE_MANAGERS", "AgentConfig", "AgentTLS", "ServiceManager", "load_agent_config"]

ServiceManager = Literal["auto", "systemd", "none"]
SERVICE_MANAGERS: Final = ("auto", "systemd", "none")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AgentTLS:
    """TLS towards the masters. Paths are resolved against agent.yaml's directory."""

    ca_file: str | None = None
    """CA bundle the masters' certificates are verified against (None: the system roots)."""
    cert_file: str | None = None
    """Client certificate (mutual TLS), with ``key_file``."""
    key_file: str | None = None
    server_name: str | None = None
    """Name the master certificates must carry (default: the host of each master address)."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``aicdn-relay agent`` reads from its config file."""

    masters: tuple[Address, ...]
    """gRPC addresses of the masters, tried in order (fail-over moves to the next one)."""
    node_id: str
    """The node's id on the master."""
    token: str
    """The node's agent token; sent as ``authorization: Bearer`` metadata."""
    relay_config: str
    """Path of the relay's config file: pushed versions are written here (atomically; the
    previous one is kept as ``<file>.previous``)."""
    relay_api: Address | None = None
    """The relay's admin API (``/healthz``, ``/reload``). None: the relay config's
    ``api.addr``."""
    relay_api_token: str | None = None
    """Bearer token of the admin API. None: the relay config's ``api.auth.token``."""
    heartbeat_interval: float = 10.0
    """Seconds between heartbeats (default 10 s)."""
    tls: AgentTLS | None = None
    """TLS towards the masters; None: plaintext (loopback or a trusted network only)."""
    service_manager: ServiceManager = "auto"
    """How ``restart``/``stop``/``logs`` reach the relay's service: ``systemd``, ``none`` (admin
    API and ``relay_log_file`` only) or ``auto`` (systemd when the host runs it)."""
    relay_service: str = "aicdn-relay"
    """The relay's systemd unit."""
    relay_log_file: str | None = None
    """Log file that ``logs`` tails when systemd's journal is not used."""
    rpc_timeout: float = 10.0
    """Deadline of one unary call to a master, seconds."""
    health_timeout: float = 10.0
    """How long a reloaded relay has to report the new version on ``/healthz``, seconds."""
    reconnect_initial: float = 0.5
    """First reconnect delay after a master failed, seconds; doubles up to ``reconnect_max``."""
    reconnect_max: float = 30.0
    retry_failed_after: float = 300.0
    """A version that failed on this node is tried again after this long, not on every
    heartbeat (which would churn the relay and make the master render it each time)."""
    base_dir: str = "."
    """Directory of agent.yaml; relative paths in it were resolved against this."""


def load_agent_config(path: str) -> AgentConfig:
    """Read and validate the agent's YAML file.

    Raises :class:`relay.config.ConfigError` listing every problem (paths name the fields; an
    unreadable file or bad YAML is one issue whose path is the file name).
    """
    try:
        with open(path, encoding="utf-8-sig") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError.single(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError.single(path, f"not valid YAML: {exc}") from None
    return agent_config_from_mapping(data, os.path.dirname(os.path.abspath(path)))


class _Reader:
    """Collects issues while values are read from the mapping."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix
        self.issues: list[ConfigIssue] = []

    def get(self, key: str, parse: Callable[[Any], _T], default: _T, required: bool = False) -> _T:
        if key not in self.data or self.data[key] is None:
            if required:
                self.issues.append(ConfigIssue(self.prefix + key, "required"))
            return default
        try:
            return parse(self.data[key])
        except (TypeError, ValueError) as exc:
            self.issues.append(ConfigIssue(self.prefix + key, str(exc)))
            return default

    def unknown(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                self.issues.append(ConfigIssue(self.prefix + str(key), "unknown key"))


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}"[:200])
    return value.strip()


def _masters(value: Any) -> tuple[Address, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of host:port addresses")
    return tuple(parse_address(_text(item)) for item in value)


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"duration {seconds:g}s is out of range {low:g}s-{high:g}s")
        return seconds

    return parse


def _manager(value: Any) -> ServiceManager:
    if value == "auto":
        return "auto"
    if value == "systemd":
        return "systemd"
    if value == "none":
        return "none"
    raise ValueError(f"expected one of {', '.join(SERVICE_MANAGERS)}, got {value!r}")


def _tls(value: Any, base_dir: str, issues: list[ConfigIssue]) -> AgentTLS | None:
    if value is None or value is False:
        return None
    if value is True:
        return AgentTLS()
    if not isinstance(value, dict):
        issues.append(ConfigIssue("tls", "expected a mapping (ca_file, cert_file, ...)"))
        return None
    reader = _Reader(value, "tls.")
    reader.unknown({"ca_file", "cert_file", "key_file", "server_name"})
    files = {key: reader.get(key, _text, None) for key in ("ca_file", "cert_file", "key_file")}
    for key, file_path in files.items():
        if file_path is not None:
            full = _resolve(base_dir, file_path)
            if not os.path.isfile(full):
                reader.issues.append(ConfigIssue(f"tls.{key}", f"no such file {full!r}"))
            files[key] = full
    if (files["cert_file"] is None) != (files["key_file"] is None):
        reader.issues.append(ConfigIssue("tls", "cert_file and key_file go together"))
    issues.extend(reader.issues)
    return AgentTLS(
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        server_name=reader.get("server_name", _text, None),
    )


def _resolve(base_dir: str, path: str) -> str:
    if not path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


_KNOWN = {
    "masters", "node_id", "token", "relay_config", "relay_api", "relay_api_token",
    "heartbeat_interval", "tls", "service_manager", "relay_service", "relay_log_file",
    "rpc_timeout", "health_timeout", "reconnect_initial", "reconnect_max", "retry_failed_after",
}  # fmt: skip


def agent_config_from_mapping(data: object, base_dir: str = ".") -> AgentConfig:
    """Validate parsed agent.yaml data; relative paths resolve against ``base_dir``.

    Raises :class:`relay.config.ConfigError` listing every problem.
    """
    if not isinstance(data, dict):
        raise ConfigError.single("<agent.yaml>", "expected a mapping of settings")
    read = _Reader(data)
    read.unknown(_KNOWN)
    no_masters: tuple[Address, ...] = ()
    masters = read.get("masters", _masters, no_masters, required=True)
    node_id = read.get("node_id", _text, "", required=True)
    token = read.get("token", _text, "", required=True)
    relay_config = _resolve(base_dir, read.get("relay_config", _text, "", required=True))
    relay_api = read.get("relay_api", lambda v: parse_address(_text(v)), None)
    log_file = read.get("relay_log_file", _text, None)
    relay_log_file = None if log_file is None else _resolve(base_dir, log_file)
    config = AgentConfig(
        masters=masters,
        node_id=node_id,
        token=token,
        relay_config=relay_config,
        relay_api=relay_api,
        relay_api_token=read.get("relay_api_token", _text, None),
        heartbeat_interval=read.get("heartbeat_interval", _seconds(0.05, 3600.0), 10.0),
        tls=_tls(data.get("tls"), base_dir, read.issues),
        service_manager=read.get("service_manager", _manager, "auto"),
        relay_service=read.get("relay_service", _text, "aicdn-relay"),
        relay_log_file=relay_log_file,
        rpc_timeout=read.get("rpc_timeout", _seconds(0.1, 300.0), 10.0),
        health_timeout=read.get("health_timeout", _seconds(0.1, 300.0), 10.0),
        reconnect_initial=read.get("reconnect_initial", _seconds(0.01, 60.0), 0.5),
        reconnect_max=read.get("reconnect_max", _seconds(0.01, 3600.0), 30.0),
        retry_failed_after=read.get("retry_failed_after", _seconds(0.0, 86400.0), 300.0),
        base_dir=base_dir,
    )
    if config.reconnect_max < config.reconnect_initial:
        read.issues.append(ConfigIssue("reconnect_max", "must be at least reconnect_initial"))
    if read.issues:
        raise ConfigError(read.issues)
    return config
