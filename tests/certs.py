"""The tests' PKI: :mod:`relay.dev_pki` (shared with bench/ and the demo)."""

from relay.dev_pki import CA, CertPair, client_ssl_context, issue, make_ca, server_ssl_context

__all__ = ["CA", "CertPair", "client_ssl_context", "issue", "make_ca", "server_ssl_context"]
