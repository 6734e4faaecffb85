"""Sections used in several places of the file: ``tls``, ``auth``, ``selector``, ``probe``."""

from __future__ import annotations

import os
from typing import cast

from relay.config.model import STRATEGIES, Auth, ProbeConfig, SelectorConfig, Strategy, TLSConfig
from relay.config.readers import (
    _bool,
    _choice,
    _Ctx,
    _duration,
    _int,
    _key,
    _opt_str,
    _required_str,
    _section,
    _str,
    _url_path,
)
from relay.config.schema import AUTH_KEYS, PROBE_KEYS, PROBE_TYPES, SELECTOR_KEYS, TLS_KEYS


def _tls(ctx: _Ctx, value: object, path: str) -> TLSConfig | None:
    d = _section(ctx, value, path, TLS_KEYS)
    if d is None:
        return None
    files = {
        key: _opt_str(ctx, d.get(key), _key(path, key)) for key in ("certFile", "keyFile", "caFile")
    }
    for key, file_path in files.items():
        if file_path is not None:
            _check_file(ctx, file_path, _key(path, key))
    cert, key_file = files["certFile"], files["keyFile"]
    if cert and not key_file:
        ctx.error(_key(path, "keyFile"), "required when certFile is set")
    if key_file and not cert:
        ctx.error(_key(path, "certFile"), "required when keyFile is set")
    _bool(ctx, d.get("secure"), _key(path, "secure"), True)  # see TLS_KEYS: accepted, ignored
    return TLSConfig(
        cert_file=cert,
        key_file=key_file,
        ca_file=files["caFile"],
        server_name=_opt_str(ctx, d.get("serverName"), _key(path, "serverName")),
        insecure_skip_verify=_bool(
            ctx, d.get("insecureSkipVerify"), _key(path, "insecureSkipVerify"), False
        ),
    )


def _check_file(ctx: _Ctx, file_path: str, path: str) -> None:
    if not ctx.check_files:
        return
    resolved = os.path.join(ctx.base_dir, file_path)  # absolute paths stay as they are
    if not os.path.isfile(resolved):
        ctx.error(path, f"file not found: {resolved}")


def _auth(ctx: _Ctx, value: object, path: str) -> Auth | None:
    d = _section(ctx, value, path, AUTH_KEYS)
    if d is None:
        return None
    username = _required_str(ctx, d.get("username"), _key(path, "username"))
    password = _str(ctx, d.get("password"), _key(path, "password"), "")
    return Auth(username, password)


def _selector(ctx: _Ctx, value: object, path: str) -> SelectorConfig:
    default = SelectorConfig()
    d = _section(ctx, value, path, SELECTOR_KEYS)
    if d is None:
        return default
    strategy = _choice(
        ctx, d.get("strategy"), _key(path, "strategy"), STRATEGIES, default.strategy, "strategy"
    )
    return SelectorConfig(
        strategy=cast(Strategy, strategy or default.strategy),
        max_fails=_int(ctx, d.get("maxFails"), _key(path, "maxFails"), default.max_fails, 1),
        fail_timeout=_duration(
            ctx, d.get("failTimeout"), _key(path, "failTimeout"), default.fail_timeout
        ),
    )


def _probe(ctx: _Ctx, value: object, path: str) -> ProbeConfig | None:
    d = _section(ctx, value, path, PROBE_KEYS)
    if d is None:
        return None
    default = ProbeConfig()
    probe_type = _choice(ctx, d.get("type"), _key(path, "type"), PROBE_TYPES, default.type, "probe")
    return ProbeConfig(
        type="http" if probe_type == "http" else "tcp",
        interval=_duration(
            ctx, d.get("interval"), _key(path, "interval"), default.interval, positive=True
        ),
        timeout=_duration(
            ctx, d.get("timeout"), _key(path, "timeout"), default.timeout, positive=True
        ),
        path=_url_path(ctx, d.get("path"), _key(path, "path"), default.path),
    )
