"""``python -m relay.agent.proto``: generate the AgentService modules now (``make proto``)."""

from __future__ import annotations

from relay.agent.proto import ensure_generated

print(f"AgentService modules are current in {ensure_generated()}")
