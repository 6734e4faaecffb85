"""Node selection, passive and active health, and dialing through chains of hops.

A ``NodeGroup`` is a chain hop or a service's forwarder: nodes plus a selector. A ``Chain`` dials
its first hop directly and each further hop through the tunnel the previous one opened; every
hop's relay connector names the next hop (or, at the last hop, the target).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from relay.config.model import (
    Address,
    ChainConfig,
    ConnectorConfig,
    DialerConfig,
    NodeConfig,
    ProbeConfig,
    SelectorConfig,
)
from relay.connector import RelayClientTransport, RelayRefused
from relay.metrics import ResumeStats
from relay.protocols import relay_v1
from relay.resume.edge import AnswerWaiter, ResumableTunnel, ResumeGone
from relay.transports.base import LayeredTransport, PendingProtocol, TransportError
from relay.transports.mux.client import open_mux_stream
from relay.transports.quic.client import open_quic_stream, probe_quic
from relay.transports.quic.options import QuicOptions
from relay.transports.tls import TUNNEL_ALPN, client_context
from relay.transports.tls_layer import tls_over
from relay.transports.ws import client_upgrade

log = logging.getLogger(__name__)


class DialError(TransportError):
    """No node of a group could be reached. ``node`` names the last one tried."""

    def __init__(self, message: str, node: str = "") -> None:
        super().__init__(message)
        self.node = node


class NodeState:
    """A node and its passive health: ``max_fails`` failures in a row bench it for a while."""

    __slots__ = ("addr_text", "config", "failed_until", "fails", "name")

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.fails = 0
        self.failed_until = 0.0
        # Read on every request (route, pool keys): kept rather than worked out each time.
        self.name = config.name
        self.addr_text = str(config.addr)

    def available(self, now: float) -> bool:
        return now >= self.failed_until

    def mark_failed(self, now: float, selector: SelectorConfig) -> None:
        self.fails += 1
        if self.fails >= selector.max_fails:
            self.failed_until = now + selector.fail_timeout

    def mark_ok(self) -> None:
        self.fails = 0
        self.failed_until = 0.0


class NodeGroup:
    """Nodes with a selection strategy. ``candidates`` orders them for one attempt."""

    def __init__(
        self,
        name: str,
        nodes: Sequence[NodeConfig],
        selector: SelectorConfig,
        probe: ProbeConfig | None = None,
    ) -> None:
        self.name = name
        self.nodes = [NodeState(node) for node in nodes]
        self.selector = selector
        self.probe = probe
        self._next = 0
        self._probe_task: asyncio.Task[None] | None = None

    def candidates(self, now: float, key: str | None = None) -> list[NodeState]:
        """Nodes to try, best first: healthy ones in strategy order, then benched ones.

        Benched nodes come last rather than never, so that a blip that benched every node
        does not turn into ``failTimeout`` seconds of certain failure.
        """
        nodes = self.nodes
        if len(nodes) == 1:
            return [nodes[0]]  # (a list of its own: callers may reorder it)
        healthy = [n for n in nodes if now >= n.failed_until]
        if len(healthy) == len(nodes):  # nobody benched, as almost always
            return self._order(healthy, key)
        benched = sorted((n for n in nodes if now < n.failed_until), key=_failed_until)
        if len(healthy) > 1:
            healthy = self._order(healthy, key)
        return healthy + benched

    def _order(self, nodes: list[NodeState], key: str | None) -> list[NodeState]:
        strategy = self.selector.strategy
        if strategy == "fifo":
            return nodes
        if strategy == "rand":
            start = random.randrange(len(nodes))
        elif strategy == "hash" and key is not None:
            start = zlib.crc32(key.encode()) % len(nodes)
        else:
            start = self._next % len(nodes)
            self._next += 1
        return nodes[start:] + nodes[:start]

    def start_probes(self) -> None:
        if self.probe is not None and self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(self.probe))

    async def stop_probes(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _probe_loop(self, probe: ProbeConfig) -> None:
        loop = asyncio.get_running_loop()
        while True:
            results = await asyncio.gather(*(_probe(n.config.addr, probe) for n in self.nodes))
            now = loop.time()
            for node, healthy in zip(self.nodes, results, strict=True):
                if healthy:
                    node.mark_ok()
                elif node.available(now):
                    log.warning("probe of node %s (%s) failed", node.name, node.config.addr)
                    node.fails = self.selector.max_fails
                    node.failed_until = now + max(self.selector.fail_timeout, probe.interval)
            await asyncio.sleep(probe.interval)


def _failed_until(node: NodeState) -> float:
    return node.failed_until


async def _probe(addr: Address, probe: ProbeConfig) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(addr.host or "127.0.0.1", addr.port), probe.timeout
        )
    except (OSError, TimeoutError):
        return False
    try:
        if probe.type == "tcp":
            return True
        writer.write(
            f"GET {probe.path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), probe.timeout)
        parts = line.split()
        return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


# --- dialing --------------------------------------------------------------------------------


async def open_connection(
    addr: Address, dialer: DialerConfig, base_dir: str, over: asyncio.Transport | None = None
) -> asyncio.Transport:
    """Open a transport to ``addr`` with ``dialer``; over an existing tunnel when ``over``.

    Raises ``OSError``, ``TimeoutError``, ``ssl.SSLError`` or ``TransportError``.
    """
    loop = asyncio.get_running_loop()
    host = addr.host or "127.0.0.1"
    kind = dialer.type
    if kind == "quic":
        if over is not None:
            raise TransportError("a quic hop must be a chain's first hop (QUIC runs over UDP)")
        return await open_quic_stream(addr, dialer, base_dir)
    if kind in ("mtcp", "mtls"):
        if over is not None:
            raise TransportError(f"an {kind} hop must be a chain's first hop")
        return await open_mux_stream(addr, dialer, base_dir)
    secure = kind in ("tls", "wss")
    ctx: ssl.SSLContext | None = None
    server_name = (dialer.tls.server_name if dialer.tls else None) or host
    if secure:
        ctx = client_context(dialer.tls, base_dir, alpn=(TUNNEL_ALPN,) if kind == "tls" else ())
    if over is None:
        # TCP_NODELAY: uvloop (and asyncio) set it on every TCP transport they create.
        transport = await _create_connection(
            loop, host, addr.port, ctx, server_name if ctx else None, dialer.timeout
        )
    elif ctx is not None:
        transport = await tls_over(over, ctx, server_name, dialer.timeout)
    else:
        transport = over
    if kind in ("ws", "wss"):
        ws_host = dialer.host or str(addr)
        ws = await client_upgrade(transport, ws_host, dialer.path, dialer.keepalive, dialer.timeout)
        transport = ws
    return transport


async def _create_connection(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    server_name: str | None,
    timeout: float,
) -> asyncio.Transport:
    """``loop.create_connection`` bounded by ``timeout`` (raises ``TimeoutError``).

    One timer that cancels the dialing task: asyncio.timeout costs ~5 µs and wait_for ~9 µs
    and a second task (Python 3.11), on the path of every new tunnel.
    """
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(timeout, expire)
    try:
        transport, _ = await loop.create_connection(
            PendingProtocol, host, port, ssl=ctx, server_hostname=server_name
        )
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()
        raise TimeoutError(f"connect to {host}:{port} timed out after {timeout:g}s") from None
    finally:
        timer.cancel()
    return transport


@dataclass(frozen=True, slots=True)
class Dialed:
    """A connection through a chain, its events buffered until ``pending.hand_over``."""

    transport: asyncio.Transport
    pending: PendingProtocol
    #: Node of the first hop (``""`` for a direct connection).
    node: str
    #: The relay transport of the last hop, to check or flush its header (None when direct).
    tunnel: RelayClientTransport | ResumableTunnel | None


def _attach_pending(transport: asyncio.Transport) -> PendingProtocol:
    pending = PendingProtocol()
    transport.set_protocol(pending)
    pending.connection_made(transport)
    if isinstance(transport, LayeredTransport):
        transport.start()
    return pending


class Chain:
    """Runtime form of a chain config; holds the nodes' health across connections.

    A QUIC node that a failed dial benched is re-probed in the background (``_reprobe``)
    until it answers, then un-benched: a hop listing a QUIC and a WSS/TLS node for the same
    core falls back to TCP while UDP is blocked and moves back to QUIC once it passes again.
    """

    def __init__(self, config: ChainConfig, base_dir: str) -> None:
        self.config = config
        self.name = config.name
        self.base_dir = base_dir
        self.hops = [NodeGroup(h.name, h.nodes, h.selector, h.probe) for h in config.hops]
        #: Re-probes of benched QUIC nodes, by node name.
        self._reprobes: dict[str, asyncio.Task[None]] = {}
        self._stopped = False
        #: Counters of resumable streams (set by the node; None: counted nowhere).
        self.resume_stats: ResumeStats | None = None

    async def dial(
        self,
        target: Address | None,
        key: str | None = None,
        exclude: frozenset[str] = frozenset(),
        candidates: list[NodeState] | None = None,
    ) -> Dialed:
        """Open a tunnel through every hop to ``target`` (None: the last hop's default target).

        Nodes of the first hop are tried in selector order (or in ``candidates`` order, when
        the caller already asked the selector) until one answers; a node that fails is
        benched per its selector. Raises ``DialError`` when none could be reached.
        """
        loop = asyncio.get_running_loop()
        first = self.hops[0]
        last_error = "no nodes"
        last_node = ""
        if candidates is None:
            candidates = first.candidates(loop.time(), key)
        for node in candidates:
            if node.name in exclude:
                continue
            try:
                tunnel = await self._through(node, target, key)
            except (OSError, TimeoutError, ssl.SSLError, TransportError) as exc:
                node.mark_failed(loop.time(), first.selector)
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                last_node = node.name
                log.warning("chain %s: node %s failed: %s", self.name, node.name, last_error)
                if node.config.dialer.type == "quic" and not node.available(loop.time()):
                    self._reprobe_later(node)
                continue
            node.mark_ok()
            options = self._last_connector(node).resume
            if options is not None:
                # The core's node answers resumes for this stream whatever the transport.
                async def redial(
                    feature: bytes, node: NodeState = node
                ) -> tuple[RelayClientTransport, PendingProtocol, bytes]:
                    return await self._resume_dial(node, target, key, feature)

                resumable = ResumableTunnel(tunnel, redial, options, self.resume_stats)
                return Dialed(resumable, _attach_pending(resumable), node.name, resumable)
            return Dialed(tunnel, _attach_pending(tunnel), node.name, tunnel)
        raise DialError(f"chain {self.name}: no node reachable ({last_error})", last_node)

    def _last_connector(self, first: NodeState) -> ConnectorConfig:
        """The connector of the last hop's node (the core) when the chain starts at ``first``."""
        node = first if len(self.hops) == 1 else self.hops[-1].nodes[0]
        return node.config.connector or ConnectorConfig()

    async def _resume_dial(
        self, original: NodeState, target: Address | None, key: str | None, feature: bytes
    ) -> tuple[RelayClientTransport, PendingProtocol, bytes]:
        """Resume a stream: a tunnel through the first hop's nodes (the one that carried the
        stream first while it is healthy, then the others in selector order, so a QUIC node
        that stopped answering falls back to a WSS/TLS node of the same core) whose core
        accepts ``feature``. A node whose core answers but refuses (it does not hold the
        stream, or not for us) is skipped; when every node refused, raises ``ResumeGone``;
        when some could not be reached, ``DialError`` (the caller tries again later).
        """
        loop = asyncio.get_running_loop()
        first = self.hops[0]
        order = first.candidates(loop.time(), key)
        if original in order and original.available(loop.time()):
            order.remove(original)
            order.insert(0, original)
        refused = 0
        last_error = "no nodes"
        for node in order:
            tunnel: RelayClientTransport | None = None
            try:
                tunnel = await self._through(node, target, key, resume=feature)
                waiter = AnswerWaiter()
                tunnel.on_response = waiter.answered
                tunnel.set_protocol(waiter)
                waiter.connection_made(tunnel)
                tunnel.start()
                tunnel.flush_header()
                response = await asyncio.wait_for(waiter.answer, node.config.dialer.timeout)
            except RelayRefused as exc:
                refused += 1
                last_error = f"{node.name}: {exc}"
                continue
            except (OSError, TimeoutError, ssl.SSLError, TransportError) as exc:
                if tunnel is not None:
                    tunnel.abort()
                node.mark_failed(loop.time(), first.selector)
                last_error = f"{node.name}: {type(exc).__name__}: {exc}"
                log.info("chain %s: resume via node %s failed: %s", self.name, node.name, exc)
                if node.config.dialer.type == "quic" and not node.available(loop.time()):
                    self._reprobe_later(node)
                continue
            node.mark_ok()
            if response.resume is None:  # the core lost the feature (a config change)
                tunnel.close()
                refused += 1
                continue
            return tunnel, waiter, response.resume
        if refused == len(order):
            raise ResumeGone(f"chain {self.name}: no node holds the stream ({last_error})")
        raise DialError(f"chain {self.name}: resume failed ({last_error})")

    async def _through(
        self,
        first: NodeState,
        target: Address | None,
        key: str | None,
        resume: bytes | None = None,
    ) -> RelayClientTransport:
        loop = asyncio.get_running_loop()
        transport = await open_connection(first.config.addr, first.config.dialer, self.base_dir)
        node = first
        for index in range(len(self.hops)):
            if index + 1 < len(self.hops):
                following = self.hops[index + 1].candidates(loop.time(), key)[0]
                next_addr: Address | None = following.config.addr
            else:
                following, next_addr = node, target
            auth = node.config.connector.auth if node.config.connector else None
            request = relay_v1.Request(
                username=auth.username if auth else None,
                password=auth.password if auth else None,
                target=(next_addr.host or "127.0.0.1", next_addr.port) if next_addr else None,
                resume=resume if following is node else None,
            )
            transport = RelayClientTransport(transport, request)
            if following is not node:
                transport = await open_connection(
                    following.config.addr, following.config.dialer, self.base_dir, over=transport
                )
                node = following
        assert isinstance(transport, RelayClientTransport)
        return transport

    def _reprobe_later(self, node: NodeState) -> None:
        if self._stopped or node.name in self._reprobes:
            return
        task = asyncio.get_running_loop().create_task(self._reprobe(node))
        self._reprobes[node.name] = task
        task.add_done_callback(lambda _: self._reprobes.pop(node.name, None))

    async def _reprobe(self, node: NodeState) -> None:
        """Try a QUIC handshake with benched ``node`` every ``reprobeInterval`` (dialer
        metadata, default 10s) until one succeeds, then un-bench it: its connection is then
        pooled, so the next stream uses QUIC without waiting for a handshake.

        Until then the node stays benched past ``failTimeout``, up to the end of the next
        probe: when UDP is blocked silently, a client trying the node again would wait out the
        whole handshake timeout before falling back, every ``failTimeout``. (cloudflared falls
        back to HTTP/2 for good, cloudflared#1534; we come back.) Ends early when a dial of the
        node succeeded meanwhile; cancelled by ``stop_probes``.
        """
        loop = asyncio.get_running_loop()
        dialer = node.config.dialer
        try:
            interval = QuicOptions.from_metadata(dialer.metadata).reprobe_interval
        except ValueError:  # refused by the loader already; the dial reports it too
            return
        while True:
            node.failed_until = max(node.failed_until, loop.time() + interval + dialer.timeout)
            await asyncio.sleep(interval)
            if node.fails == 0:
                return  # a client's dial got through meanwhile
            # Benched through the whole probe and one interval after it: a probe can overrun
            # its timeout by a few milliseconds, and a client dialing in that gap would wait
            # out a whole handshake timeout.
            node.failed_until = max(node.failed_until, loop.time() + dialer.timeout + interval)
            try:
                await probe_quic(node.config.addr, dialer, self.base_dir)
            except (OSError, TimeoutError, ssl.SSLError, TransportError) as exc:
                log.debug("chain %s: QUIC node %s still unreachable: %s", self.name, node.name, exc)
                continue
            log.info(
                "chain %s: QUIC node %s answers again; new streams use it", self.name, node.name
            )
            node.mark_ok()
            return

    def start_probes(self) -> None:
        self._stopped = False
        for hop in self.hops:
            hop.start_probes()

    async def stop_probes(self) -> None:
        self._stopped = True
        tasks = list(self._reprobes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hop in self.hops:
            await hop.stop_probes()


#: Plain TCP dialers by timeout: one per distinct timeout, not one per connection (a core
#: dials its target once per tunnel).
_TCP_DIALERS: dict[float, DialerConfig] = {}


async def dial_direct(addr: Address, timeout: float) -> Dialed:
    """Plain TCP to ``addr`` (a forwarder node, no chain)."""
    dialer = _TCP_DIALERS.get(timeout)
    if dialer is None:
        dialer = _TCP_DIALERS[timeout] = DialerConfig(type="tcp", timeout=timeout)
    transport = await open_connection(addr, dialer, ".")
    pending = transport.get_protocol()
    assert isinstance(pending, PendingProtocol)
    return Dialed(transport, pending, "", None)
