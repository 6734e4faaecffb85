"""``python -m bench.dns_qps``: queries per second of ``aicdn-master dns`` on loopback.

Starts nx-27017 (or uses ``--mongo-uri``), stores ``--edges`` heartbeating edges spread over
hk, sg and us, starts the real ``aicdn-master dns`` process (uvloop, one event loop) and sends
it A queries over UDP for ``--seconds``, each with an EDNS Client Subnet drawn from networks of
several countries, keeping ``--window`` queries in flight from one client process. Every reply
is parsed far enough to check its id and RCODE (NOERROR with answers).

Measured: replies per second, round-trip p50/p99 (client side, includes the client's own
queueing), timeouts, and the server's CPU seconds per 1,000 replies (from /proc). The machine
(2 cores) is shared with whatever else runs: the numbers include that contention. Results are
printed and written to ``bench/results/dns-qps-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnslib import EDNS0, DNSRecord, EDNSOption

from master_api.dns.wire import ClientSubnet
from master_api.models import Node, NodeMetrics
from master_api.repos import Repos
from master_api.store import EmbeddedMongo, Store
from tests.master.helpers import free_low_port

RESULTS = Path(__file__).parent / "results"
DB = "aicdn_bench_dns"
NAME = "api.cdn.bench"
SUBNETS = [
    "203.80.96.0/24",  # HK
    "202.12.27.0/24",  # JP
    "223.5.5.0/24",  # CN
    "165.21.83.0/24",  # SG
    "1.1.1.0/24",  # AU
    "8.8.8.0/24",  # US
    "193.0.14.0/24",  # NL
    "2001:4860:4860::/48",  # US, IPv6
]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seed(uri: str, edges: int) -> None:
    repos = Repos(Store(uri, DB, 5.0).db)
    repos.nodes.collection.delete_many({})
    now = time.time()
    for i in range(edges):
        region = ("hk", "sg", "us")[i % 3]
        name = f"edge-{region}-{i}"
        addr = f"192.0.2.{i % 250 + 1}"
        node = Node(name, name, "edge", region, addr, 443, (), {}, "online", "", now, now)
        repos.nodes.create(node)
        repos.nodes.record_heartbeat(name, now + 3600, NodeMetrics(), None)  # fresh all run


def _queries(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        network = ipaddress.ip_network(SUBNETS[i % len(SUBNETS)])
        query = DNSRecord.question(NAME, "A")
        query.header.id = i
        ecs = ClientSubnet(network.network_address, network.prefixlen).reply(0)
        query.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, ecs)]))
        out.append(query.pack())
    return out


def _load(port: int, seconds: float, window: int) -> dict[str, Any]:
    """Keep ``window`` queries in flight for ``seconds``; ids are 16 bits, reused in turn."""
    packets = _queries(65536)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    bad = timeouts = 0
    next_id = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        while len(sent_at) < window:
            sock.send(packets[next_id])
            sent_at[next_id] = time.perf_counter()
            next_id = (next_id + 1) & 0xFFFF
        try:
            data = sock.recv(2048)
        except TimeoutError:
            timeouts += len(sent_at)
            sent_at.clear()
            continue
        now = time.perf_counter()
        qid = int.from_bytes(data[:2], "big")
        began = sent_at.pop(qid, None)
        if began is None:
            continue
        # NOERROR with at least one answer (RCODE in byte 3, ANCOUNT in bytes 6-7)
        if data[3] & 0x0F != 0 or int.from_bytes(data[6:8], "big") == 0:
            bad += 1
        rtts.append(now - began)
    elapsed = time.perf_counter() - start
    sock.close()
    rtts.sort()
    return {
        "replies": len(rtts),
        "seconds": round(elapsed, 2),
        "replies_per_second": round(len(rtts) / elapsed),
        "rtt_p50_ms": round(statistics.median(rtts) * 1000, 3) if rtts else None,
        "rtt_p99_ms": round(rtts[int(len(rtts) * 0.99)] * 1000, 3) if rtts else None,
        "bad_replies": bad,
        "timeouts": timeouts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=32, help="queries in flight")
    parser.add_argument("--edges", type=int, default=30)
    parser.add_argument("--mongo-uri", help="use this store instead of starting nx-27017")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        store: EmbeddedMongo | None = None
        uri = args.mongo_uri
        if uri is None:
            store = EmbeddedMongo(Path(tmp) / "mongo", free_low_port())
            store.start()
            uri = store.uri
        server: subprocess.Popen[bytes] | None = None
        try:
            _seed(uri, args.edges)
            port = free_low_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("AICDN_")}
            env.update(
                AICDN_MONGO_URI=uri,
                AICDN_MONGO_DB=DB,
                AICDN_DNS_ADDR=f"127.0.0.1:{port}",
                AICDN_DNS_ZONE="cdn.bench",
                AICDN_DNS_HOSTNAMES=NAME,
                AICDN_LOG_LEVEL="warning",
            )
            server = subprocess.Popen([sys.executable, "-m", "master_api", "dns"], env=env)
            probe = _queries(1)[0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.2)
                for _ in range(150):
                    sock.sendto(probe, ("127.0.0.1", port))
                    try:
                        if sock.recv(2048)[3] & 0x0F == 0:
                            break
                    except OSError:
                        time.sleep(0.1)
                else:
                    raise SystemExit("the DNS server did not answer within 30 s")
            cpu_before = _cpu_seconds(server.pid)
            result = _load(port, args.seconds, args.window)
            cpu = _cpu_seconds(server.pid) - cpu_before
            result["server_cpu_seconds"] = round(cpu, 2)
            result["server_cpu_ms_per_1000_replies"] = (
                round(cpu * 1e6 / result["replies"], 1) if result["replies"] else None
            )
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
            if store is not None:
                store.stop()
    result.update(window=args.window, edges=args.edges, loadavg=os.getloadavg()[0])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dns-qps-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    random.seed(1)
    sys.exit(main())
