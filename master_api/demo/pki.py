"""A throwaway fleet CA and the core's certificate for the demo, made with the openssl CLI.

The edge verifies the core against the CA (the ``edge`` template's ``ca_file: @node``), so the
demo's tunnel is real TLS 1.3 with verification, not an insecure shortcut.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoPki", "make_pki"]


@dataclass(frozen=True, slots=True)
class DemoPki:
    ca_cert: str
    core_cert: str
    core_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path, core_ip: str) -> DemoPki:
    """A P-256 CA and a certificate for ``core_ip`` signed by it (valid two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "core.key", directory / "core.csr", directory / "core.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=aicdn demo fleet CA",
             "-keyout", str(ca_key), "-out", str(ca_cert))  # fmt: skip
    _openssl("req", "-new", *ec, "-subj", f"/CN={core_ip}", "-keyout", str(key), "-out", str(csr))
    extensions = directory / "core.ext"
    extensions.write_text(f"subjectAltName=IP:{core_ip}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
             "-out", str(cert))  # fmt: skip
    return DemoPki(ca_cert.read_text(), cert.read_text(), key.read_text())
