"""``aicdn-relay agent --config agent.yaml``: the entry point (signals and the event loop).

SIGTERM/SIGINT stop the agent: the current session ends (the command stream is closed) and the
process exits 0. Exit status 2: agent.yaml is refused or the relay's admin API address cannot be
found; nothing a master does makes the agent exit.

The agent runs on asyncio's default loop (gRPC's asyncio support is tested on it; the agent is
no hot path), not uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

from relay.agent.config import load_agent_config
from relay.agent.relay_api import RelayApiError
from relay.config import ConfigError

if TYPE_CHECKING:
    from relay.agent.runner import Agent

__all__ = ["run_agent"]

log = logging.getLogger("relay.agent")


def run_agent(path: str, log_level: str = "info") -> int:
    """Load ``path`` and run the agent until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        config = load_agent_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{path}: {issue}", file=sys.stderr)
        return 2
    # Imported here: the gRPC code is generated on first import, which only the agent needs.
    from relay.agent.runner import Agent

    try:
        agent = Agent(config)
    except RelayApiError as exc:
        print(f"aicdn-relay agent: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_main(agent))


async def _main(agent: Agent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "agent for node %s starting (masters %s, heartbeat every %gs)",
        agent.config.node_id,
        ", ".join(str(m) for m in agent.config.masters),
        agent.config.heartbeat_interval,
    )
    await agent.run(stop)
    log.info("agent stopped")
    return 0
