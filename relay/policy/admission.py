"""Admission: IP/CIDR allow or deny lists, checked before any other policy."""

from __future__ import annotations

from relay.config.model import AdmissionConfig
from relay.policy.ipmatch import IPMatcher

__all__ = ["Admission"]


class Admission:
    """``admissions[]`` entry: with ``whitelist`` only the matchers may connect, without it
    the matchers are refused and everyone else may. Stateless and immutable."""

    __slots__ = ("_matcher", "_whitelist", "name")

    def __init__(self, config: AdmissionConfig) -> None:
        self.name = config.name
        self._whitelist = config.whitelist
        self._matcher = IPMatcher(config.matchers)

    def allows(self, ip: str) -> bool:
        """Whether ``ip`` may proceed. A string that is not an IP address matches nothing: it
        is refused in whitelist mode and allowed otherwise."""
        return (ip in self._matcher) is self._whitelist
