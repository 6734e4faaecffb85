"""Builds one entry of each policy section: ``admissions``, ``shields``, ``ccs`` and the
connection and rate limiters (``climiters``, ``rlimiters``)."""

from __future__ import annotations

from relay.config.model import AdmissionConfig, CCConfig, LimiterConfig, ShieldConfig
from relay.config.readers import (
    _bool,
    _choice,
    _Ctx,
    _duration,
    _int,
    _ip_or_cidr_list,
    _key,
    _list,
    _mapping,
    _required_str,
)
from relay.config.schema import (
    ADMISSION_KEYS,
    CC_KEYS,
    LIMITER_KEYS,
    SHIELD_ALGORITHMS,
    SHIELD_KEYS,
)
from relay.config.values import _kind, parse_limit_line


def _admission(ctx: _Ctx, raw: object, path: str, index: int) -> AdmissionConfig:
    d = _mapping(ctx, raw, path, ADMISSION_KEYS)
    return AdmissionConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        whitelist=_bool(ctx, d.get("whitelist"), _key(path, "whitelist"), False),
        matchers=_ip_or_cidr_list(ctx, d.get("matchers"), _key(path, "matchers")),
    )


def _shield(ctx: _Ctx, raw: object, path: str, index: int) -> ShieldConfig:
    d = _mapping(ctx, raw, path, SHIELD_KEYS)
    default = ShieldConfig(name="")
    algorithm = _choice(
        ctx,
        d.get("algorithm"),
        _key(path, "algorithm"),
        SHIELD_ALGORITHMS,
        default.algorithm,
        "algorithm",
    )
    return ShieldConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        window=_duration(ctx, d.get("window"), _key(path, "window"), default.window, positive=True),
        max_requests=_int(
            ctx, d.get("maxRequests"), _key(path, "maxRequests"), default.max_requests, 1
        ),
        block_duration=_duration(
            ctx, d.get("blockDuration"), _key(path, "blockDuration"), default.block_duration
        ),
        algorithm="token_bucket" if algorithm == "token_bucket" else "sliding_window",
        whitelist=_ip_or_cidr_list(ctx, d.get("whitelist"), _key(path, "whitelist")),
        blacklist=_ip_or_cidr_list(ctx, d.get("blacklist"), _key(path, "blacklist")),
        strict=_bool(ctx, d.get("strict"), _key(path, "strict"), default.strict),
    )


def _cc(ctx: _Ctx, raw: object, path: str, index: int) -> CCConfig:
    d = _mapping(ctx, raw, path, CC_KEYS)
    default = CCConfig(name="")
    return CCConfig(
        name=_required_str(ctx, d.get("name"), _key(path, "name")),
        rate_limit=_int(ctx, d.get("rateLimit"), _key(path, "rateLimit"), default.rate_limit, 1),
        burst_size=_int(ctx, d.get("burstSize"), _key(path, "burstSize"), default.burst_size, 1),
        block_duration=_duration(
            ctx, d.get("blockDuration"), _key(path, "blockDuration"), default.block_duration
        ),
        check_interval=_duration(
            ctx,
            d.get("checkInterval"),
            _key(path, "checkInterval"),
            default.check_interval,
            positive=True,
        ),
    )


def _limiter(ctx: _Ctx, raw: object, path: str, index: int) -> LimiterConfig:
    d = _mapping(ctx, raw, path, LIMITER_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    limits_path = _key(path, "limits")
    limits: list[str] = []
    for line_index, line in enumerate(_list(ctx, d.get("limits"), limits_path)):
        line_path = f"{limits_path}[{line_index}]"
        if not isinstance(line, str):
            ctx.error(line_path, f"expected a string like '$$ 10', got {_kind(line)}")
            continue
        try:
            limits.append(parse_limit_line(line))
        except ValueError as exc:
            ctx.error(line_path, str(exc))
    return LimiterConfig(name=name, limits=tuple(limits))
