"""The agent's part of usage accounting (issue 12): carry the relay's usage batches to the
master and the master's over-quota keys back to the relay.

Each heartbeat takes the relay's pending batch (``GET /usage``; the same batch until it is
acknowledged), sends it in the ``HeartbeatRequest``, and acknowledges it on the relay
(``POST /usage/ack``) only once the master's answer names it in ``usage_acked``. A batch the
master did not confirm (it was down, the answer was lost, the agent restarted) is sent again
with the same id, and the master applies it once: counts are neither lost nor doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from relay.agent.relay_api import RelayApi, RelayApiError
from relay.agent.rpc import pb

__all__ = ["UsageCarrier", "batch_message"]

log = logging.getLogger("relay.agent")

_INT_FIELDS = (
    "hour", "requests", "errors", "blocked", "bytes_in", "bytes_out", "streams", "ttfb_count",
    "prompt_tokens", "completion_tokens", "total_tokens",
)  # fmt: skip


def _int(entry: Mapping[str, object], name: str) -> int:
    value = entry.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(entry: Mapping[str, object], name: str) -> float:
    value = entry.get(name, 0.0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def batch_message(batch: Mapping[str, object]) -> pb.UsageBatch:
    """The relay's ``GET /usage`` batch as the proto message; ValueError when malformed."""
    batch_id = batch.get("batch_id")
    entries = batch.get("entries")
    if not isinstance(batch_id, str) or not batch_id or not isinstance(entries, list):
        raise ValueError("usage batch without batch_id or entries")
    message = pb.UsageBatch(
        batch_id=batch_id, start=_float(batch, "start"), end=_float(batch, "end")
    )
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ValueError("usage entry without a key")
        message.entries.append(
            pb.KeyUsage(
                key=entry["key"],
                ttfb_seconds_sum=_float(entry, "ttfb_sum"),
                duration_seconds_sum=_float(entry, "duration_sum"),
                **{name: _int(entry, name) for name in _INT_FIELDS},
            )
        )
    return message


class UsageCarrier:
    """Usage and quotas between one relay and the master, one heartbeat at a time."""

    def __init__(self) -> None:
        self._pushed: frozenset[str] | None = None
        self.acked = 0
        """Batches the master confirmed and the relay dropped."""

    async def take(self, api: RelayApi) -> pb.UsageBatch | None:
        """The relay's pending batch as a message, or None (nothing counted, or the relay does
        not serve usage: a relay with workers, an older relay, or one that is down)."""
        try:
            batch = await api.usage_batch()
        except RelayApiError as exc:
            log.debug("no usage from the relay: %s", exc)
            return None
        if batch is None:
            return None
        try:
            return batch_message(batch)
        except ValueError as exc:
            log.warning("the relay's usage batch is malformed, not sent: %s", exc)
            return None

    async def settle(
        self, api: RelayApi, sent: pb.UsageBatch | None, reply: pb.HeartbeatResponse
    ) -> None:
        """After the master answered: acknowledge ``sent`` on the relay when the master stored
        it, and hand the relay the master's over-quota keys when they changed."""
        try:
            acked = sent is not None and reply.usage_acked == sent.batch_id
            if acked and sent is not None and await api.ack_usage(sent.batch_id):
                self.acked += 1
            if reply.quotas_known:
                keys = frozenset(reply.over_quota_keys)
                # Pushed again when non-empty: a restarted relay starts with none.
                if keys != self._pushed or keys:
                    await api.set_blocked(sorted(keys))
                    self._pushed = keys
        except RelayApiError as exc:
            # The batch stays pending on the relay and is sent again: the master ignores it.
            log.warning("usage hand-over to the relay failed: %s", exc)
            self._pushed = None
