"""The gRPC AgentService of the master (DESIGN §4.4): what agents call, and the command streams
through which the REST API reaches them.

* :mod:`~master_api.grpc.server` -- the grpc.aio server on its own thread (``AgentGrpcServer``);
* :mod:`~master_api.grpc.service` -- the servicer, on the app's ``NodeService``;
* :mod:`~master_api.grpc.hub` -- open ``ExecuteCommand`` streams by node (``CommandHub``).
"""

from __future__ import annotations

from master_api.grpc.hub import (
    HUB_KEY,
    AgentNotConnected,
    CommandHub,
    CommandReply,
    CommandTimeout,
)
from master_api.grpc.server import AgentGrpcServer

__all__ = [
    "HUB_KEY",
    "AgentGrpcServer",
    "AgentNotConnected",
    "CommandHub",
    "CommandReply",
    "CommandTimeout",
]
