"""AI CDN Tunnel relay: the data plane (and, later, the agent)."""

__version__ = "0.1.0"
