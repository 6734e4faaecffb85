"""The relay's log stays the relay's: aioquic's per-stream INFO chatter (a line for every stream
a client resets) shows only at debug level (found by bench/soak.py over QUIC)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from relay.cli import configure_logging
from relay.config.model import LogConfig


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quic_level = logging.getLogger("quic").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("quic").setLevel(quic_level)


@pytest.mark.parametrize(
    ("level", "quic_info_shown"), [("info", False), ("warn", False), ("debug", True)]
)
def test_aioquic_info_only_at_debug(level: str, quic_info_shown: bool) -> None:
    logging.getLogger("quic").setLevel(logging.NOTSET)
    configure_logging(LogConfig(level=level))  # type: ignore[arg-type]
    assert logging.getLogger("quic").isEnabledFor(logging.INFO) is quic_info_shown
    assert logging.getLogger("quic").isEnabledFor(logging.WARNING)
    assert logging.getLogger("relay").isEnabledFor(logging.INFO) is (level != "warn")
