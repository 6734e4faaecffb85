"""Builds one entry of ``chains``: its hops, and each hop's nodes with connector and dialer."""

from __future__ import annotations

from typing import cast

from relay.config.checks import _check_transport_metadata, _unique
from relay.config.model import (
    CONNECTOR_TYPES,
    DIALER_TYPES,
    ChainConfig,
    ConnectorConfig,
    DialerConfig,
    DialerType,
    HopConfig,
    NodeConfig,
)
from relay.config.readers import (
    _address,
    _choice,
    _Ctx,
    _duration,
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
from relay.config.resume_options import connector_resume
from relay.config.schema import CHAIN_KEYS, CONNECTOR_KEYS, DIALER_KEYS, HOP_KEYS, NODE_KEYS
from relay.config.shared_sections import _auth, _probe, _selector, _tls


def _chain(ctx: _Ctx, raw: object, path: str, index: int) -> ChainConfig:
    d = _mapping(ctx, raw, path, CHAIN_KEYS)
    name = _required_str(ctx, d.get("name"), _key(path, "name"))
    hops_path = _key(path, "hops")
    _nonempty(ctx, d.get("hops"), hops_path, "hop")
    hops = _items(ctx, d.get("hops"), hops_path, _hop)
    _unique(ctx, hops, "hop")
    return ChainConfig(name=name, hops=tuple(hop for _, hop in hops))


def _hop(ctx: _Ctx, raw: object, path: str, index: int) -> HopConfig:
    d = _mapping(ctx, raw, path, HOP_KEYS)
    nodes_path = _key(path, "nodes")
    _nonempty(ctx, d.get("nodes"), nodes_path, "node")
    nodes = _items(ctx, d.get("nodes"), nodes_path, _chain_node)
    _unique(ctx, nodes, "node")
    return HopConfig(
        name=_opt_str(ctx, d.get("name"), _key(path, "name")) or f"hop-{index}",
        nodes=tuple(node for _, node in nodes),
        selector=_selector(ctx, d.get("selector"), _key(path, "selector")),
        probe=_probe(ctx, d.get("probe"), _key(path, "probe")),
    )


def _chain_node(ctx: _Ctx, raw: object, path: str, index: int) -> NodeConfig:
    """A hop node: always has a connector (relay when omitted) and a dialer (tcp)."""
    d = _mapping(ctx, raw, path, NODE_KEYS)
    return NodeConfig(
        name=_opt_str(ctx, d.get("name"), _key(path, "name")) or f"node-{index}",
        addr=_address(ctx, d.get("addr"), _key(path, "addr"), listen=False),
        connector=_connector(ctx, d.get("connector"), _key(path, "connector")),
        dialer=_dialer(ctx, d.get("dialer"), _key(path, "dialer")),
    )


def _connector(ctx: _Ctx, value: object, path: str) -> ConnectorConfig:
    d = _section(ctx, value, path, CONNECTOR_KEYS)
    if d is None:
        return ConnectorConfig()
    _choice(ctx, d.get("type"), _key(path, "type"), CONNECTOR_TYPES, "relay", "connector")
    meta_path = _key(path, "metadata")
    resume = connector_resume(ctx, _metadata(ctx, d.get("metadata"), meta_path), meta_path)
    return ConnectorConfig(
        type="relay", auth=_auth(ctx, d.get("auth"), _key(path, "auth")), resume=resume
    )


def _dialer(ctx: _Ctx, value: object, path: str) -> DialerConfig:
    default = DialerConfig()
    d = _section(ctx, value, path, DIALER_KEYS)
    if d is None:
        return default
    dialer_type = _choice(ctx, d.get("type"), _key(path, "type"), DIALER_TYPES, "tcp", "dialer")
    meta_path = _key(path, "metadata")
    meta = _metadata(ctx, d.get("metadata"), meta_path)

    def field_path(key: str) -> str:
        return _key(meta_path, key)

    url_path = _url_path(ctx, _take(ctx, meta, "path", meta_path), field_path("path"), default.path)
    host = _opt_str(ctx, _take(ctx, meta, "host", meta_path), field_path("host"))
    keepalive = _take(ctx, meta, "keepalive", meta_path)
    timeout = _take(ctx, meta, "timeout", meta_path)
    _check_transport_metadata(ctx, path, dialer_type or "tcp", meta)
    return DialerConfig(
        type=cast(DialerType, dialer_type or "tcp"),
        tls=_tls(ctx, d.get("tls"), _key(path, "tls")),
        path=url_path,
        host=host,
        keepalive=_duration(ctx, keepalive, field_path("keepalive"), default.keepalive),
        timeout=_duration(ctx, timeout, field_path("timeout"), default.timeout, positive=True),
        metadata=meta,
    )
