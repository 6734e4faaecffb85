"""The vocabulary of the config file: the keys each section allows and the choices they take.

Pure data, shared by the section builders: key tuples are in the order error messages list them.
"""

from __future__ import annotations

# Allowed keys per section, in the order error messages list them.
TOP_KEYS = (
    "services",
    "chains",
    "log",
    "api",
    "metrics",
    "tls",
    "admissions",
    "shields",
    "ccs",
    "climiters",
    "rlimiters",
    "workers",
    "shutdownTimeout",
    "version",
    "accessLog",
)
SERVICE_KEYS = (
    "name",
    "addr",
    "listener",
    "handler",
    "forwarder",
    "admission",
    "shield",
    "cc",
    "climiter",
    "rlimiter",
    "metadata",
)
LISTENER_KEYS = ("type", "tls", "metadata")
HANDLER_KEYS = ("type", "chain", "auth", "metadata")
AUTH_KEYS = ("username", "password")
FORWARDER_KEYS = ("nodes", "selector", "probe")
TARGET_NODE_KEYS = ("name", "addr")
SELECTOR_KEYS = ("strategy", "maxFails", "failTimeout")
PROBE_KEYS = ("type", "interval", "timeout", "path")
CHAIN_KEYS = ("name", "hops")
HOP_KEYS = ("name", "selector", "probe", "nodes")
NODE_KEYS = ("name", "addr", "connector", "dialer")
CONNECTOR_KEYS = ("type", "auth", "metadata")
DIALER_KEYS = ("type", "tls", "metadata")
# ``secure`` is gost's "verify the peer" switch. It is accepted so gost files load, and ignored:
# this relay always verifies unless ``insecureSkipVerify`` says otherwise.
TLS_KEYS = ("certFile", "keyFile", "caFile", "serverName", "insecureSkipVerify", "secure")
LOG_KEYS = ("level", "format")
API_KEYS = ("addr", "auth", "tls")
API_AUTH_KEYS = ("token",)
METRICS_KEYS = ("addr", "path", "tls")
ACCESS_LOG_KEYS = ("file", "maxSize", "maxBackups", "ratePerSecond")
ADMISSION_KEYS = ("name", "whitelist", "matchers")
SHIELD_KEYS = (
    "name",
    "window",
    "maxRequests",
    "blockDuration",
    "algorithm",
    "whitelist",
    "blacklist",
    "strict",
)
CC_KEYS = ("name", "rateLimit", "burstSize", "blockDuration", "checkInterval")
LIMITER_KEYS = ("name", "limits")
SERVICE_METADATA_KEYS = ("bufferSize",)
PROBE_TYPES = ("tcp", "http")
SHIELD_ALGORITHMS = ("sliding_window", "token_bucket")
#: Listeners that terminate TLS and therefore need a certificate.
TLS_LISTENERS = ("tls", "wss", "mtls", "quic", "http3")
#: Listeners on UDP; a UDP and a TCP service may share a port number (HTTPS + HTTP/3 on 443).
UDP_LISTENERS = ("quic", "http3")
#: Service key -> top-level section its value names.
POLICY_SECTIONS = {
    "admission": "admissions",
    "shield": "shields",
    "cc": "ccs",
    "climiter": "climiters",
    "rlimiter": "rlimiters",
}
