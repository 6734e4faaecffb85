"""Typed access to the generated AgentService code, shared by the agent and the master.

The modules grpcio-tools generates (``relay.agent.proto``) carry no annotations for the stub
and the servicer registration; this module gives them types (:class:`AgentStub`), and holds
what both ends must agree on: the metadata keys of node authentication and the keepalive
settings (seed §4.3: ping every 30 s, 10 s to answer, also without calls in flight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import grpc.aio

from relay.agent.proto import agent_pb2 as pb
from relay.agent.proto import agent_pb2_grpc as pb_grpc

__all__ = [
    "NODE_ID_KEY",
    "AgentStub",
    "Keepalive",
    "add_servicer",
    "auth_metadata",
    "channel_options",
    "make_stub",
    "pb",
    "server_options",
]

#: Metadata key carrying the node id; the token goes in ``authorization: Bearer <token>``.
NODE_ID_KEY = "aicdn-node-id"
AUTHORIZATION_KEY = "authorization"
#: Largest message either side accepts (a rendered config, a page of logs).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive of AgentService connections (seed §4.3)."""

    time: float = 30.0
    """Seconds between pings on an idle connection."""
    timeout: float = 10.0
    """Seconds a ping may go unanswered before the connection counts as dead."""


class AgentStub(Protocol):
    """The client side of ``aicdn.agent.v1.AgentService``."""

    @property
    def Register(
        self,
    ) -> grpc.aio.UnaryUnaryMultiCallable[pb.RegisterRequest, pb.RegisterResponse]: ...
    @property
    def Heartbeat(
        self,
    ) -> grpc.aio.UnaryUnaryMultiCallable[pb.HeartbeatRequest, pb.HeartbeatResponse]: ...
    @property
    def PushConfig(
        self,
    ) -> grpc.aio.UnaryUnaryMultiCallable[pb.PushConfigRequest, pb.PushConfigResponse]: ...
    @property
    def ExecuteCommand(
        self,
    ) -> grpc.aio.StreamStreamMultiCallable[pb.AgentMessage, pb.Command]: ...
    @property
    def GetStatus(
        self,
    ) -> grpc.aio.UnaryUnaryMultiCallable[pb.GetStatusRequest, pb.NodeStatus]: ...
    @property
    def ReportStatus(
        self,
    ) -> grpc.aio.UnaryUnaryMultiCallable[pb.ReportStatusRequest, pb.ReportStatusResponse]: ...


def make_stub(channel: grpc.aio.Channel) -> AgentStub:
    """The AgentService stub on ``channel``."""
    stub: AgentStub = pb_grpc.AgentServiceStub(channel)
    return stub


def add_servicer(servicer: object, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` (an object with the six RPC methods) on ``server``."""
    pb_grpc.add_AgentServiceServicer_to_server(servicer, server)


def auth_metadata(node_id: str, token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates a node on every call."""
    return ((NODE_ID_KEY, node_id), (AUTHORIZATION_KEY, f"Bearer {token}"))


def channel_options(keepalive: Keepalive = Keepalive()) -> Sequence[tuple[str, int]]:
    """Client channel options: keepalive pings even without calls, bounded message sizes."""
    return (
        ("grpc.keepalive_time_ms", int(keepalive.time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # One channel per master, reconnects driven by the agent's own backoff.
        ("grpc.enable_retries", 0),
    )


def server_options(keepalive: Keepalive = Keepalive()) -> Sequence[tuple[str, int]]:
    """Server options: the same keepalive, client pings accepted at that rate (the default
    would answer an agent's 30 s pings on an idle connection with GOAWAY too_many_pings), and
    no SO_REUSEPORT."""
    min_ping_ms = max(1000, int(keepalive.time * 1000) // 3)
    return (
        ("grpc.keepalive_time_ms", int(keepalive.time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # A second master on the same port must fail to start, not share it silently.
        ("grpc.so_reuseport", 0),
    )
