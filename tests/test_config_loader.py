"""Config loader (DESIGN §3.2): the typed result, every error with its path, no tracebacks."""

from __future__ import annotations

import copy
import datetime
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

from relay.config import (
    Address,
    AdmissionConfig,
    APIConfig,
    Auth,
    CCConfig,
    ChainConfig,
    ConfigError,
    ConfigIssue,
    ConnectorConfig,
    DialerConfig,
    ForwarderConfig,
    HandlerConfig,
    HopConfig,
    HTTPHandlerOptions,
    LimiterConfig,
    ListenerConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    SelectorConfig,
    ServiceConfig,
    ShieldConfig,
    TLSConfig,
    config_from_mapping,
    config_to_mapping,
    load_config_file,
    load_config_text,
    parse_address,
    parse_duration,
    redacted_mapping,
)

# DESIGN §3.2's example with real values and the commented core service enabled.
FULL_YAML = """\
log: {level: info, format: json}
api: {addr: "127.0.0.1:18080", auth: {token: "api-token"}}
metrics: {addr: ":9100", path: /metrics}
tls: {certFile: edge.pem, keyFile: edge.key, caFile: ca.pem}
services:
- name: edge-https
  addr: ":443"
  listener: {type: tls}
  handler:
    type: http
    chain: to-core
    metadata: {ttfbTimeout: 600s, idleTimeout: 300s, sseHeartbeat: 15s}
  forwarder:
    nodes: [{name: origin, addr: "127.0.0.1:8000"}]
    selector: {strategy: round, maxFails: 1, failTimeout: 10s}
  admission: mgmt-allow
  shield: default
  cc: default
  climiter: per-ip-conns
  rlimiter: per-ip-rate
- name: core-quic
  addr: ":8443"
  listener: {type: quic, tls: {certFile: core.pem, keyFile: core.key}}
  handler: {type: relay, auth: {username: edge-hk-1, password: "relay-pass"}}
  forwarder: {nodes: [{name: origin, addr: "127.0.0.1:8000"}]}
chains:
- name: to-core
  hops:
  - name: core
    selector: {strategy: fifo, maxFails: 1, failTimeout: 10s}
    nodes:
    - name: core-1
      addr: "core1.example:8443"
      connector: {type: relay, auth: {username: edge-hk-1, password: "relay-pass"}}
      dialer: {type: quic, tls: {serverName: core1.example, caFile: ca.pem}}
    - name: core-1-wss
      addr: "core1.example:8444"
      connector: {type: relay, auth: {username: edge-hk-1, password: "relay-pass"}}
      dialer: {type: wss, metadata: {path: /tunnel, keepalive: 15s}}
admissions: [{name: mgmt-allow, whitelist: true, matchers: ["10.0.0.0/8"]}]
shields:
- {name: default, window: 5s, maxRequests: 10, blockDuration: 60s,
   algorithm: sliding_window, whitelist: [], blacklist: [], strict: false}
ccs:
- {name: default, rateLimit: 1000, burstSize: 2000, blockDuration: 300s, checkInterval: 1s}
climiters: [{name: per-ip-conns, limits: ["$ 100000", "$$ 200"]}]
rlimiters: [{name: per-ip-rate, limits: ["$$ 50"]}]
"""

CERT_FILES = ("edge.pem", "edge.key", "ca.pem", "core.pem", "core.key")


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A directory holding the (empty) certificate files FULL_YAML names: only existence is
    checked by the loader."""
    for name in CERT_FILES:
        (tmp_path / name).touch()
    return tmp_path


def minimal() -> dict[str, Any]:
    """The smallest valid config, as a mapping the error tests modify."""
    return {
        "services": [
            {
                "name": "svc",
                "addr": ":8080",
                "handler": {"type": "http"},
                "forwarder": {"nodes": [{"name": "origin", "addr": "127.0.0.1:8000"}]},
            }
        ]
    }


def issues_of(data: object, base_dir: str = ".") -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, base_dir)  # type: ignore[arg-type]
    assert info.value.issues, "a ConfigError always carries at least one issue"
    return list(info.value.issues)


def only_issue(data: object, base_dir: str = ".") -> ConfigIssue:
    issues = issues_of(data, base_dir)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


# ---------------------------------------------------------------------------------------------
# The happy path


def test_full_example_loads_into_the_expected_dataclasses(certs: Path) -> None:
    config = load_config_text(FULL_YAML, base_dir=str(certs))

    assert config.log == LogConfig(level="info", format="json")
    assert config.api == APIConfig(addr=Address("127.0.0.1", 18080), token="api-token")
    assert config.metrics == MetricsConfig(addr=Address("", 9100), path="/metrics")
    assert config.tls == TLSConfig(cert_file="edge.pem", key_file="edge.key", ca_file="ca.pem")
    assert config.base_dir == str(certs)
    origin = NodeConfig(name="origin", addr=Address("127.0.0.1", 8000))
    assert config.services[0] == ServiceConfig(
        name="edge-https",
        addr=Address("", 443),
        listener=ListenerConfig(type="tls"),
        handler=HandlerConfig(
            type="http",
            chain="to-core",
            http=HTTPHandlerOptions(ttfb_timeout=600.0, idle_timeout=300.0),
            metadata={"sseHeartbeat": 15.0},
        ),
        forwarder=ForwarderConfig(
            nodes=(origin,), selector=SelectorConfig(strategy="round", max_fails=1, fail_timeout=10)
        ),
        admission="mgmt-allow",
        shield="default",
        cc="default",
        climiter="per-ip-conns",
        rlimiter="per-ip-rate",
    )
    assert config.services[1] == ServiceConfig(
        name="core-quic",
        addr=Address("", 8443),
        listener=ListenerConfig(
            type="quic", tls=TLSConfig(cert_file="core.pem", key_file="core.key")
        ),
        handler=HandlerConfig(type="relay", auth=Auth("edge-hk-1", "relay-pass")),
        forwarder=ForwarderConfig(nodes=(origin,)),
    )
    connector = ConnectorConfig(type="relay", auth=Auth("edge-hk-1", "relay-pass"))
    assert config.chains == (
        ChainConfig(
            name="to-core",
            hops=(
                HopConfig(
                    name="core",
                    selector=SelectorConfig(strategy="fifo", max_fails=1, fail_timeout=10.0),
                    nodes=(
                        NodeConfig(
                            name="core-1",
                            addr=Address("core1.example", 8443),
                            connector=connector,
                            dialer=DialerConfig(
                                type="quic",
                                tls=TLSConfig(server_name="core1.example", ca_file="ca.pem"),
                            ),
                        ),
                        NodeConfig(
                            name="core-1-wss",
                            addr=Address("core1.example", 8444),
                            connector=connector,
                            dialer=DialerConfig(type="wss", path="/tunnel", keepalive=15.0),
                        ),
                    ),
                ),
            ),
        ),
    )
    assert config.chain("to-core") is config.chains[0]
    assert config.admissions == (
        AdmissionConfig(name="mgmt-allow", whitelist=True, matchers=("10.0.0.0/8",)),
    )
    assert config.shields == (ShieldConfig(name="default"),)
    assert config.ccs == (CCConfig(name="default"),)
    assert config.climiters == (LimiterConfig("per-ip-conns", ("$ 100000", "$$ 200")),)
    assert config.rlimiters == (LimiterConfig("per-ip-rate", ("$$ 50",)),)
    assert (config.workers, config.shutdown_timeout, config.version) == (1, 30.0, 0)


def test_load_config_file_resolves_certificates_next_to_the_file(certs: Path) -> None:
    path = certs / "relay.yaml"
    path.write_text(FULL_YAML)
    config = load_config_file(str(path))
    assert config.base_dir == str(certs)
    assert config.services[1].listener.tls == TLSConfig(cert_file="core.pem", key_file="core.key")


def test_defaults_fill_what_the_file_leaves_out() -> None:
    config = config_from_mapping(minimal())
    service = config.services[0]
    assert service.listener == ListenerConfig()
    assert service.handler.http == HTTPHandlerOptions()
    assert service.buffer_size == 256 * 1024
    assert config.log == LogConfig()
    assert (config.api, config.metrics, config.tls, config.chains) == (None, None, None, ())


def test_gost_metadata_keys_are_case_insensitive_and_extra_keys_kept() -> None:
    data = minimal()
    data["services"][0]["listener"] = {
        "type": "ws",
        "metadata": {"PATH": "/ws", "keepAlive": "20s", "proxyProtocol": 1},
    }
    data["services"][0]["handler"]["metadata"] = {"TTFBTimeout": 5, "custom": ["a", {"b": 1}]}
    data["services"][0]["metadata"] = {"bufferSize": 4096}
    service = config_from_mapping(data).services[0]
    assert service.listener == ListenerConfig(
        type="ws", path="/ws", proxy_protocol=1, metadata={"keepalive": 20.0}
    )
    assert service.handler.http.ttfb_timeout == 5.0
    assert service.handler.metadata == {"custom": ["a", {"b": 1}]}
    assert service.buffer_size == 4096


def test_chain_node_without_connector_or_dialer_gets_relay_over_tcp() -> None:
    data = minimal()
    data["chains"] = [{"name": "c", "hops": [{"nodes": [{"addr": "core:8443"}]}]}]
    data["services"][0]["handler"]["chain"] = "c"
    hop = config_from_mapping(data).chains[0].hops[0]
    assert hop == HopConfig(
        name="hop-0",
        nodes=(
            NodeConfig(
                name="node-0",
                addr=Address("core", 8443),
                connector=ConnectorConfig(),
                dialer=DialerConfig(),
            ),
        ),
    )


def test_workers_auto_is_the_cpu_count() -> None:
    data = minimal()
    data["workers"] = "auto"
    assert config_from_mapping(data).workers == (os.cpu_count() or 1)


def test_relay_handler_with_a_chain_and_no_forwarder_is_allowed() -> None:
    data = minimal()
    data["services"][0]["handler"] = {"type": "relay", "chain": "c"}
    del data["services"][0]["forwarder"]
    data["chains"] = [{"name": "c", "hops": [{"nodes": [{"addr": "core:8443"}]}]}]
    assert config_from_mapping(data).services[0].handler.type == "relay"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((":443", "tls"), (":443", "http3")),  # HTTPS and HTTP/3 share 443: TCP vs UDP
        (("127.0.0.1:8080", "tcp"), ("127.0.0.2:8080", "tcp")),  # distinct hosts
        ((":0", "tcp"), (":0", "tcp")),  # ephemeral ports, for tests
    ],
)
def test_ports_that_do_not_clash(
    certs: Path, first: tuple[str, str], second: tuple[str, str]
) -> None:
    data = minimal()
    data["tls"] = {"certFile": "edge.pem", "keyFile": "edge.key"}
    template = data["services"][0]
    data["services"] = [
        {**copy.deepcopy(template), "name": f"s{i}", "addr": addr, "listener": {"type": kind}}
        for i, (addr, kind) in enumerate((first, second))
    ]
    assert len(config_from_mapping(data, str(certs)).services) == 2


# ---------------------------------------------------------------------------------------------
# parse_duration / parse_address


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0", 0.0),
        (3, 3.0),
        (0.5, 0.5),
        ("15", 15.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["-5s", -1, "5x", "s", "1h-30m", "5 s", "", True, None, [], float("inf")]
)
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "listen", "address"),
    [
        (":8080", True, Address("", 8080)),
        ("127.0.0.1:8000", False, Address("127.0.0.1", 8000)),
        ("[::1]:443", False, Address("::1", 443)),
        ("host.example:8443", False, Address("host.example", 8443)),
        (":0", True, Address("", 0)),
    ],
)
def test_parse_address(text: str, listen: bool, address: Address) -> None:
    assert parse_address(text, listen=listen) == address


@pytest.mark.parametrize(
    ("text", "listen", "fragment"),
    [
        ("127.0.0.1", False, "missing ':port'"),
        ("::1:443", False, "IPv6 hosts go in brackets"),
        ("[::1:443", False, "missing ']'"),
        ("[nope]:443", False, "is not an IPv6 address"),
        ("h:65536", False, "out of range 1-65535"),
        ("h:0", False, "out of range 1-65535"),
        (":8000", False, "has no host"),
        ("h:http", False, "bad port"),
        ("bad host:80", False, "bad host"),
        ("999.1.1.1:80", False, "bad host"),
    ],
)
def test_parse_address_refuses(text: str, listen: bool, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_address(text, listen=listen)


# ---------------------------------------------------------------------------------------------
# Each class of error: exact path, key part of the message


def set_in(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """Set ``a.b[0].c`` in nested data (creating mappings on the way); returns ``data``."""
    keys: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        keys.append(name)
        if rest:
            keys.append(int(rest.rstrip("]")))
    node: Any = data
    for key in keys[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return data


ERROR_CASES = [
    # (field to set, value, expected path, key part of the message)
    ("services[0].listener", {"type": "qic"}, "services[0].listener.type",
     "unknown listener 'qic'; expected one of tcp, tls, ws, wss, mtcp, mtls, quic, http3"),
    ("services[0].listner", {}, "services[0].listner",
     "unknown key 'listner'; expected one of name, addr, listener, handler"),
    ("bogus", 1, "bogus", "unknown key 'bogus'; expected one of services, chains, log"),
    ("services[0].name", 123, "services[0].name", "expected a string, got integer"),
    ("services[0].name", "", "services[0].name", "must not be empty"),
    ("services[0].forwarder.nodes", {}, "services[0].forwarder.nodes",
     "expected a list, got mapping"),
    ("services[0].handler.metadata", {"ttfbTimeout": "5x"},
     "services[0].handler.metadata.ttfbTimeout", "bad duration '5x'"),
    ("services[0].handler.metadata", {"idleTimeout": "-5s"},
     "services[0].handler.metadata.idleTimeout", "is negative"),
    ("services[0].handler.metadata", {"ttfbTimeout": 0},
     "services[0].handler.metadata.ttfbTimeout", "must be greater than zero"),
    ("services[0].handler.metadata", {"retryBuffer": "1MB"},
     "services[0].handler.metadata.retryBuffer", "expected an integer, got string"),
    ("services[0].addr", "127.0.0.1", "services[0].addr", "missing ':port'"),
    ("services[0].addr", ":70000", "services[0].addr", "out of range 0-65535"),
    ("services[0].addr", 8080, "services[0].addr", "expected a string like ':8080'"),
    ("services[0].forwarder.nodes[0].addr", "origin:0", "services[0].forwarder.nodes[0].addr",
     "out of range 1-65535"),
    ("services[0].handler.chain", "nope", "services[0].handler.chain",
     "unknown chain 'nope'; no chains are defined"),
    ("services[0].admission", "a", "services[0].admission", "unknown admission 'a'"),
    ("services[0].shield", "s", "services[0].shield", "unknown shield 's'"),
    ("services[0].cc", "c", "services[0].cc", "unknown cc 'c'"),
    ("services[0].climiter", "l", "services[0].climiter", "unknown climiter 'l'"),
    ("services[0].rlimiter", "r", "services[0].rlimiter", "unknown rlimiter 'r'"),
    ("services[0].listener", {"type": "wss"}, "services[0].listener",
     "wss listener needs a certificate"),
    ("services[0].listener", {"type": "quic", "tls": {"caFile": "ca.pem"}},
     "services[0].listener.tls", "quic listener needs certFile and keyFile"),
    ("services[0].listener", {"type": "tls", "tls": {"certFile": "x.pem", "keyFile": "edge.key"}},
     "services[0].listener.tls.certFile", "file not found"),
    ("tls", {"certFile": "edge.pem"}, "tls.keyFile", "required when certFile is set"),
    ("services[0].handler", {"type": "socks5"}, "services[0].handler.type",
     "unknown handler 'socks5'; expected one of http, forward, relay"),
    ("services[0].handler", {}, "services[0].handler.type", "required"),
    ("services[0].forwarder.selector", {"strategy": "random"},
     "services[0].forwarder.selector.strategy", "unknown strategy 'random'"),
    ("services[0].forwarder.selector", {"maxFails": 0},
     "services[0].forwarder.selector.maxFails", "must be at least 1"),
    ("services[0].forwarder.probe", {"type": "icmp"}, "services[0].forwarder.probe.type",
     "unknown probe 'icmp'"),
    ("services[0].forwarder.nodes", [], "services[0].forwarder.nodes", "at least one node"),
    ("log", {"level": "verbose"}, "log.level", "unknown log level 'verbose'"),
    ("log", {"format": "xml"}, "log.format", "unknown log format 'xml'"),
    ("workers", 0, "workers", "must be at least 1"),
    ("workers", "many", "workers", "expected an integer >= 1 or 'auto'"),
    ("shutdownTimeout", "soon", "shutdownTimeout", "bad duration"),
    ("version", -1, "version", "must be at least 0"),
    ("shields", [{"name": "s", "algorithm": "leaky"}], "shields[0].algorithm",
     "unknown algorithm 'leaky'; expected one of sliding_window, token_bucket"),
    ("shields", [{"name": "s", "whitelist": ["1.2.3.4", "nope"]}], "shields[0].whitelist[1]",
     "is not an IP address or CIDR"),
    ("admissions", [{"name": "a", "matchers": ["10.0.0.0/33"]}], "admissions[0].matchers[0]",
     "'10.0.0.0/33' is not an IP address or CIDR"),
    ("admissions", [{"name": "a", "matchers": [10]}], "admissions[0].matchers[0]",
     "expected an IP or CIDR string"),
    ("climiters", [{"name": "l", "limits": ["$ 0"]}], "climiters[0].limits[0]",
     "expected a positive integer"),
    ("climiters", [{"name": "l", "limits": ["$$$ 5"]}], "climiters[0].limits[0]",
     "bad limit scope '$$$'"),
    ("rlimiters", [{"name": "l", "limits": ["10.0.0.0/8"]}], "rlimiters[0].limits[0]",
     "expected '<scope> <limit>'"),
    ("rlimiters", [{"name": "l", "limits": ["300.0.0.0/8 5"]}], "rlimiters[0].limits[0]",
     "bad limit scope"),
    ("ccs", [{"name": "c", "checkInterval": "0s"}], "ccs[0].checkInterval",
     "must be greater than zero"),
    ("api", {"addr": ":18080", "auth": {"user": "x"}}, "api.auth.user",
     "unknown key 'user'; expected one of token"),
    ("metrics", {"addr": ":9100", "path": "metrics"}, "metrics.path", "must start with '/'"),
    ("services[0].metadata", {"enableStats": True}, "services[0].metadata.enableStats",
     "unknown key 'enableStats'; expected one of bufferSize"),
    ("services[0].handler.metadata", {"when": datetime.date(2020, 1, 1)},
     "services[0].handler.metadata.when", "unsupported value of type date"),
    ("services[0].listener", {"tls": {"insecureSkipVerify": "yes"}},
     "services[0].listener.tls.insecureSkipVerify", "expected true or false"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "path", "fragment"), ERROR_CASES)
def test_error_names_the_path(
    certs: Path, field: str, value: object, path: str, fragment: str
) -> None:
    issue = only_issue(set_in(minimal(), field, value), str(certs))
    assert issue.path == path
    assert fragment in issue.message
    assert str(issue) == f"{issue.path}: {issue.message}"


def test_relay_handler_without_forwarder_or_chain_is_refused() -> None:
    data = minimal()
    data["services"][0]["handler"] = {"type": "relay"}
    del data["services"][0]["forwarder"]
    issue = only_issue(data)
    assert issue.path == "services[0].forwarder"
    assert (
        issue.message == "relay handler needs a forwarder: it never connects to arbitrary targets"
    )


def test_forward_handler_needs_a_forwarder_or_a_chain() -> None:
    data = minimal()
    data["services"][0]["handler"] = {"type": "forward"}
    del data["services"][0]["forwarder"]
    issue = only_issue(data)
    assert (issue.path, issue.message) == (
        "services[0].forwarder",
        "forward handler needs a forwarder or a chain",
    )


def test_second_service_gets_the_documented_listener_error() -> None:
    data = minimal()
    second = {**copy.deepcopy(data["services"][0]), "name": "two", "addr": ":8081"}
    second["listener"] = {"type": "qic"}
    data["services"].append(second)
    issue = only_issue(data)
    assert str(issue) == (
        "services[1].listener.type: unknown listener 'qic'; expected one of tcp, tls, ws, wss, "
        "mtcp, mtls, quic, http3"
    )


@pytest.mark.parametrize(
    ("section", "items", "path", "fragment"),
    [
        ("services", None, "services[1].name",
         "duplicate service name 'svc' (first at services[0])"),
        ("chains", [{"name": "c", "hops": [{"nodes": [{"addr": "a:1"}]}]}] * 2, "chains[1].name",
         "duplicate chain name 'c'"),
        ("chains", [{"name": "c", "hops": [{"name": "h", "nodes": [{"addr": "a:1"}]}] * 2}],
         "chains[0].hops[1].name", "duplicate hop name 'h'"),
        ("chains", [{"name": "c", "hops": [{"nodes": [{"name": "n", "addr": "a:1"}] * 2}]}],
         "chains[0].hops[0].nodes[1].name", "duplicate node name 'n'"),
        ("admissions", [{"name": "a"}] * 2, "admissions[1].name", "duplicate admission name 'a'"),
        ("shields", [{"name": "s"}] * 2, "shields[1].name", "duplicate shield name 's'"),
        ("ccs", [{"name": "c"}] * 2, "ccs[1].name", "duplicate cc name 'c'"),
        ("climiters", [{"name": "l"}] * 2, "climiters[1].name", "duplicate climiter name 'l'"),
        ("rlimiters", [{"name": "l"}] * 2, "rlimiters[1].name", "duplicate rlimiter name 'l'"),
    ],
)  # fmt: skip
def test_duplicate_names(section: str, items: object, path: str, fragment: str) -> None:
    data = minimal()
    if items is None:  # a second service with the same name on another port
        data["services"].append({**copy.deepcopy(data["services"][0]), "addr": ":8081"})
    else:
        data[section] = copy.deepcopy(items)
    issue = only_issue(data)
    assert issue.path == path
    assert fragment in issue.message


def test_duplicate_forwarder_nodes() -> None:
    data = minimal()
    data["services"][0]["forwarder"]["nodes"] *= 2
    issue = only_issue(data)
    assert issue.path == "services[0].forwarder.nodes[1].name"
    assert "duplicate node name 'origin'" in issue.message


@pytest.mark.parametrize(
    ("first", "second", "other"),
    [
        (":8080", ":8080", "services[0].addr (:8080)"),
        ("0.0.0.0:8080", "127.0.0.1:8080", "services[0].addr (0.0.0.0:8080)"),
        ("127.0.0.1:8080", ":8080", "services[0].addr (127.0.0.1:8080)"),
        ("[::1]:8080", "[::1]:8080", "services[0].addr ([::1]:8080)"),
    ],
)
def test_two_services_on_one_port(first: str, second: str, other: str) -> None:
    data = minimal()
    data["services"][0]["addr"] = first
    data["services"].append({**copy.deepcopy(data["services"][0]), "name": "b", "addr": second})
    issue = only_issue(data)
    assert issue.path == "services[1].addr"
    assert issue.message == f"tcp port 8080 is already used by {other}"


def test_admin_api_port_clashing_with_a_service() -> None:
    data = minimal()
    data["api"] = {"addr": "127.0.0.1:8080"}
    issue = only_issue(data)
    assert (issue.path, issue.message) == (
        "api.addr",
        "tcp port 8080 is already used by services[0].addr (:8080)",
    )


def test_every_problem_is_reported_together() -> None:
    text = """\
services:
- name: a
  addr: ":8080"
  listener: {type: qic}
  handler: {type: relay}
- name: a
  addr: "0.0.0.0:8080"
  handler: {type: http, chain: nope, metadata: {ttfbTimeout: 10parsecs}}
  forwarder: {nodes: [{addr: "origin:8000"}]}
  shield: zz
log: {level: loud}
"""
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    found = {(issue.path, issue.message.split(";")[0]) for issue in info.value.issues}
    assert found == {
        ("services[0].listener.type", "unknown listener 'qic'"),
        ("services[0].forwarder",
         "relay handler needs a forwarder: it never connects to arbitrary targets"),
        ("services[1].handler.chain", "unknown chain 'nope'"),
        ("services[1].handler.metadata.ttfbTimeout", "bad duration '10parsecs'"),
        ("services[1].shield", "unknown shield 'zz'"),
        ("services[1].name", "duplicate service name 'a' (first at services[0])"),
        ("services[1].addr", "tcp port 8080 is already used by services[0].addr (:8080)"),
        ("log.level", "unknown log level 'loud'"),
    }  # fmt: skip
    assert str(info.value).count("\n") == len(info.value.issues) - 1


def test_malformed_parts_do_not_cause_follow_up_errors() -> None:
    data = minimal()
    data["services"][0]["forwarder"] = "origin:8000"  # not a mapping: one issue, not three
    data["api"] = [":18080"]
    assert [(i.path, i.message) for i in issues_of(data)] == [
        ("api", "expected a mapping, got list"),
        ("services[0].forwarder", "expected a mapping, got string"),
    ]


# ---------------------------------------------------------------------------------------------
# Documents that are not configs


def test_malformed_yaml_reports_line_and_column() -> None:
    text = "services:\n- name: a\n  addr: [1, 2\n  handler: {}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    (issue,) = info.value.issues
    assert issue.path == "<yaml>"
    assert issue.message.startswith("line 4, column 10: ")


def test_malformed_yaml_file_is_reported_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("log: {level: info\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path))
    (issue,) = info.value.issues
    assert issue.path == str(path)
    assert issue.message.startswith("line 2, column 1: ")


def test_duplicate_yaml_keys_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("log: {level: info}\nlog: {level: debug}\n")
    (issue,) = info.value.issues
    assert (issue.path, issue.message) == (
        "<yaml>",
        "line 2, column 1: duplicate key 'log' (while constructing a mapping)",
    )


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = """\
base: &base {type: http, metadata: {ttfbTimeout: 5s}}
services:
- name: a
  addr: ":1"
  handler: {<<: *base, type: forward}
  forwarder: {nodes: [{addr: "o:1"}]}
"""
    # ``base`` is not a config key, so exactly that one issue: the merge itself is fine.
    issue = only_issue_text(text)
    assert issue.path == "base"


def only_issue_text(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert len(info.value.issues) == 1, str(info.value)
    return info.value.issues[0]


def test_control_characters_are_located() -> None:
    issue = only_issue_text("log: {}\nx: a\x07b\n")
    assert issue.message == "line 2, column 5: character U+0007 is not allowed"


@pytest.mark.parametrize("text", ["", "# nothing\n", "---\n", "services: []\n"])
def test_empty_config_has_no_services(text: str) -> None:
    issue = only_issue_text(text)
    assert issue.path == "services"
    assert "no services" in issue.message


@pytest.mark.parametrize("text", ["[1, 2]", "just a string", "42"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    issue = only_issue_text(text)
    assert issue.path == "<yaml>"
    assert "the config must be a mapping of sections" in issue.message


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value).startswith(f"{path}: cannot read: ")


def test_unsafe_yaml_tags_are_refused() -> None:
    issue = only_issue_text("!!python/object/apply:os.system ['true']\n")
    assert "could not determine a constructor" in issue.message


def test_config_error_is_an_exception_that_pickles() -> None:
    error = ConfigError([ConfigIssue("a", "b"), ConfigIssue("c.d", "e")])
    assert str(error) == "a: b\nc.d: e"
    clone = pickle.loads(pickle.dumps(error))
    assert clone.issues == error.issues


# ---------------------------------------------------------------------------------------------
# Rendering back (admin API GET /config)


def test_render_round_trips(certs: Path) -> None:
    config = load_config_text(FULL_YAML, base_dir=str(certs))
    assert config_from_mapping(config_to_mapping(config), base_dir=str(certs)) == config


def test_redacted_mapping_hides_secrets_and_is_json(certs: Path) -> None:
    data = minimal()
    data["services"][0]["handler"]["metadata"] = {"upstreamToken": "abc", "note": "keep"}
    data["services"][0]["handler"]["auth"] = {"username": "u", "password": "hunter2"}
    data["api"] = {"addr": ":18080", "auth": {"token": "api-token"}}
    config = config_from_mapping(data)
    redacted = redacted_mapping(config)
    text = json.dumps(redacted)
    assert "hunter2" not in text and "api-token" not in text and "abc" not in text
    assert redacted["api"] == {"addr": ":18080", "auth": {"token": "***"}}
    service = redacted["services"][0]  # type: ignore[index]
    assert service["handler"]["auth"] == {"username": "u", "password": "***"}
    assert service["handler"]["metadata"]["note"] == "keep"
    full = load_config_text(FULL_YAML, base_dir=str(certs))
    assert "relay-pass" not in json.dumps(redacted_mapping(full))
    # the live config is untouched
    assert config.services[0].handler.metadata["upstreamToken"] == "abc"


# ---------------------------------------------------------------------------------------------
# Garbage in, ConfigError out


class _Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("hostile repr")


GARBAGE: list[object] = [
    None, 0, -1, 2**80, 1.5, float("nan"), float("inf"), True, "", " ", "x", "-5s", ":0",
    "[::1]:443", "$$ 5", "auto", "\x00", "é" * 200, b"bytes", [], [None], [[]], {}, {"a": 1},
    {1: 2}, {None: None}, {(1, 2): 3}, datetime.date(2020, 1, 1), {1, 2}, ("t",), _Opaque(),
]  # fmt: skip


def _all_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    paths = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _all_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += _all_paths(value, (*prefix, index))
    return paths


def _replace(root: Any, path: tuple[object, ...], value: object) -> Any:
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return root


def test_random_garbage_only_ever_raises_config_error(certs: Path) -> None:
    import yaml

    base = yaml.safe_load(FULL_YAML)
    paths = _all_paths(base)
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        data = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            path = rng.choice(paths)
            value = data if rng.random() < 0.05 else rng.choice(GARBAGE)  # even self-reference
            try:
                data = _replace(data, path, copy.copy(value))
            except (KeyError, IndexError, TypeError):
                pass  # the path no longer exists after an earlier replacement
            if isinstance(data, dict) and rng.random() < 0.2:
                data[rng.choice(["extra", 7, None])] = rng.choice(GARBAGE)
        try:
            config_from_mapping(data, str(certs))
            outcomes["ok"] += 1
        except ConfigError as exc:
            assert exc.issues and str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 2500  # most mutations are errors; none escaped as anything else


def test_random_yaml_text_only_ever_raises_config_error(certs: Path) -> None:
    rng = random.Random(7)
    alphabet = list(":{}[]-&*!|>'\"#%@`,? \n\t0x\x00\ufeff")
    for _ in range(400):
        chars = list(FULL_YAML)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(chars))
            if rng.random() < 0.5:
                del chars[at]
            else:
                chars.insert(at, rng.choice(alphabet))
        try:
            load_config_text("".join(chars), str(certs))
        except ConfigError as exc:
            assert exc.issues


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20000 + "]" * 20000,
        "a: &a [x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + 'services: [{name: s, addr: ":1", handler: {type: http, metadata: {x: *h}}}]\n',
        'services: [{name: s, addr: ":1", handler: {type: http, metadata: &m {x: *m}}}]\n',
        "services:\n- &s {name: x, handler: *s}\n",
    ],
    ids=["deep-nesting", "alias-bomb", "cyclic-metadata", "cyclic-service"],
)
def test_hostile_yaml(text: str) -> None:
    with pytest.raises(ConfigError):
        load_config_text(text)


def test_proxy_protocol_and_trusted_proxies_are_checked() -> None:
    data = minimal()
    data["services"][0]["listener"] = {"type": "tcp", "metadata": {"proxyProtocol": 3}}
    data["services"][0]["handler"]["metadata"] = {"trustedProxies": ["10.0.0.0/8", "nope"]}
    with pytest.raises(ConfigError) as refused:
        config_from_mapping(data)
    paths = [issue.path for issue in refused.value.issues]
    assert "services[0].listener.metadata.proxyProtocol" in paths
    assert "services[0].handler.metadata.trustedProxies[1]" in paths


def test_quic_options_and_client_certificates_are_checked_up_front(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    data = minimal()
    data["services"][0]["listener"] = {
        "type": "quic",
        "tls": {"certFile": str(cert), "keyFile": str(cert), "caFile": str(cert)},
        "metadata": {"maxStreams": 0},
    }
    data["services"][0]["handler"] = {"type": "relay"}
    with pytest.raises(ConfigError) as refused:
        config_from_mapping(data)
    paths = [issue.path for issue in refused.value.issues]
    assert "services[0].listener.metadata.maxStreams" in paths
    assert "services[0].listener.tls.caFile" in paths
