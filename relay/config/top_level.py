"""The document as a whole: the small top-level sections (``log``, ``api``, ``metrics``,
``workers``) and the assembly of every section into one ``RelayConfig``, or a ``ConfigError``
listing every issue found."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from relay.config.chains import _chain
from relay.config.checks import (
    _check_ports,
    _check_quic_listener,
    _check_service_tls,
    _defined_names,
    _listening_sockets,
    _Named,
    _unique,
)
from relay.config.errors import ConfigError
from relay.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    AccessLogConfig,
    APIConfig,
    LogConfig,
    MetricsConfig,
    RelayConfig,
    TLSConfig,
)
from relay.config.policies import _admission, _cc, _limiter, _shield
from relay.config.readers import (
    _NO_ADDRESS,
    _address,
    _choice,
    _Ctx,
    _duration,
    _int,
    _items,
    _key,
    _mapping,
    _opt_str,
    _required_str,
    _section,
    _url_path,
)
from relay.config.schema import (
    ACCESS_LOG_KEYS,
    API_AUTH_KEYS,
    API_KEYS,
    LOG_KEYS,
    METRICS_KEYS,
    POLICY_SECTIONS,
    TOP_KEYS,
)
from relay.config.services import _service
from relay.config.shared_sections import _tls
from relay.config.values import _kind, _show

_T = TypeVar("_T")
_NamedT = TypeVar("_NamedT", bound=_Named)


def _log(ctx: _Ctx, value: object, path: str) -> LogConfig:
    default = LogConfig()
    d = _section(ctx, value, path, LOG_KEYS)
    if d is None:
        return default
    level = _choice(
        ctx, d.get("level"), _key(path, "level"), LOG_LEVELS, default.level, "log level"
    )
    fmt = _choice(
        ctx, d.get("format"), _key(path, "format"), LOG_FORMATS, default.format, "log format"
    )
    return LogConfig(level=level or default.level, format=fmt or default.format)


def _api(ctx: _Ctx, value: object, path: str) -> APIConfig | None:
    d = _section(ctx, value, path, API_KEYS)
    if d is None:
        return None
    token = None
    auth_path = _key(path, "auth")
    auth = _section(ctx, d.get("auth"), auth_path, API_AUTH_KEYS)
    if auth is not None:
        token = _opt_str(ctx, auth.get("token"), _key(auth_path, "token"))
    return APIConfig(
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=True),
        token=token,
        tls=_endpoint_tls(ctx, d.get("tls"), _key(path, "tls")),
    )


def _endpoint_tls(ctx: _Ctx, value: object, path: str) -> TLSConfig | None:
    """The ``tls`` of the admin API or metrics endpoint: a server side, so it needs both a
    certificate and its key."""
    tls = _tls(ctx, value, path)
    if tls is not None and tls.cert_file is None and tls.key_file is None:
        ctx.error(path, "an endpoint served over TLS needs certFile and keyFile")
    return tls


def _metrics(ctx: _Ctx, value: object, path: str) -> MetricsConfig | None:
    d = _section(ctx, value, path, METRICS_KEYS)
    if d is None:
        return None
    return MetricsConfig(
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=True),
        path=_url_path(ctx, d.get("path"), _key(path, "path"), MetricsConfig(_NO_ADDRESS).path),
        tls=_endpoint_tls(ctx, d.get("tls"), _key(path, "tls")),
    )


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
}  # fmt: skip
#: The smallest ``accessLog.maxSize``: rotating more often than this is a typo.
_MIN_LOG_SIZE = 4096


def _size(ctx: _Ctx, value: object, path: str, default: int, minimum: int) -> int:
    """Bytes from an integer or a string with a unit (``100MB``, ``64MiB``, ``512k``)."""
    if value is None:
        return default
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits) :]
        if not digits.isdigit() or unit not in _SIZE_UNITS:
            ctx.error(
                path, f"expected a size like 100MB, 64MiB or a byte count, got {_show(value)}"
            )
            return default
        value = int(digits) * _SIZE_UNITS[unit]
    return _int(ctx, value, path, default, minimum)


def _access_log(ctx: _Ctx, value: object, path: str) -> AccessLogConfig | None:
    d = _section(ctx, value, path, ACCESS_LOG_KEYS)
    if d is None:
        return None
    default = AccessLogConfig(file="")
    file = _required_str(ctx, d.get("file"), _key(path, "file"))
    return AccessLogConfig(
        file=file,
        max_size=_size(
            ctx, d.get("maxSize"), _key(path, "maxSize"), default.max_size, _MIN_LOG_SIZE
        ),
        max_backups=_int(
            ctx, d.get("maxBackups"), _key(path, "maxBackups"), default.max_backups, 0
        ),
        rate_per_second=_int(
            ctx, d.get("ratePerSecond"), _key(path, "ratePerSecond"), default.rate_per_second, 1
        ),
    )


def _workers(ctx: _Ctx, value: object, path: str) -> int:
    default = RelayConfig().workers
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):
        ctx.error(path, f"expected an integer >= 1 or 'auto', got {_show(value)}")
        return default
    return _int(ctx, value, path, default, 1)


def _build(data: object, base_dir: str, root: str, *, check_files: bool = True) -> RelayConfig:
    ctx = _Ctx(base_dir=base_dir, root=root, check_files=check_files)
    if not isinstance(data, dict):
        ctx.error(
            root,
            f"the config must be a mapping of sections (services, chains, ...), got {_kind(data)}",
        )
        raise ConfigError(ctx.issues)
    top = _mapping(ctx, data, "", TOP_KEYS)
    ctx.names = {
        section: _defined_names(top.get(section))
        for section in ("chains", *POLICY_SECTIONS.values())
    }
    config = _build_top(ctx, top)
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return config


def _build_top(ctx: _Ctx, top: dict[str, object]) -> RelayConfig:
    default = RelayConfig()
    tls = _tls(ctx, top.get("tls"), "tls")
    api = _api(ctx, top.get("api"), "api")
    metrics = _metrics(ctx, top.get("metrics"), "metrics")
    if top.get("services") is None or top.get("services") == []:
        ctx.error("services", "no services defined; a relay needs at least one")
    services = _named(ctx, top, "services", _service, "service")
    for path, service in services:
        _check_service_tls(ctx, path, service, tls)
        _check_quic_listener(ctx, path, service, tls)
    _check_ports(ctx, _listening_sockets(services, api, metrics))
    return RelayConfig(
        services=tuple(service for _, service in services),
        chains=_values(_named(ctx, top, "chains", _chain, "chain")),
        log=_log(ctx, top.get("log"), "log"),
        api=api,
        metrics=metrics,
        tls=tls,
        admissions=_values(_named(ctx, top, "admissions", _admission, "admission")),
        shields=_values(_named(ctx, top, "shields", _shield, "shield")),
        ccs=_values(_named(ctx, top, "ccs", _cc, "cc")),
        climiters=_values(_named(ctx, top, "climiters", _limiter, "climiter")),
        rlimiters=_values(_named(ctx, top, "rlimiters", _limiter, "rlimiter")),
        workers=_workers(ctx, top.get("workers"), "workers"),
        shutdown_timeout=_duration(
            ctx, top.get("shutdownTimeout"), "shutdownTimeout", default.shutdown_timeout
        ),
        version=_int(ctx, top.get("version"), "version", default.version, 0),
        base_dir=ctx.base_dir,
        access_log=_access_log(ctx, top.get("accessLog"), "accessLog"),
    )


def _named(
    ctx: _Ctx,
    top: dict[str, object],
    section: str,
    parse: Callable[[_Ctx, object, str, int], _NamedT],
    what: str,
) -> list[tuple[str, _NamedT]]:
    """A top-level list of named items, parsed, with duplicate names reported."""
    items = _items(ctx, top.get(section), section, parse)
    _unique(ctx, items, what)
    return items


def _values(items: list[tuple[str, _T]]) -> tuple[_T, ...]:
    return tuple(item for _, item in items)
