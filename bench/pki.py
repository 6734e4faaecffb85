"""A throwaway CA and a ``localhost`` server certificate for the tls/wss hops, made with
:mod:`relay.dev_pki` (the tests' PKI too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.dev_pki import issue, make_ca


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> Pki:
    """Write ``ca.crt``, ``server.crt`` and ``server.key`` (SANs localhost, 127.0.0.1)."""
    ca = make_ca(directory, "aicdn bench CA")
    server = issue(ca, "server")
    return Pki(ca.cert_file, server.cert_file, server.key_file)
