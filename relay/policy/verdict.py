"""The answer every policy check returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALLOW", "REASONS", "Verdict"]

#: Every ``Verdict.reason`` a denial can carry: the bounded label set of
#: ``aicdn_blocked_total{reason}``.
REASONS = ("admission", "shield", "shield_blacklist", "cc", "climiter", "rlimiter")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a connection or request may proceed.

    ``allowed`` False means refuse it: HTTP answers 429 (``Retry-After`` from ``retry_after``
    when it is above 0) with a JSON body, L4 closes the connection. ``reason`` is one of
    ``REASONS`` on a denial and "" when allowed. ``retry_after`` is in seconds: the time left
    on a block, 1 for rate limits, 0 when retrying will not help (admission, blacklist).
    """

    allowed: bool
    reason: str = ""
    retry_after: float = 0.0


#: The one "allowed" verdict: allowing allocates nothing on the hot path.
ALLOW = Verdict(True)
