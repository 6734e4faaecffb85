"""TLS contexts for listeners and dialers: TLS 1.3 only, verification on by default."""

from __future__ import annotations

import os
import ssl

from relay.config.model import TLSConfig

#: ALPN of the tunnel between relays; HTTP entry listeners also offer http/1.1.
TUNNEL_ALPN = "aicdn-relay/1"


def _path(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def server_context(tls: TLSConfig, base_dir: str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Context for a listener. A ``caFile`` on a listener turns on client certificates."""
    if not tls.cert_file or not tls.key_file:
        raise ValueError("a TLS listener needs certFile and keyFile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(_path(base_dir, tls.cert_file), _path(base_dir, tls.key_file))
    if tls.ca_file:
        ctx.load_verify_locations(_path(base_dir, tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    tls: TLSConfig | None, base_dir: str, alpn: tuple[str, ...] = ()
) -> ssl.SSLContext:
    """Context for a dialer: verifies the server's certificate and name unless told not to."""
    tls = tls or TLSConfig()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.ca_file:
        ctx.load_verify_locations(_path(base_dir, tls.ca_file))
    else:
        ctx.load_default_certs()
    if tls.cert_file and tls.key_file:
        ctx.load_cert_chain(_path(base_dir, tls.cert_file), _path(base_dir, tls.key_file))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
