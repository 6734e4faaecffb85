"""A streamed chat completion through edge → core → origin, each in its own process.

``make demo`` runs this until the master can deploy the relays itself: it starts the LLM-like
origin, a core relay (tunnel server over TLS with a throwaway certificate) and an edge relay
(HTTP entry chained to the core), then streams one completion through the edge and prints
every token with its delay over the tunnel.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _self_signed(directory: Path) -> tuple[str, str]:
    cert, key = directory / "core.pem", directory / "core.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def _configs(workdir: Path, origin: int, core: int, edge: int) -> tuple[Path, Path]:
    cert, key = _self_signed(workdir)
    auth = {"username": "edge-demo", "password": os.urandom(8).hex()}
    core_cfg = {
        "services": [{
            "name": "core", "addr": f"127.0.0.1:{core}",
            "listener": {"type": "tls", "tls": {"certFile": cert, "keyFile": key}},
            "handler": {"type": "relay", "auth": auth},
            "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin}"}]},
        }]
    }  # fmt: skip
    edge_cfg = {
        "services": [{
            "name": "edge", "addr": f"127.0.0.1:{edge}", "listener": {"type": "tcp"},
            "handler": {"type": "http", "chain": "to-core"},
        }],
        "chains": [{"name": "to-core", "hops": [{"name": "core", "nodes": [{
            "name": "core-1", "addr": f"127.0.0.1:{core}",
            "connector": {"type": "relay", "auth": auth},
            "dialer": {"type": "tls", "tls": {"caFile": cert, "serverName": "localhost"}},
        }]}]}],
    }  # fmt: skip
    paths = workdir / "core.yaml", workdir / "edge.yaml"
    paths[0].write_text(yaml.safe_dump(core_cfg))
    paths[1].write_text(yaml.safe_dump(edge_cfg))
    return paths


def _stream(edge: int) -> None:
    body = json.dumps({
        "model": "demo", "stream": True, "max_tokens": 30, "interval_ms": 50, "ttfb_ms": 300,
        "messages": [{"role": "user", "content": "Say something through the tunnel."}],
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{edge}/v1/chat/completions", data=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    started = time.time()
    first = None
    delays: list[float] = []
    with urllib.request.urlopen(request, timeout=30) as response:
        print(f"HTTP {response.status}, x-request-id {response.headers['x-request-id']}")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.time()
            event = json.loads(line[6:])
            first = first or now
            delays.append((now - event["sent_at"]) * 1000)
            content = event["choices"][0]["delta"].get("content", "")
            print(f"  +{(now - started) * 1000:7.1f} ms  tunnel {delays[-1]:5.2f} ms  {content!r}")
    delays.sort()
    print(
        f"time to first token {(first or started) - started:.3f} s; "
        f"tunnel delay per token p50 {delays[len(delays) // 2]:.2f} ms, max {delays[-1]:.2f} ms"
    )


def main() -> int:
    origin, core, edge = _free_port(), _free_port(), _free_port()
    relay = [sys.executable, "-m", "relay"]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="aicdn-demo-") as tmp:
        core_cfg, edge_cfg = _configs(Path(tmp), origin, core, edge)
        try:
            listen = f"127.0.0.1:{origin}"
            procs.append(subprocess.Popen([*relay, "dev-origin", "--listen", listen]))
            procs.append(subprocess.Popen([*relay, "run", "-C", str(core_cfg)]))
            procs.append(subprocess.Popen([*relay, "run", "-C", str(edge_cfg)]))
            for port in (origin, core, edge):
                _wait_port(port)
            print(f"origin :{origin}  core :{core} (relay over TLS)  edge :{edge} (http)")
            _stream(edge)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
