"""``resumeWindow`` / ``resumeBuffer`` (and on connectors ``resume``) out of a metadata mapping."""

from __future__ import annotations

from relay.config.model import ResumeOptions
from relay.config.readers import _bool, _Ctx, _duration, _int, _key, _take
from relay.protocols.resume import ACK_EVERY

#: A stream's buffer must hold several acknowledgement intervals, or its sender would stall
#: waiting for an ACK its peer has no reason to send yet.
MIN_BUFFER = 4 * ACK_EVERY
MAX_BUFFER = 64 << 20
#: Longest a broken stream may be held: its origin connection stays open meanwhile.
MAX_WINDOW = 3600.0
RESUME_KEYS = ("resumeWindow", "resumeBuffer")


def resume_options(
    ctx: _Ctx, meta: dict[str, object], path: str, *, enabled: bool
) -> ResumeOptions:
    """Read and remove the resume keys of ``meta``; ``enabled`` is the default switch."""
    default = ResumeOptions()
    window_path = _key(path, "resumeWindow")
    window = _duration(ctx, _take(ctx, meta, "resumeWindow", path), window_path, default.window)
    if window > MAX_WINDOW:
        ctx.error(window_path, f"must be at most {MAX_WINDOW:g}s, got {window:g}s")
        window = default.window
    buffer_path = _key(path, "resumeBuffer")
    buffer = _int(ctx, _take(ctx, meta, "resumeBuffer", path), buffer_path, default.buffer,
                  MIN_BUFFER)  # fmt: skip
    if buffer > MAX_BUFFER:
        ctx.error(buffer_path, f"must be at most {MAX_BUFFER}, got {buffer}")
        buffer = default.buffer
    return ResumeOptions(enabled=enabled and window > 0, window=window, buffer=buffer)


def connector_resume(ctx: _Ctx, meta: dict[str, object], path: str) -> ResumeOptions | None:
    """A connector's ``metadata``: ``resume: true`` asks the node for resumable streams."""
    wanted = _bool(ctx, _take(ctx, meta, "resume", path), _key(path, "resume"), False)
    options = resume_options(ctx, meta, path, enabled=wanted)
    for key in meta:
        ctx.error(_key(path, key), f"unknown key {key!r}; expected one of resume, "
                  + ", ".join(RESUME_KEYS))  # fmt: skip
    if wanted and options.window <= 0:
        ctx.error(_key(path, "resumeWindow"), "must be greater than zero when resume is on")
    return options if options.enabled else None
