"""Protections on real sockets: client IPs from PROXY headers, shield, CC, limits, admission."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from relay.policy import encode_v1, encode_v2
from tests.certs import CA, CertPair
from tests.conftest import StartNode
from tests.helpers import Response, read_response, request_bytes


def _service(origin: int, **extra: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "name": "entry",
        "addr": "127.0.0.1:0",
        "listener": {"type": "tcp", "metadata": {"proxyProtocol": 1}},
        "handler": {"type": "http"},
        "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin}"}]},
    }
    service.update(extra)
    return service


async def _get(
    port: int,
    client_ip: str,
    path: str = "/healthz",
    version: int = 1,
    ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Response | None:
    """One request from ``client_ip`` (as a balancer would announce it); None if refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encode = encode_v1 if version == 1 else encode_v2
    writer.write(encode((client_ip, 40000), ("127.0.0.1", port)))
    if ssl_context is not None:
        await writer.start_tls(ssl_context, server_hostname="localhost")
    writer.write(request_bytes("GET", path, headers={"connection": "close", **(headers or {})}))
    try:
        return await asyncio.wait_for(read_response(reader), 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    finally:
        writer.close()


async def test_shield_blocks_the_eleventh_request_of_one_ip_only(
    start_node: StartNode, origin: int
) -> None:
    node = await start_node(
        {
            "services": [_service(origin, shield="five")],
            "shields": [
                {"name": "five", "window": "5s", "maxRequests": 10, "blockDuration": "1s",
                 "whitelist": ["198.51.100.7"]}
            ],
        }
    )  # fmt: skip
    port = node.bound_port("entry")

    answers = [await _get(port, "203.0.113.9") for _ in range(11)]
    other = await _get(port, "203.0.113.10")
    trusted = [await _get(port, "198.51.100.7") for _ in range(15)]

    assert [a.status for a in answers[:10] if a] == [200] * 10
    blocked = answers[10]
    assert blocked is not None and blocked.status == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert json.loads(blocked.body)["error"] == "too_many_requests"
    assert other is not None and other.status == 200
    assert all(a is not None and a.status == 200 for a in trusted)
    assert node.runtime("entry").stats.blocked["shield"] >= 1

    await asyncio.sleep(1.1)  # blockDuration over
    again = await _get(port, "203.0.113.9")
    assert again is not None and again.status == 200


async def test_cc_blocks_the_flooders_while_light_clients_pass(
    start_node: StartNode, origin: int
) -> None:
    node = await start_node(
        {
            "services": [_service(origin, cc="cc")],
            "ccs": [{"name": "cc", "rateLimit": 20, "burstSize": 20, "blockDuration": "30s",
                     "checkInterval": "500ms"}],
        }
    )  # fmt: skip
    port = node.bound_port("entry")
    flooders = ["192.0.2.1", "192.0.2.2"]

    for _ in range(3):  # three check intervals of flooding
        await asyncio.gather(*(_get(port, ip) for ip in flooders for _ in range(25)))
        light = await _get(port, "203.0.113.50")
        assert light is not None and light.status == 200
        await asyncio.sleep(0.5)

    refused = [await _get(port, ip) for ip in flooders]
    assert all(r is not None and r.status == 429 for r in refused)
    light = await _get(port, "203.0.113.51")
    assert light is not None and light.status == 200
    assert node.runtime("entry").stats.blocked["cc"] >= 2


async def test_admission_and_climiter_on_an_l4_service(start_node: StartNode, origin: int) -> None:
    forward = _service(origin, admission="office", climiter="one-each")
    forward["handler"] = {"type": "forward"}
    forward["listener"] = {"type": "tcp", "metadata": {"proxyProtocol": 2}}
    node = await start_node(
        {
            "services": [forward],
            "admissions": [{"name": "office", "whitelist": True, "matchers": ["10.0.0.0/8"]}],
            "climiters": [{"name": "one-each", "limits": ["$$ 1"]}],
        }
    )
    port = node.bound_port("entry")

    outsider = await _get(port, "203.0.113.1", version=2)
    insider = await _get(port, "10.1.2.3", version=2)
    # A second concurrent connection from the same IP is over its climiter limit.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_v2(("10.9.9.9", 1), ("127.0.0.1", port)))
    await asyncio.sleep(0.1)
    second = await _get(port, "10.9.9.9", version=2)
    writer.close()

    assert outsider is None  # closed: blocked L4 connections get no answer
    assert insider is not None and insider.status == 200
    assert second is None
    blocked = node.runtime("entry").stats.blocked
    assert blocked["admission"] == 1 and blocked["climiter"] == 1


async def test_tls_listener_behind_a_balancer_reads_proxy_header_first(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    service = _service(origin, shield="two")
    service["listener"] = {
        "type": "tls",
        "tls": {"certFile": str(server_cert.cert_file), "keyFile": str(server_cert.key_file)},
        "metadata": {"proxyProtocol": 1},
    }
    node = await start_node(
        {"services": [service], "shields": [{"name": "two", "maxRequests": 2, "window": "5s"}]}
    )
    ctx = ssl.create_default_context(cafile=str(ca.cert_file))

    answers = [
        await _get(node.bound_port("entry"), "203.0.113.77", ssl_context=ctx) for _ in range(3)
    ]

    assert [a.status if a else None for a in answers] == [200, 200, 429]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    start_node: StartNode, origin: int
) -> None:
    service = _service(origin, shield="one")
    service["listener"] = {"type": "tcp"}
    service["handler"] = {"type": "http", "metadata": {"trustedProxies": ["127.0.0.1"]}}
    node = await start_node(
        {"services": [service], "shields": [{"name": "one", "maxRequests": 1, "window": "5s"}]}
    )
    port = node.bound_port("entry")

    async def via_trusted_proxy(client: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("GET", "/healthz", headers={
            "connection": "close", "x-forwarded-for": f"{client}, 127.0.0.1"}))  # fmt: skip
        answer = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        return answer.status

    # Each client behind the proxy has its own allowance of one request.
    assert [await via_trusted_proxy("203.0.113.1"), await via_trusted_proxy("203.0.113.2")] == [
        200,
        200,
    ]
    assert await via_trusted_proxy("203.0.113.1") == 429
