"""QUIC tunnel options (from dialer/listener ``metadata``) and aioquic configurations."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from aioquic.quic.configuration import QuicConfiguration

from relay.config import parse_duration
from relay.config.model import TLSConfig
from relay.transports.tls import TUNNEL_ALPN

#: Receive credit kept ahead of what a stream's reader consumed: the most a paused stream holds
#: (as ``bufferSize`` for a TCP hop). Also caps one stream's throughput at window/RTT (5 MB/s at
#: 50 ms): plenty for token streams; raise it (``streamWindow``) for bulk transfers on long paths.
STREAM_WINDOW = 256 << 10
#: The same for the whole connection: the most all paused streams of one connection hold. Once
#: that many bytes sit in paused streams (256 streams whose readers stopped, by default), every
#: stream of the connection waits: keep it far above STREAM_WINDOW.
CONNECTION_WINDOW = 64 << 20
#: Bytes within the peer's credit and not acknowledged (the network is slow to take them), over
#: all streams of a connection, above which every writer pauses, and where they resume.
CONNECTION_SEND_HIGH = 16 << 20
CONNECTION_SEND_LOW = 8 << 20
#: Largest UDP payload we send. 1350 fits a 1400-byte tunnel MTU with IPv6 headers to spare.
MAX_DATAGRAM_SIZE = 1350


@dataclass(frozen=True, slots=True)
class QuicOptions:
    """Tunnel connection options; hashable, as they are part of a pooled connection's key.

    Metadata keys (case-insensitive): ``idleTimeout`` (duration, default 30s), ``maxStreams``
    (concurrent streams the peer may open, default 1024), ``zeroRTT`` (bool, default false:
    send a re-dialed connection's first requests as 0-RTT early data — replayable by an
    on-path attacker, hence off unless asked for), ``streamWindow`` and ``connectionWindow``
    (receive windows in bytes, see ``STREAM_WINDOW`` and ``CONNECTION_WINDOW``), and for
    dialers ``reprobeInterval`` (duration, default 10s: how often a node benched after a failed
    QUIC dial is re-tried in the background, see ``relay.chain``).
    """

    idle_timeout: float = 30.0
    #: Seconds between keepalive PINGs while the connection is in use; 0 disables them.
    keepalive: float = 10.0
    max_streams: int = 1024
    zero_rtt: bool = False
    stream_window: int = STREAM_WINDOW
    connection_window: int = CONNECTION_WINDOW
    reprobe_interval: float = 10.0

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], keepalive: float = 0.0) -> QuicOptions:
        """Options from ``metadata``; ``keepalive`` (the dialer's) is capped at a third of the
        idle timeout, so two PINGs may be lost before the connection times out.

        Raises ``ValueError`` naming the bad key.
        """
        meta = {key.lower(): value for key, value in metadata.items()}
        default = _DEFAULTS
        idle = default.idle_timeout
        if "idletimeout" in meta:
            try:
                idle = parse_duration(meta["idletimeout"])
            except ValueError as exc:
                raise ValueError(f"metadata.idleTimeout: {exc}") from None
            if idle <= 0:
                raise ValueError("metadata.idleTimeout: must be positive")
        max_streams = meta.get("maxstreams", default.max_streams)
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise ValueError(
                f"metadata.maxStreams: expected a positive integer, got {max_streams!r}"
            )
        zero_rtt = meta.get("zerortt", default.zero_rtt)
        if not isinstance(zero_rtt, bool):
            raise ValueError(f"metadata.zeroRTT: expected true or false, got {zero_rtt!r}")
        reprobe = default.reprobe_interval
        if "reprobeinterval" in meta:
            try:
                reprobe = parse_duration(meta["reprobeinterval"])
            except ValueError as exc:
                raise ValueError(f"metadata.reprobeInterval: {exc}") from None
            if reprobe <= 0:
                raise ValueError("metadata.reprobeInterval: must be positive")
        stream_window = _size(meta, "streamWindow", default.stream_window)
        connection_window = _size(meta, "connectionWindow", default.connection_window)
        if connection_window < stream_window:
            raise ValueError("metadata.connectionWindow: must not be below streamWindow")
        return cls(
            idle_timeout=idle,
            keepalive=min(keepalive, idle / 3) if keepalive > 0 else 0.0,
            max_streams=max_streams,
            zero_rtt=zero_rtt,
            stream_window=stream_window,
            connection_window=connection_window,
            reprobe_interval=reprobe,
        )


def _size(meta: Mapping[str, object], key: str, default: int) -> int:
    value = meta.get(key.lower(), default)
    if isinstance(value, bool) or not isinstance(value, int) or not 16384 <= value <= 1 << 30:
        raise ValueError(f"metadata.{key}: expected bytes between 16384 and 2^30, got {value!r}")
    return value


_DEFAULTS = QuicOptions()


def _path(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def _base(options: QuicOptions, is_client: bool, alpn: str) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[alpn],
        idle_timeout=options.idle_timeout,
        max_data=options.connection_window,
        max_stream_data=options.stream_window,
        max_datagram_size=MAX_DATAGRAM_SIZE,
    )


def client_configuration(
    tls: TLSConfig | None, host: str, base_dir: str, options: QuicOptions
) -> QuicConfiguration:
    """TLS 1.3 (QUIC has no other) verifying the server against ``caFile`` (else the system
    store) and ``serverName`` (else ``host``), unless ``insecureSkipVerify``."""
    tls = tls or TLSConfig()
    config = _base(options, is_client=True, alpn=TUNNEL_ALPN)
    config.server_name = tls.server_name or host
    if tls.insecure_skip_verify:
        config.verify_mode = ssl.CERT_NONE
    elif tls.ca_file:
        config.load_verify_locations(cafile=_path(base_dir, tls.ca_file))
    else:
        # aioquic would fall back to certifi's bundle; the system store is what TLS dialers use.
        paths = ssl.get_default_verify_paths()
        if paths.cafile or paths.capath:
            config.load_verify_locations(cafile=paths.cafile, capath=paths.capath)
    if tls.cert_file and tls.key_file:
        config.load_cert_chain(_path(base_dir, tls.cert_file), _path(base_dir, tls.key_file))
    return config


def server_configuration(
    tls: TLSConfig, base_dir: str, options: QuicOptions, alpn: str = TUNNEL_ALPN
) -> QuicConfiguration:
    """Server side, offering ``alpn`` only (the tunnel's, or ``h3``). Raises ``ValueError``
    without certificate and key, and for a ``caFile``: on TLS listeners it requires client
    certificates, but aioquic's server (1.7.2) never asks for one, nor verifies one against a
    CA. Accepting the setting would silently let every client in, so it is refused; the relay
    handler's ``auth`` authenticates edges instead."""
    if not tls.cert_file or not tls.key_file:
        raise ValueError("a QUIC listener needs certFile and keyFile")
    if tls.ca_file:
        raise ValueError(
            "a QUIC listener cannot require client certificates (tls.caFile): aioquic does not "
            "request them; authenticate clients with the handler's auth instead"
        )
    config = _base(options, is_client=False, alpn=alpn)
    config.load_cert_chain(_path(base_dir, tls.cert_file), _path(base_dir, tls.key_file))
    return config
