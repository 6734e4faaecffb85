"""Throwaway PKI for tests, benchmarks and the demo: one CA, and leaf certificates it signs.

Never for production certificates (the fleet's come from its operators or the ``tls`` role).
Use it like this::

    ca = make_ca(tmp_path)
    server = issue(ca, "origin")                      # SANs: localhost, 127.0.0.1
    client_ctx = client_ssl_context(ca)               # trusts only this CA
    server_ctx = server_ssl_context(server)

Keys are ECDSA P-256: generating them takes well under a millisecond, where RSA-2048 would take
tens, and every TLS stack this project talks to accepts them. Leaves carry both ``serverAuth``
and ``clientAuth`` so one helper also serves mutual-TLS tests. Files are PEM; keys are
unencrypted PKCS#8.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "CertPair", "client_ssl_context", "issue", "make_ca", "server_ssl_context"]

#: Backdating absorbs clock skew between the test process and whatever verifies the chain.
_BACKDATE = datetime.timedelta(hours=1)
_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class CA:
    """A self-signed certificate authority; ``issue`` writes the leaves it signs into ``dir``."""

    cert_file: Path
    key_file: Path
    dir: Path
    cert: x509.Certificate = field(repr=False)
    key: ec.EllipticCurvePrivateKey = field(repr=False)


def make_ca(tmp_dir: str | os.PathLike[str], name: str = "aicdn test CA") -> CA:
    """Create a CA (``ca.crt``/``ca.key``) in ``tmp_dir``, which must exist."""
    directory = Path(tmp_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        # Self-signed, so the authority key is our own; OpenSSL 3's strict mode wants it present.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = _write(directory, "ca", cert, key)
    return CA(cert_file=cert_file, key_file=key_file, dir=directory, cert=cert, key=key)


def issue(ca: CA, name: str, sans: Sequence[str] = ("localhost", "127.0.0.1")) -> CertPair:
    """Issue a leaf for common name ``name``, as ``<name>.crt``/``<name>.key`` in ``ca.dir``.

    Each SAN that parses as an IPv4/IPv6 address becomes an IP SAN, anything else a DNS SAN.
    Issuing the same ``name`` twice overwrites the earlier files.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = _write(ca.dir, name, cert, key)
    return CertPair(cert_file=cert_file, key_file=key_file)


def server_ssl_context(pair: CertPair, client_ca: CA | None = None) -> ssl.SSLContext:
    """A server-side context presenting ``pair``; with ``client_ca``, client certs are required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert_file, pair.key_file)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca.cert_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(ca: CA, pair: CertPair | None = None) -> ssl.SSLContext:
    """A client-side context trusting only ``ca``; ``pair`` is presented as the client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.cert_file))
    if pair is not None:
        ctx.load_cert_chain(pair.cert_file, pair.key_file)
    return ctx


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_file = directory / f"{stem}.crt"
    key_file = directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)  # Owner-only, like any private key, even a throwaway one.
    return cert_file, key_file
