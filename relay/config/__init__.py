"""Relay configuration: the typed model, the validating loader, shorthand URLs and rendering.

Everything downstream imports from here::

    from relay.config import ConfigError, RelayConfig, load_config_file
"""

from __future__ import annotations

from relay.config.errors import ConfigError, ConfigIssue
from relay.config.loader import (
    config_from_mapping,
    load_config_file,
    load_config_text,
    parse_address,
    parse_duration,
)
from relay.config.model import (
    Address,
    AdmissionConfig,
    APIConfig,
    Auth,
    CCConfig,
    ChainConfig,
    ConnectorConfig,
    DialerConfig,
    ForwarderConfig,
    HandlerConfig,
    HopConfig,
    HTTPHandlerOptions,
    LimiterConfig,
    ListenerConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    ProbeConfig,
    RelayConfig,
    SelectorConfig,
    ServiceConfig,
    ShieldConfig,
    TLSConfig,
)
from relay.config.render import config_to_mapping, redacted_mapping
from relay.config.shorthand import config_from_urls

__all__ = [
    "APIConfig",
    "Address",
    "AdmissionConfig",
    "Auth",
    "CCConfig",
    "ChainConfig",
    "ConfigError",
    "ConfigIssue",
    "ConnectorConfig",
    "DialerConfig",
    "ForwarderConfig",
    "HTTPHandlerOptions",
    "HandlerConfig",
    "HopConfig",
    "LimiterConfig",
    "ListenerConfig",
    "LogConfig",
    "MetricsConfig",
    "NodeConfig",
    "ProbeConfig",
    "RelayConfig",
    "SelectorConfig",
    "ServiceConfig",
    "ShieldConfig",
    "TLSConfig",
    "config_from_mapping",
    "config_from_urls",
    "config_to_mapping",
    "load_config_file",
    "load_config_text",
    "parse_address",
    "parse_duration",
    "redacted_mapping",
]
