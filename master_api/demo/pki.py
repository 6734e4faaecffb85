"""A throwaway fleet CA and the core's certificate for the demo (:mod:`relay.dev_pki`).

The edge verifies the core against the CA (the ``edge`` template's ``ca_file: @node``), so the
demo's tunnel is real TLS 1.3 with verification, not an insecure shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.dev_pki import issue, make_ca

__all__ = ["DemoPki", "make_pki"]


@dataclass(frozen=True, slots=True)
class DemoPki:
    ca_cert: str
    core_cert: str
    core_key: str


def make_pki(directory: Path, core_ip: str) -> DemoPki:
    """A P-256 CA and a certificate for ``core_ip`` signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "aicdn demo fleet CA")
    core = issue(ca, "core", sans=(core_ip,))
    return DemoPki(ca.cert_file.read_text(), core.cert_file.read_text(), core.key_file.read_text())
