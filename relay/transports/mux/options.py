"""Options of a multiplexed tunnel (``mtcp``/``mtls`` dialer and listener ``metadata``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relay.config import parse_duration

#: Bytes a stream may have in flight to its reader before the reader's window update: what one
#: paused stream holds at most (as ``bufferSize`` for a plain TCP hop). smux's initial window.
STREAM_WINDOW = 256 << 10


@dataclass(frozen=True, slots=True)
class MuxOptions:
    """Session options; hashable, as they are part of a pooled session's key.

    Metadata keys (case-insensitive, gost's ``mux.*`` names): ``mux.keepaliveInterval``
    (duration, default 10s; ``mux.keepaliveDisabled: true`` turns pings off),
    ``mux.keepaliveTimeout`` (duration, default 30s: a session that hears nothing for this
    long is dead), ``mux.maxStreamBuffer`` (a stream's receive window in bytes, default
    256 KiB), ``mux.maxStreams`` (listeners: concurrent streams a client may open, default
    65,536) and ``mux.version`` (2, the only one: version 1 has no per-stream windows, so one
    stalled reader would stall every stream of its session).
    """

    keepalive_interval: float = 10.0
    keepalive_timeout: float = 30.0
    stream_window: int = STREAM_WINDOW
    max_streams: int = 65536

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> MuxOptions:
        """Raises ``ValueError`` naming the bad key."""
        meta = {key.lower(): value for key, value in metadata.items()}
        default = _DEFAULTS
        version = meta.get("mux.version", 2)
        if version != 2 or isinstance(version, bool):
            raise ValueError(
                f"metadata.mux.version: only version 2 is supported (per-stream windows), "
                f"got {version!r}"
            )
        interval = _duration(meta, "mux.keepaliveInterval", default.keepalive_interval)
        disabled = meta.get("mux.keepalivedisabled", False)
        if not isinstance(disabled, bool):
            raise ValueError(
                f"metadata.mux.keepaliveDisabled: expected true or false, got {disabled!r}"
            )
        timeout = _duration(meta, "mux.keepaliveTimeout", default.keepalive_timeout)
        if not disabled and timeout < interval:
            raise ValueError("metadata.mux.keepaliveTimeout: must not be below keepaliveInterval")
        window = meta.get("mux.maxstreambuffer", default.stream_window)
        if isinstance(window, bool) or not isinstance(window, int) or not 16384 <= window < 1 << 31:
            raise ValueError(
                f"metadata.mux.maxStreamBuffer: expected bytes between 16384 and 2^31, "
                f"got {window!r}"
            )
        max_streams = meta.get("mux.maxstreams", default.max_streams)
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise ValueError(
                f"metadata.mux.maxStreams: expected a positive integer, got {max_streams!r}"
            )
        return cls(
            keepalive_interval=0.0 if disabled else interval,
            keepalive_timeout=timeout,
            stream_window=window,
            max_streams=max_streams,
        )


def _duration(meta: Mapping[str, object], key: str, default: float) -> float:
    if key.lower() not in meta:
        return default
    try:
        value = parse_duration(meta[key.lower()])
    except ValueError as exc:
        raise ValueError(f"metadata.{key}: {exc}") from None
    if value <= 0:
        raise ValueError(f"metadata.{key}: must be positive")
    return value


_DEFAULTS = MuxOptions()
