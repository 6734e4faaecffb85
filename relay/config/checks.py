"""Checks that look across items or sections: duplicate names, references to named sections,
TLS listeners against the top-level certificate, and clashing listening ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relay.config.model import Address, APIConfig, MetricsConfig, ServiceConfig, TLSConfig
from relay.config.readers import _Ctx, _key, _opt_str
from relay.config.schema import TLS_LISTENERS, UDP_LISTENERS
from relay.config.values import _show


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def _unique(ctx: _Ctx, items: Sequence[tuple[str, _Named]], what: str) -> None:
    """Report items whose name repeats an earlier one. Empty names were reported already."""
    first: dict[str, str] = {}
    for path, item in items:
        if not item.name:
            continue
        if item.name in first:
            ctx.error(
                _key(path, "name"),
                f"duplicate {what} name {_show(item.name)} (first at {first[item.name]})",
            )
        else:
            first[item.name] = path


def _ref(ctx: _Ctx, value: object, path: str, section: str, what: str) -> str | None:
    """A name that must be defined in top-level ``section``."""
    name = _opt_str(ctx, value, path)
    if name is None:
        return None
    defined = ctx.names.get(section, frozenset())
    if name not in defined:
        hint = f"defined: {', '.join(sorted(defined))}" if defined else f"no {section} are defined"
        ctx.error(path, f"unknown {what} {_show(name)}; {hint}")
    return name


def _defined_names(value: object) -> frozenset[str]:
    """Names in a raw top-level section, gathered before parsing so references can be checked
    wherever they appear in the file."""
    if not isinstance(value, list | tuple):
        return frozenset()
    return frozenset(
        item["name"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    )


def _check_service_tls(ctx: _Ctx, path: str, service: ServiceConfig, top: TLSConfig | None) -> None:
    """TLS-terminating listeners need a certificate. A listener ``tls`` block replaces the
    top-level one as a whole (no field-by-field merge), so it must carry its own."""
    listener = service.listener
    if listener.type not in TLS_LISTENERS:
        return
    if listener.tls is not None:
        if listener.tls.cert_file is None and listener.tls.key_file is None:
            ctx.error(
                _key(path, "listener.tls"),
                f"{listener.type} listener needs certFile and keyFile "
                "(a listener tls block replaces the top-level tls)",
            )
    elif top is None or (top.cert_file is None and top.key_file is None):
        ctx.error(
            _key(path, "listener"),
            f"{listener.type} listener needs a certificate: set listener.tls or the top-level "
            "tls (certFile, keyFile)",
        )


def _check_transport_metadata(ctx: _Ctx, path: str, kind: str, metadata: dict[str, object]) -> None:
    """QUIC options (idleTimeout, maxStreams, zeroRTT, windows) and multiplexing options
    (``mux.*``) are checked here, not first when a node dials or listens. ``path`` is the
    listener's or dialer's path."""
    try:
        if kind in ("quic", "http3"):
            from relay.transports.quic.options import QuicOptions  # aioquic only when used

            QuicOptions.from_metadata(metadata)
        elif kind in ("mtcp", "mtls"):
            from relay.transports.mux.options import MuxOptions

            MuxOptions.from_metadata(metadata)
    except ValueError as exc:
        where, _, message = str(exc).partition(": ")
        ctx.error(_key(path, where), message or str(exc))


def _check_quic_listener(
    ctx: _Ctx, path: str, service: ServiceConfig, top: TLSConfig | None
) -> None:
    listener = service.listener
    _check_transport_metadata(ctx, _key(path, "listener"), listener.type, listener.metadata)
    tls = listener.tls or top
    if listener.type in ("quic", "http3") and tls is not None and tls.ca_file and tls.cert_file:
        # aioquic neither requests nor verifies client certificates: a caFile here would
        # look like mutual TLS while letting every client in.
        ctx.error(
            _key(path, "listener.tls.caFile"),
            f"client certificates are not supported on {listener.type} listeners; "
            "authenticate tunnel clients with handler.auth",
        )


def _check_ports(ctx: _Ctx, sockets: list[tuple[str, str, Address]]) -> None:
    """Two listening sockets (path, protocol, address) clash on the same protocol and port
    when their hosts overlap; "" and the wildcard addresses overlap every host."""
    wildcard = ("", "0.0.0.0", "::")
    for later_index, (path, proto, addr) in enumerate(sockets):
        if addr.port == 0:  # ephemeral (or a bad address already reported)
            continue
        for earlier_path, earlier_proto, earlier in sockets[:later_index]:
            same_host = addr.host.lower() == earlier.host.lower()
            overlap = same_host or addr.host in wildcard or earlier.host in wildcard
            if proto == earlier_proto and addr.port == earlier.port and overlap:
                ctx.error(
                    path,
                    f"{proto} port {addr.port} is already used by {earlier_path} ({earlier})",
                )
                break


def _listening_sockets(
    services: list[tuple[str, ServiceConfig]], api: APIConfig | None, metrics: MetricsConfig | None
) -> list[tuple[str, str, Address]]:
    sockets = [
        (_key(path, "addr"), "udp" if s.listener.type in UDP_LISTENERS else "tcp", s.addr)
        for path, s in services
    ]
    if api is not None:
        sockets.append(("api.addr", "tcp", api.addr))
    if metrics is not None:
        sockets.append(("metrics.addr", "tcp", metrics.addr))
    return sockets
