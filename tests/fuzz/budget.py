"""How hard the fuzz tests try: a small fixed budget in ``make test``, scaled up by ``make fuzz``.

``AICDN_FUZZ_SCALE`` multiplies every test's example count (``make fuzz`` sets 50); CI runs
with 1, derandomized, so a run is repeatable and its time is bounded.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def scale() -> int:
    raw = os.environ.get("AICDN_FUZZ_SCALE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"AICDN_FUZZ_SCALE must be a positive integer, not {raw!r}")
    return int(raw)


def fuzz_settings(examples: int, **extra: object) -> settings:
    """Hypothesis settings for ``examples`` cases per run (times the scale). Deep runs are
    random; the CI budget is derandomized so it never flakes on a new seed."""
    deep = scale() > 1
    return settings(
        max_examples=examples * scale(),
        deadline=None,
        derandomize=not deep,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        **extra,  # type: ignore[arg-type]
    )
