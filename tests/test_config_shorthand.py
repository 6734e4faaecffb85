"""gost-style -L/-F shorthand (DESIGN §3.1) builds the same config a file would."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relay.config import (
    Address,
    Auth,
    ChainConfig,
    ConfigError,
    ConfigIssue,
    ConnectorConfig,
    DialerConfig,
    ForwarderConfig,
    HandlerConfig,
    HopConfig,
    ListenerConfig,
    NodeConfig,
    TLSConfig,
    config_from_urls,
)


def issues_of(listen: list[str], forward: list[str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        config_from_urls(listen, forward or [])
    return list(info.value.issues)


def test_ws_entry_through_a_tls_relay_hop() -> None:
    config = config_from_urls(["ws://:8080"], ["relay+tls://core:8443"])
    (service,) = config.services
    assert service.name == "service-0"
    assert service.addr == Address("", 8080)
    assert service.listener == ListenerConfig(type="ws")
    assert service.handler == HandlerConfig(type="http", chain="chain-0")
    assert service.forwarder is None
    assert config.chains == (
        ChainConfig(
            name="chain-0",
            hops=(
                HopConfig(
                    name="hop-0",
                    nodes=(
                        NodeConfig(
                            name="node-0",
                            addr=Address("core", 8443),
                            connector=ConnectorConfig(),
                            dialer=DialerConfig(type="tls"),
                        ),
                    ),
                ),
            ),
        ),
    )


def test_relay_server_with_auth_and_its_only_target() -> None:
    (service,) = config_from_urls(["relay://user:pass@:8443/127.0.0.1:8000"], []).services
    assert service.addr == Address("", 8443)
    assert service.listener.type == "tcp"
    assert service.handler == HandlerConfig(type="relay", auth=Auth("user", "pass"))
    assert service.forwarder == ForwarderConfig(
        nodes=(NodeConfig(name="target-0", addr=Address("127.0.0.1", 8000)),)
    )


def test_transport_word_with_a_target_is_a_port_forward() -> None:
    (service,) = config_from_urls(["tcp://:9000/127.0.0.1:8000,10.0.0.2:8000"]).services
    assert service.handler.type == "forward"
    assert service.forwarder is not None
    assert [str(node.addr) for node in service.forwarder.nodes] == [
        "127.0.0.1:8000",
        "10.0.0.2:8000",
    ]


def test_http_entry_through_a_ws_hop_with_a_path() -> None:
    config = config_from_urls(["http://:8080"], ["relay+ws://core:8444?path=/tunnel"])
    assert config.services[0].listener == ListenerConfig(type="tcp")
    assert config.services[0].handler.type == "http"
    node = config.chains[0].hops[0].nodes[0]
    assert node.dialer == DialerConfig(type="ws", path="/tunnel")


@pytest.mark.parametrize(
    ("url", "handler", "transport"),
    [
        ("ws://:8080", "http", "ws"),
        ("tls://:8080/o:1", "forward", "tls"),
        ("quic://:8080", "http", "quic"),
        ("http3://:8080/o:1", "http", "http3"),
        ("http://:8080", "http", "tcp"),
        ("forward://:8080/o:1", "forward", "tcp"),
        ("relay+wss://:8080/o:1", "relay", "wss"),
        ("relay+mtls://:8443/o:1", "relay", "mtls"),
        ("mtcp://:8080", "http", "mtcp"),
        ("HTTP+WS://:8080", "http", "ws"),
    ],
)
def test_scheme_words(tmp_path: Path, url: str, handler: str, transport: str) -> None:
    # TLS listeners need a certificate: give one via the query (existing files, any content).
    for name in ("c.pem", "c.key"):
        (tmp_path / name).touch()
    if transport in ("tls", "wss", "mtls", "quic", "http3"):
        url += ("&" if "?" in url else "?") + f"certFile={tmp_path}/c.pem&keyFile={tmp_path}/c.key"
    (service,) = config_from_urls([url], ["relay://core:8443"]).services
    assert (service.handler.type, service.listener.type) == (handler, transport)


def test_query_parameters_reach_listener_handler_dialer_and_tls() -> None:
    config = config_from_urls(
        ["ws://:8080?path=/ws&keepalive=20s&ttfbTimeout=30s&sseHeartbeat=10s&bufferSize=4096"],
        [
            "relay+wss://edge:s%40cret@core.example:8444"
            "?path=/t&host=cdn.example&serverName=core.example&insecureSkipVerify=true&timeout=3s",
        ],
    )
    service = config.services[0]
    assert service.listener == ListenerConfig(type="ws", path="/ws", metadata={"keepalive": 20.0})
    assert service.handler.http.ttfb_timeout == 30.0
    assert service.handler.metadata == {"sseHeartbeat": 10.0}
    assert service.buffer_size == 4096
    node = config.chains[0].hops[0].nodes[0]
    assert node.connector == ConnectorConfig(auth=Auth("edge", "s@cret"))
    assert node.dialer == DialerConfig(
        type="wss",
        tls=TLSConfig(server_name="core.example", insecure_skip_verify=True),
        path="/t",
        host="cdn.example",
        timeout=3.0,
    )


def test_each_forward_url_is_one_hop_of_the_shared_chain() -> None:
    config = config_from_urls(
        ["http://:8080", "forward://:9000"], ["relay://hk:8443", "relay+quic://cn:8443"]
    )
    (chain,) = config.chains
    assert [hop.name for hop in chain.hops] == ["hop-0", "hop-1"]
    assert [hop.nodes[0].addr for hop in chain.hops] == [Address("hk", 8443), Address("cn", 8443)]
    assert [hop.nodes[0].dialer.type for hop in chain.hops] == ["tcp", "quic"]
    assert {service.handler.chain for service in config.services} == {"chain-0"}


def test_a_multiplexed_hop_from_the_command_line() -> None:
    config = config_from_urls(
        ["http://:8080"], ["relay+mtls://edge:pw@cn:8443?serverName=core.example"]
    )
    node = config.chains[0].hops[0].nodes[0]
    assert node.dialer.type == "mtls"
    assert node.dialer.tls == TLSConfig(server_name="core.example")


# ---------------------------------------------------------------------------------------------
# Errors point at the flag


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (":8080", "bad URL ':8080': expected scheme://"),
        ("ws://", "no host:port"),
        ("socks5://:1080", "unknown scheme 'socks5'"),
        ("http+ws+tls://:1", "bad scheme 'http+ws+tls'"),
        ("tcp://:9000/a:1,,b:2", "empty target"),
        ("http://:8080?colour=blue", "unknown query parameter(s) colour; expected one of path"),
        ("http://:8080?path=/a&path=/b", "query parameter 'path' given more than once"),
    ],
)
def test_bad_listen_url(url: str, fragment: str) -> None:
    (issue,) = issues_of([url], ["relay://core:1"])
    assert issue.path == "-L[0]"
    assert fragment in issue.message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("core:8443", "expected scheme://"),
        ("http+tcp://core:8443", "unknown connector 'http'"),
        ("h2://core:8443", "unknown scheme 'h2'"),
        ("relay://core:8443/origin:80", "a -F node takes no target path"),
        ("relay://core:8443?certfile=x", "unknown query parameter(s) certfile"),
    ],
)
def test_bad_forward_url(url: str, fragment: str) -> None:
    (issue,) = issues_of(["http://:8080"], [url])
    assert issue.path.startswith("-F[0]")
    assert fragment in issue.message


def test_field_errors_are_reported_against_the_flag() -> None:
    issues = issues_of(
        ["http://:8080", "relay+qic://:9000/o:1", "relay://:8443"],
        ["relay://core:8443", "relay+wsx://core:0"],
    )
    assert [(i.path, i.message.split(";")[0]) for i in issues] == [
        ("-L[1].listener.type", "unknown listener 'qic'"),
        ("-F[1].addr", "port 0 in 'core:0' is out of range 1-65535"),
        ("-F[1].dialer.type", "unknown dialer 'wsx'"),
    ]


def test_relay_without_target_or_chain_is_refused() -> None:
    (issue,) = issues_of(["relay://:8443"])
    assert issue.path == "-L[0].forwarder"
    assert "relay handler needs a forwarder" in issue.message


def test_url_errors_and_field_errors_come_together() -> None:
    issues = issues_of(["nonsense", "http://:8080", "http://0.0.0.0:8080"], ["relay://core:1"])
    assert [str(i) for i in issues] == [
        "-L[0]: bad URL 'nonsense': expected scheme://[user:pass@]host:port[/target][?key=value]",
        "-L[2].addr: tcp port 8080 is already used by -L[1].addr (:8080)",
    ]


def test_no_listen_urls() -> None:
    (issue,) = issues_of([])
    assert issue.path == "-L"
    assert "no services" in issue.message


def test_random_urls_only_ever_raise_config_error() -> None:
    rng = random.Random(3)
    parts = [
        ["", "x", "relay", "ws", "http3", "relay+quic", "a+b+c", "tcp", "forward", "HTTP+TLS"],
        ["://", ":/", "", ":///"],
        ["", "u:p@", "@", "u@", "%zz:%@"],
        [":8080", "[::1]:1", "h:0", "h:99999", "", "[::1", "h", "é:1"],
        ["", "/", "/a:1", "/a:1,", "/a:1,b:2", "/[::1]:80"],
        ["", "?", "?path=/x", "?path=x", "?keepalive=-1", "?insecureSkipVerify=maybe", "?a=&=b"],
    ]

    def url() -> str:
        return "".join(rng.choice(options) for options in parts)

    for _ in range(2000):
        listen = [url() for _ in range(rng.randint(0, 3))]
        forward = [url() for _ in range(rng.randint(0, 2))]
        try:
            config_from_urls(listen, forward)
        except ConfigError as exc:
            assert exc.issues
