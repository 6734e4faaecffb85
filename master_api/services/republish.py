"""Make agents re-render after an inventory change (a node taken out, activated, drained).

A node's rendered config depends on its version *and* on its peers, but agents fetch only
when the desired version changes. :func:`republish_peers` therefore publishes, for each active
config version whose ``peers`` hops chain to one of ``node_types``, a fresh copy (same
``config_data``, new version id): the agents of the affected nodes fetch it on their next
heartbeat and render it with the inventory as it is now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from master_api.errors import ApiError
from master_api.services.configs import DEFAULT_CONFIG_TYPE, ConfigService, DraftInput
from relay.config.fleet import peer_types

__all__ = ["republish_peers"]

log = logging.getLogger(__name__)

#: Margin on top of ``agent_snapshot_ttl`` before publishing (see :func:`republish_peers`).
_SETTLE_MARGIN = 0.05


def republish_peers(
    configs: ConfigService,
    node_types: Collection[str],
    description: str,
    actor: str,
    settle: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, ...]:
    """Publish a fresh copy of every active version chaining to ``node_types``; returns the new
    version ids (one per active pointer, in pointer order). History entries carry ``actor`` as
    both their action and their actor.

    ``settle``: agents render through snapshots of the inventory up to ``agent_snapshot_ttl``
    old (on every master); waiting that long after the inventory write means any render of the
    new version already sees it. A pointer that cannot be republished is logged and skipped.
    """
    if settle > 0:
        sleep(settle + _SETTLE_MARGIN)
    wanted = set(node_types)
    produced: list[int] = []
    for pointer in configs.pointers():
        if pointer.config_type != DEFAULT_CONFIG_TYPE:
            continue
        try:
            version = configs.get(pointer.version_id)
            if not peer_types(version.config_data) & wanted:
                continue
            draft = configs.create_draft(
                DraftInput(
                    node_type=version.node_type,
                    config_type=version.config_type,
                    regions=(pointer.region,),
                    description=description[:500],
                    config_data=version.config_data,
                ),
                actor,
            )
            configs.publish(draft.version_id, actor, action=actor)
        except ApiError as exc:  # one pointer's failure must not stop the others
            log.error(
                "%s could not republish the %s config of region %r: %s",
                actor, pointer.node_type, pointer.region, exc.message,
            )  # fmt: skip
            continue
        produced.append(draft.version_id)
    return tuple(produced)
