# Copyright (c) AI CDN Tunnel authors
# SPDX-License-Identifier: Apache-2.0
"""Health probe of a relay node: one real request through each of its services.

Run with the Python of the relay's virtualenv (it reads the config with the relay's own loader
and speaks the relay protocol with the relay's own encoder)::

    relay-probe --config /opt/aicdn/current/relay.yaml

For every service it can probe on the loopback address:

* ``http`` handler on a tcp or tls listener: the request goes to the service like a client's;
* ``relay`` handler on a tcp or tls listener: a relay v1 header without an address ("your
  default target", i.e. the forwarder's origin) with the service's credentials, then the
  request, like an edge's;

the answer must be HTTP 200 and contain ``--expect``. Services on other transports are
reported as skipped. Prints one JSON document; exits 0 when every probed service answered as
expected and at least one was probed, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from typing import Any

from relay.config import ConfigError, load_config_file
from relay.protocols import relay_v1

DEFAULT_BODY = {
    "model": "health-probe",
    "messages": [{"role": "user", "content": "ping"}],
    "stream": True,
    "max_tokens": 3,
}


def _http_request(path: str, body: bytes, host: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aicdn-relay-probe\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _connect(host: str, port: int, use_tls: bool, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if use_tls:
        context = ssl.create_default_context()
        # A loopback probe checks that the node serves, not who it is: peers verify that.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    return sock


def _read_all(sock: socket.socket, deadline: float) -> tuple[bytes, float | None]:
    data = b""
    first: float | None = None
    while True:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            return data, first
        if first is None:
            first = time.monotonic()
        data += chunk


def probe_service(
    service: Any, host: str, path: str, body: bytes, expect: str, timeout: float
) -> dict[str, Any]:
    kind = service.handler.type
    listener = service.listener.type
    result: dict[str, Any] = {"service": service.name, "handler": kind, "listener": listener}
    if kind not in ("http", "relay") or listener not in ("tcp", "tls"):
        result["skipped"] = f"{kind} handler on a {listener} listener is not probed"
        return result
    port = service.addr.port
    result["addr"] = f"{host}:{port}"
    started = time.monotonic()
    try:
        with _connect(host, port, listener == "tls", timeout) as sock:
            payload = _http_request(path, body, host)
            if kind == "relay":
                auth = service.handler.auth
                request = relay_v1.Request(
                    username=auth.username if auth else None,
                    password=auth.password if auth else None,
                )
                payload = relay_v1.encode_request(request) + payload
            sock.sendall(payload)
            data, first = _read_all(sock, started + timeout)
    except (OSError, ssl.SSLError) as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return result
    if kind == "relay":
        parsed = relay_v1.parse_response(data)
        if parsed is None:
            result.update(ok=False, error="no relay response from the tunnel server")
            return result
        response, data = parsed
        if response.status != relay_v1.Status.OK:
            result.update(ok=False, error=f"tunnel refused: status {response.status}")
            return result
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    result.update(
        status=status,
        events=data.count(b"data: "),
        ttfb_ms=round((first - started) * 1000, 1) if first else None,
        total_ms=round((time.monotonic() - started) * 1000, 1),
    )
    result["ok"] = status == 200 and expect.encode() in data
    if not result["ok"]:
        result["error"] = f"answer {status_line!r} without {expect!r}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay-probe", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument("--config", required=True, help="the node's relay config file")
    parser.add_argument("--host", default="127.0.0.1", help="address the services are probed at")
    parser.add_argument("--path", default="/v1/chat/completions", help="request path")
    parser.add_argument("--body", default=json.dumps(DEFAULT_BODY), help="request body (JSON)")
    parser.add_argument("--expect", default="data: [DONE]", help="text the answer must contain")
    parser.add_argument("--service", action="append", default=[], help="probe only these")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        config = load_config_file(args.config)
    except ConfigError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    services = [s for s in config.services if not args.service or s.name in args.service]
    body = args.body.encode()
    results = [
        probe_service(s, args.host, args.path, body, args.expect, args.timeout) for s in services
    ]
    probed = [r for r in results if "skipped" not in r]
    ok = bool(probed) and all(r["ok"] for r in probed)
    print(json.dumps({"ok": ok, "probed": len(probed), "results": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
