"""Builds one entry of ``services``: its listener, handler (with http options), forwarder and
the policies it names."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from relay.config.checks import _ref, _unique
from relay.config.model import (
    HANDLER_TYPES,
    LISTENER_TYPES,
    ForwarderConfig,
    HandlerConfig,
    HandlerType,
    HTTPHandlerOptions,
    ListenerConfig,
    ListenerType,
    NodeConfig,
    ServiceConfig,
)
from relay.config.readers import (
    _address,
    _choice,
    _Ctx,
    _duration,
    _int,
    _ip_or_cidr_list,
    _items,
    _key,
    _mapping,
    _metadata,
    _nonempty,
    _opt_str,
    _required_str,
    _section,
    _take,
    _url_path,
)
from relay.config.resume_options import RESUME_KEYS, resume_options
from relay.config.schema import (
    FORWARDER_KEYS,
    HANDLER_KEYS,
    LISTENER_KEYS,
    POLICY_SECTIONS,
    SERVICE_KEYS,
    TARGET_NODE_KEYS,
)
from relay.config.shared_sections import _auth, _probe, _selector, _tls
from relay.config.values import _show


def _service(ctx: _Ctx, raw: object, path: str, index: int) -> ServiceConfig:
    d = _mapping(ctx, raw, path, SERVICE_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    addr = _address(ctx, d.get("addr"), _key(path, "addr"), listen=True)
    listener = _listener(ctx, d.get("listener"), _key(path, "listener"))
    handler = _handler(ctx, d.get("handler"), _key(path, "handler"))
    forwarder = _forwarder(ctx, d.get("forwarder"), _key(path, "forwarder"))
    # A forwarder that is there but malformed was reported already; "needs a forwarder" would
    # only repeat it.
    if handler is not None and (forwarder is not None or d.get("forwarder") is None):
        _check_handler_targets(ctx, path, handler, forwarder)
    policies = {
        key: _ref(ctx, d.get(key), _key(path, key), section, key)
        for key, section in POLICY_SECTIONS.items()
    }
    service = ServiceConfig(
        name=name,
        addr=addr,
        listener=listener,
        handler=handler or HandlerConfig(type="http"),
        forwarder=forwarder,
        admission=policies["admission"],
        shield=policies["shield"],
        cc=policies["cc"],
        climiter=policies["climiter"],
        rlimiter=policies["rlimiter"],
    )
    buffer_size = _service_buffer_size(ctx, d.get("metadata"), _key(path, "metadata"))
    return service if buffer_size is None else replace(service, buffer_size=buffer_size)


def _service_buffer_size(ctx: _Ctx, value: object, path: str) -> int | None:
    """``metadata.bufferSize``; None when not set (the model's default applies)."""
    meta = _metadata(ctx, value, path)
    raw = _take(ctx, meta, "bufferSize", path)
    size = None if raw is None else _int(ctx, raw, _key(path, "bufferSize"), 1, 1)
    # ServiceConfig has nowhere to keep other keys: refuse them rather than drop them silently.
    for key in meta:
        ctx.error(_key(path, key), f"unknown key {_show(key)}; expected one of bufferSize")
    return size


def _listener(ctx: _Ctx, value: object, path: str) -> ListenerConfig:
    """The listener; a missing one is plain tcp, as in gost."""
    default = ListenerConfig()
    d = _section(ctx, value, path, LISTENER_KEYS)
    if d is None:
        return default
    listener_type = _choice(
        ctx, d.get("type"), _key(path, "type"), LISTENER_TYPES, "tcp", "listener"
    )
    meta_path = _key(path, "metadata")
    meta = _metadata(ctx, d.get("metadata"), meta_path)
    url_path = _url_path(
        ctx, _take(ctx, meta, "path", meta_path), _key(meta_path, "path"), default.path
    )
    keepalive = _take(ctx, meta, "keepalive", meta_path)
    if keepalive is not None:
        # Normalised to seconds so transports read a float whatever the file said.
        meta["keepalive"] = _duration(ctx, keepalive, _key(meta_path, "keepalive"), 0.0)
    proxy_path = _key(meta_path, "proxyProtocol")
    proxy_protocol = _int(ctx, _take(ctx, meta, "proxyProtocol", meta_path), proxy_path, 0, 0)
    if proxy_protocol not in (0, 1, 2):
        ctx.error(proxy_path, f"PROXY protocol version must be 1 or 2, got {proxy_protocol}")
    return ListenerConfig(
        type=cast(ListenerType, listener_type or "tcp"),
        tls=_tls(ctx, d.get("tls"), _key(path, "tls")),
        path=url_path,
        proxy_protocol=proxy_protocol,
        metadata=meta,
    )


def _handler(ctx: _Ctx, value: object, path: str) -> HandlerConfig | None:
    """The handler, or None (after reporting) when it is missing or its type is bad, so the
    checks that depend on the type are skipped instead of guessing."""
    if value is None:
        ctx.error(path, f"required: a handler with a type ({', '.join(HANDLER_TYPES)})")
        return None
    d = _section(ctx, value, path, HANDLER_KEYS)
    if d is None:
        return None
    if "type" not in d or d["type"] is None:
        ctx.error(_key(path, "type"), f"required: one of {', '.join(HANDLER_TYPES)}")
        handler_type = None
    else:
        handler_type = _choice(ctx, d["type"], _key(path, "type"), HANDLER_TYPES, "http", "handler")
    chain = _ref(ctx, d.get("chain"), _key(path, "chain"), "chains", "chain")
    auth = _auth(ctx, d.get("auth"), _key(path, "auth"))
    meta_path = _key(path, "metadata")
    options, meta = _http_options(ctx, d.get("metadata"), meta_path)
    given = [key for key in meta if key.lower() in {k.lower() for k in RESUME_KEYS}]
    if given and handler_type not in (None, "relay"):
        ctx.error(_key(meta_path, given[0]), "resume options belong to a relay handler")
    resume = resume_options(ctx, meta, meta_path, enabled=True)
    if handler_type is None:
        return None
    return HandlerConfig(
        type=cast(HandlerType, handler_type),
        chain=chain,
        auth=auth,
        http=options,
        metadata=meta,
        resume=resume,
    )


def _http_options(
    ctx: _Ctx, value: object, path: str
) -> tuple[HTTPHandlerOptions, dict[str, object]]:
    """``http`` handler options out of handler metadata, plus the metadata left over."""
    meta = _metadata(ctx, value, path)
    default = HTTPHandlerOptions()

    def duration(key: str, fallback: float, positive: bool) -> float:
        raw = _take(ctx, meta, key, path)
        return _duration(ctx, raw, _key(path, key), fallback, positive=positive)

    def integer(key: str, fallback: int, minimum: int) -> int:
        return _int(ctx, _take(ctx, meta, key, path), _key(path, key), fallback, minimum)

    options = HTTPHandlerOptions(
        ttfb_timeout=duration("ttfbTimeout", default.ttfb_timeout, True),
        idle_timeout=duration("idleTimeout", default.idle_timeout, True),
        total_timeout=duration("totalTimeout", default.total_timeout, False),  # 0 disables
        keepalive_timeout=duration("keepaliveTimeout", default.keepalive_timeout, True),
        retry_buffer=integer("retryBuffer", default.retry_buffer, 0),
        max_header_size=integer("maxHeaderSize", default.max_header_size, 1),
        max_body_size=integer("maxBodySize", default.max_body_size, 0),  # 0 disables
        header_timeout=duration("headerTimeout", default.header_timeout, True),
        trusted_proxies=_ip_or_cidr_list(
            ctx, _take(ctx, meta, "trustedProxies", path) or [], _key(path, "trustedProxies")
        ),
    )
    heartbeat = _take(ctx, meta, "sseHeartbeat", path)
    if heartbeat is not None:
        # No typed field yet: kept in metadata, normalised to seconds.
        meta["sseHeartbeat"] = _duration(ctx, heartbeat, _key(path, "sseHeartbeat"), 0.0)
    return options, meta


def _check_handler_targets(
    ctx: _Ctx, path: str, handler: HandlerConfig, forwarder: ForwarderConfig | None
) -> None:
    """Every handler must know where traffic goes; a relay handler must never be open."""
    if forwarder is not None:
        return
    target_path = _key(path, "forwarder")
    if handler.type == "relay" and handler.chain is None:
        ctx.error(
            target_path, "relay handler needs a forwarder: it never connects to arbitrary targets"
        )
    elif handler.type == "forward" and handler.chain is None:
        ctx.error(target_path, "forward handler needs a forwarder or a chain")
    elif handler.type == "http" and handler.chain is None:
        ctx.error(
            target_path,
            "http handler needs a forwarder or a chain: it has nowhere to send requests",
        )


def _forwarder(ctx: _Ctx, value: object, path: str) -> ForwarderConfig | None:
    d = _section(ctx, value, path, FORWARDER_KEYS)
    if d is None:
        return None
    nodes_path = _key(path, "nodes")
    _nonempty(ctx, d.get("nodes"), nodes_path, "node")
    nodes = _items(ctx, d.get("nodes"), nodes_path, _target_node)
    _unique(ctx, nodes, "node")
    return ForwarderConfig(
        nodes=tuple(node for _, node in nodes),
        selector=_selector(ctx, d.get("selector"), _key(path, "selector")),
        probe=_probe(ctx, d.get("probe"), _key(path, "probe")),
    )


def _target_node(ctx: _Ctx, raw: object, path: str, index: int) -> NodeConfig:
    """A forwarder node: a name (default ``target-N``) and the address it allows."""
    d = _mapping(ctx, raw, path, TARGET_NODE_KEYS)
    name = _opt_str(ctx, d.get("name"), _key(path, "name")) or f"target-{index}"
    return NodeConfig(
        name=name, addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=False)
    )
