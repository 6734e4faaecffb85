"""The fleet renderer (``relay.config.fleet``): templates, per-node rendering, the checker."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, config_from_mapping, load_config_text
from relay.config.fleet import (
    NODE_PLACEHOLDER,
    TEMPLATES,
    FleetNode,
    ParamSpec,
    check_config_data,
    expand_template,
    render_node_config,
    render_node_mapping,
    template_params,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret"

EDGE = FleetNode("e1", "edge-hk-1", "edge", "hk", "edge1.example", 443)
#: Cores in two regions, in no particular order: hk is the edge's own region.
CORES = (
    FleetNode("c5", "core-sg-1", "core", "sg", "core-sg-1.example", 8443, status="degraded"),
    FleetNode("c1", "core-hk-2", "core", "hk", "core-hk-2.example", 8443),
    FleetNode("c2", "core-cn-1", "core", "cn", "10.1.1.1", 8443, metadata={"ws_port": 9444}),
    FleetNode("c3", "core-hk-3", "core", "hk", "core-hk-3.example", 8443, status="degraded"),
    FleetNode("c4", "core-hk-1", "core", "hk", "core-hk-1.example", 8443),
    FleetNode("c6", "core-hk-off", "core", "hk", "core-hk-off.example", 8443, status="offline"),
    FleetNode("c7", "core-hk-dr", "core", "hk", "core-hk-dr.example", 8443, status="draining"),
    FleetNode("c8", "core-cn-sb", "core", "cn", "core-cn-sb.example", 8443, status="standby"),
    FleetNode("c9", "core-cn-2", "core", "cn", "core-cn-2.example", 8443),
)
#: Expected order: own region online, own degraded, other regions online, other degraded.
EXPECTED_ORDER = ["core-hk-1", "core-hk-2", "core-hk-3", "core-cn-1", "core-cn-2", "core-sg-1"]


def paths(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [issue.path for issue in exc.value.issues]


def hop_nodes(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = mapping["chains"][0]["hops"][0]["nodes"]
    return nodes


def edge_data(**params: Any) -> str:
    return expand_template("edge", {"edge_password": PASSWORD, **params})


def core_data(**params: Any) -> str:
    return expand_template("core", {"edge_password": PASSWORD, **params})


# --- templates --------------------------------------------------------------------------------


def test_template_params_are_documented() -> None:
    assert TEMPLATES == ("edge", "core")
    for template in TEMPLATES:
        specs = template_params(template)
        assert specs["edge_password"].required
        for name, spec in specs.items():
            assert isinstance(spec, ParamSpec)
            assert spec.name == name and spec.description and spec.type
            if spec.type == "choice":
                assert spec.default in spec.choices
    assert template_params("edge")["port"].default == 443
    assert template_params("edge")["http_port"].default == 8080
    assert template_params("core")["port"].default == 8443
    assert template_params("core")["ws_port"].default == 8444
    assert template_params("core")["metrics_addr"].default == ":9100"


def test_edge_template_defaults() -> None:
    data = yaml.safe_load(edge_data())
    assert data["tls"] == {"certFile": NODE_PLACEHOLDER, "keyFile": NODE_PLACEHOLDER}
    assert data["metrics"]["addr"] == ":9100"
    assert data["api"] == {"addr": "127.0.0.1:18080"}
    entry, plain = data["services"]
    assert (entry["addr"], entry["listener"]["type"]) == (":443", "tls")
    assert (plain["addr"], plain["listener"]["type"]) == (":8080", "tcp")
    assert entry["handler"] == {
        "type": "http",
        "chain": "to-core",
        "metadata": {"ttfbTimeout": "600s", "idleTimeout": "300s"},
    }
    hop = data["chains"][0]["hops"][0]
    assert data["chains"][0]["name"] == "to-core"
    assert hop["selector"]["strategy"] == "fifo"
    assert "nodes" not in hop
    assert hop["peers"] == {
        "type": "core",
        "connector": {
            "type": "relay",
            "auth": {"username": "edge", "password": PASSWORD},
            # Streams survive a broken tunnel by default.
            "metadata": {"resume": True, "resumeWindow": "30s"},
        },
        "dialer": {"type": "tls", "tls": {"caFile": NODE_PLACEHOLDER}},
    }


def test_core_template_defaults() -> None:
    data = yaml.safe_load(core_data())
    tunnel, ws = data["services"]
    assert (tunnel["addr"], tunnel["listener"]["type"]) == (":8443", "tls")
    assert (ws["addr"], ws["listener"]) == (
        ":8444",
        {"type": "wss", "metadata": {"path": "/tunnel"}},
    )
    for service in (tunnel, ws):
        assert service["handler"] == {
            "type": "relay",
            "auth": {"username": "edge", "password": PASSWORD},
        }
        assert service["forwarder"]["nodes"] == [{"name": "origin", "addr": "127.0.0.1:8000"}]
    assert data["tls"] == {"certFile": NODE_PLACEHOLDER, "keyFile": NODE_PLACEHOLDER}
    assert "chains" not in data


def test_templates_with_params() -> None:
    core = yaml.safe_load(
        core_data(
            transport="tcp",
            port=9443,
            ws_port=None,
            origins=["10.0.0.5:8000", "10.0.0.6:8000"],
            edge_username="edges",
            metrics_addr=None,
            api_token="tok",
            log_level="debug",
        )
    )
    assert "tls" not in core and "metrics" not in core
    assert core["api"]["auth"] == {"token": "tok"}
    assert core["log"]["level"] == "debug"
    (tunnel,) = core["services"]
    assert (tunnel["addr"], tunnel["listener"]["type"]) == (":9443", "tcp")
    assert tunnel["handler"]["auth"]["username"] == "edges"
    assert [n["addr"] for n in tunnel["forwarder"]["nodes"]] == ["10.0.0.5:8000", "10.0.0.6:8000"]

    edge = yaml.safe_load(
        edge_data(
            transport="wss",
            listener="tcp",
            port=8000,
            http_port=None,
            core_ws_port=9000,
            ttfb_timeout="900s",
            idle_timeout=60,
            ca_file=None,
            strategy="round",
        )
    )
    assert "tls" not in edge
    (entry,) = edge["services"]
    assert (entry["addr"], entry["listener"]["type"]) == (":8000", "tcp")
    assert entry["handler"]["metadata"] == {"ttfbTimeout": "900s", "idleTimeout": 60}
    hop = edge["chains"][0]["hops"][0]
    assert hop["selector"]["strategy"] == "round"
    assert hop["peers"]["port"] == 9000
    assert hop["peers"]["metadataPort"] == "ws_port"
    assert hop["peers"]["dialer"] == {"type": "wss", "metadata": {"path": "/tunnel"}}


def test_bad_params_are_named() -> None:
    with pytest.raises(ConfigError) as exc:
        expand_template(
            "core",
            {
                "bogus": 1,
                "port": "8443",
                "ws_port": True,
                "transport": "quic",
                "origins": ["127.0.0.1:8000", "nohost", 5],
                "log_level": None,
            },
        )
    assert paths(exc) == [
        "params.bogus",
        "params.transport",
        "params.port",
        "params.ws_port",
        "params.origins[1]",
        "params.origins[2]",
        "params.edge_password",
        "params.log_level",
    ]
    text = str(exc.value)
    assert "params.bogus: unknown parameter" in text
    assert "params.transport: expected one of tls, tcp" in text
    assert "params.edge_password: required" in text

    with pytest.raises(ConfigError) as exc:
        expand_template("edge", {"edge_password": "", "ttfb_timeout": "soon", "max_fails": 0})
    assert paths(exc) == ["params.ttfb_timeout", "params.max_fails", "params.edge_password"]

    with pytest.raises(ConfigError) as exc:
        expand_template("edge", {"edge_password": PASSWORD, "http_port": 443})
    assert paths(exc) == ["params.http_port"]
    assert "already used by params.port" in str(exc.value)

    with pytest.raises(ConfigError) as exc:
        expand_template("relay", {})
    assert paths(exc) == ["template"]
    with pytest.raises(ConfigError) as exc:
        template_params("middle")
    assert paths(exc) == ["template"]


# --- rendering --------------------------------------------------------------------------------


def test_render_edge_chains_to_cores_own_region_first() -> None:
    mapping = render_node_mapping(edge_data(), EDGE, CORES, 7)
    assert mapping["version"] == 7
    nodes = hop_nodes(mapping)
    assert [n["name"] for n in nodes] == EXPECTED_ORDER
    first = nodes[0]
    assert first == {
        "name": "core-hk-1",
        "addr": "core-hk-1.example:8443",
        "connector": {
            "type": "relay",
            "auth": {"username": "edge", "password": PASSWORD},
            "metadata": {"resume": True, "resumeWindow": "30s"},
        },
        "dialer": {
            "type": "tls",
            "tls": {"caFile": "/etc/aicdn/tls/ca.pem", "serverName": "core-hk-1.example"},
        },
    }
    assert mapping["tls"] == {
        "certFile": "/etc/aicdn/tls/edge-hk-1.pem",
        "keyFile": "/etc/aicdn/tls/edge-hk-1.key",
    }
    assert [s["addr"] for s in mapping["services"]] == [":443", ":8080"]
    assert mapping["api"]["addr"] == "127.0.0.1:18080"
    assert mapping["metrics"]["addr"] == ":9100"
    config = config_from_mapping(mapping, base_dir="/etc/aicdn", check_files=False)
    assert config.version == 7
    assert [n.name for n in config.chain("to-core").hops[0].nodes] == EXPECTED_ORDER


def test_render_edge_over_wss_uses_the_cores_ws_port() -> None:
    mapping = render_node_mapping(edge_data(transport="wss"), EDGE, CORES, 1)
    addrs = {n["name"]: n["addr"] for n in hop_nodes(mapping)}
    assert addrs["core-cn-1"] == "10.1.1.1:9444"  # metadata.ws_port
    assert addrs["core-hk-1"] == "core-hk-1.example:8444"  # core_ws_port
    assert hop_nodes(mapping)[0]["dialer"]["tls"]["serverName"] == "core-hk-1.example"


def test_render_core() -> None:
    core = CORES[4]
    node = FleetNode(
        core.id,
        core.name,
        "core",
        core.region,
        core.addr,
        core.port,
        metadata={"cert_file": "/srv/pki/core.pem", "key_file": "/srv/pki/core.key"},
    )
    mapping = render_node_mapping(core_data(), node, [*CORES, EDGE], 3, base_dir="/opt/relay")
    assert mapping["version"] == 3
    assert mapping["tls"] == {"certFile": "/srv/pki/core.pem", "keyFile": "/srv/pki/core.key"}
    assert [s["addr"] for s in mapping["services"]] == [":8443", ":8444"]
    config = config_from_mapping(mapping, check_files=False)
    assert [s.listener.type for s in config.services] == ["tls", "wss"]
    assert config.services[0].handler.auth is not None
    assert config.services[0].handler.auth.username == "edge"

    plain = render_node_mapping(core_data(), CORES[4], [], 3, base_dir="/opt/relay")
    assert plain["tls"]["certFile"] == "/opt/relay/tls/core-hk-1.pem"


def write_node(tmp_path: Path, name: str, text: str) -> Path:
    """The rendered file plus the dummy certificate files it names, under ``tmp_path``."""
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    for file_name in (f"{name}.pem", f"{name}.key", "ca.pem"):
        (tls / file_name).write_text("dummy\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def relay_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-C", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("transport", ["tls", "tcp", "wss", "ws", "mtls", "mtcp"])
def test_rendered_edge_and_core_pass_the_relay_checker(tmp_path: Path, transport: str) -> None:
    core_transport = {"ws": "tcp", "wss": "tls"}.get(transport, transport)
    base = str(tmp_path)
    rendered = {
        EDGE.name: render_node_config(edge_data(transport=transport), EDGE, CORES, 5, base),
        CORES[4].name: render_node_config(
            core_data(transport=core_transport), CORES[4], CORES, 5, base
        ),
    }
    for name, text in rendered.items():
        assert load_config_text(text, base, check_files=False).version == 5
        result = relay_check(write_node(tmp_path, name, text))
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_certificate_files_are_checked_unless_told_not_to() -> None:
    mapping = render_node_mapping(core_data(), CORES[4], [], 1, base_dir="/nonexistent")
    with pytest.raises(ConfigError) as exc:
        config_from_mapping(mapping, base_dir="/nonexistent")
    assert paths(exc) == ["tls.certFile", "tls.keyFile"]
    config_from_mapping(mapping, base_dir="/nonexistent", check_files=False)


@pytest.mark.parametrize(
    "cores",
    [
        (),
        tuple(c for c in CORES if c.status not in ("online", "degraded")),
        (FleetNode("x", "edge-2", "edge", "hk", "edge2.example", 443),),
    ],
    ids=["none", "none-online", "wrong-type"],
)
def test_no_peer_to_chain_to(cores: tuple[FleetNode, ...]) -> None:
    with pytest.raises(ConfigError) as exc:
        render_node_config(edge_data(), EDGE, cores, 1)
    assert [str(issue) for issue in exc.value.issues] == [
        "chains[0].hops[0].peers: no online core node to chain to"
    ]


def test_rendering_is_deterministic() -> None:
    data = edge_data()
    first = render_node_config(data, EDGE, CORES, 9)
    shuffled = list(CORES)
    random.Random(4).shuffle(shuffled)
    assert render_node_config(data, EDGE, CORES, 9) == first
    assert render_node_config(data, EDGE, shuffled, 9) == first
    assert expand_template("edge", {"edge_password": PASSWORD}) == data


CUSTOM_EDGE = """
services:
- name: entry
  addr: ":8080"
  handler: {type: http, chain: to-core}
chains:
- name: to-core
  hops:
  - name: core
    peers:
      type: core
      port: 7000
      connector: {auth: {password: pw}}
      dialer: &dialer {type: tls, tls: {certFile: "@node", keyFile: "@node"}}
    nodes:
    - name: fallback
      addr: "cdn.example:443"
      dialer: *dialer
"""


def test_peers_spec_details() -> None:
    ipv6 = FleetNode("c10", "core-v6", "core", "hk", "2001:db8::1", 8443)
    mapping = render_node_mapping(CUSTOM_EDGE, EDGE, [ipv6, CORES[4]], 2)
    nodes = hop_nodes(mapping)
    # Peers first, explicit nodes after; the spec's port wins over the peers' own.
    assert [(n["name"], n["addr"]) for n in nodes] == [
        ("core-hk-1", "core-hk-1.example:7000"),
        ("core-v6", "[2001:db8::1]:7000"),
        ("fallback", "cdn.example:443"),
    ]
    # An auth without username gets the edge's name.
    assert nodes[0]["connector"]["auth"] == {"username": "edge-hk-1", "password": "pw"}
    assert nodes[1]["dialer"]["tls"] == {
        "certFile": "/etc/aicdn/tls/edge-hk-1.pem",
        "keyFile": "/etc/aicdn/tls/edge-hk-1.key",
        "serverName": "2001:db8::1",
    }
    # Explicit nodes get @node filled as well, and YAML aliases do not leak serverName.
    assert nodes[2]["dialer"]["tls"] == {
        "certFile": "/etc/aicdn/tls/edge-hk-1.pem",
        "keyFile": "/etc/aicdn/tls/edge-hk-1.key",
    }
    text = render_node_config(CUSTOM_EDGE, EDGE, [ipv6, CORES[4]], 2)
    assert "&" not in text and "*" not in text
    # Explicit nodes alone are enough when no peer qualifies.
    assert [n["name"] for n in hop_nodes(render_node_mapping(CUSTOM_EDGE, EDGE, [], 2))] == [
        "fallback"
    ]


@pytest.mark.parametrize(
    ("config_data", "expected"),
    [
        ("services: [", ["config_data"]),
        ("- a list", ["config_data"]),
        (
            CUSTOM_EDGE.replace("type: core\n", "type: cdn\n      bogus: 1\n", 1),
            ["chains[0].hops[0].peers.bogus", "chains[0].hops[0].peers.type"],
        ),
        (CUSTOM_EDGE.replace("port: 7000", "port: 0"), ["chains[0].hops[0].peers.port"]),
        (CUSTOM_EDGE.replace('addr: ":8080"', 'addr: "@node"'), ["services[0].addr"]),
        (CUSTOM_EDGE.replace("type: http", "type: htp"), ["services[0].handler.type"]),
        ("a: &a [*a]", ["config_data"]),
    ],
    ids=["yaml", "not-mapping", "peers-keys", "peers-port", "placeholder", "checker", "cycle"],
)
def test_bad_config_data_is_named(config_data: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        render_node_mapping(config_data, EDGE, CORES, 1)
    assert paths(exc) == expected


def test_bad_node_data_is_named() -> None:
    bad_name = FleetNode("e9", "../etc", "edge", "hk", "edge.example", 443)
    with pytest.raises(ConfigError) as exc:
        render_node_mapping(edge_data(), bad_name, CORES, -1)
    assert paths(exc) == ["node.name", "version"]

    bad_meta = FleetNode("e9", "edge-9", "edge", "hk", "edge.example", 443, metadata={"ca_file": 5})
    with pytest.raises(ConfigError) as exc:
        render_node_mapping(edge_data(), bad_meta, CORES, 1)
    assert paths(exc) == ["node.metadata.ca_file"]

    bad_port = FleetNode(
        "c0", "core-0", "core", "hk", "core0.example", 8443, metadata={"ws_port": 0}
    )
    with pytest.raises(ConfigError) as exc:
        render_node_mapping(edge_data(transport="wss"), EDGE, [bad_port], 1)
    assert paths(exc) == ["chains[0].hops[0].peers.metadataPort"]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError) as exc:
        render_node_mapping("\n".join(lines), EDGE, CORES, 1)
    assert paths(exc) == ["config_data"]


def test_check_config_data() -> None:
    check_config_data(edge_data(), "edge")
    check_config_data(core_data(), "core")
    with pytest.raises(ConfigError) as exc:
        check_config_data(core_data(), "master")
    assert paths(exc) == ["node_type"]
    with pytest.raises(ConfigError) as exc:
        check_config_data(CUSTOM_EDGE.replace('":8080"', '":99999"'), "edge")
    assert paths(exc) == ["services[0].addr"]


def test_edge_template_resume_can_be_turned_off() -> None:
    data = yaml.safe_load(
        expand_template("edge", {"edge_password": PASSWORD, "resume_window": None})
    )
    assert "metadata" not in data["chains"][0]["hops"][0]["peers"]["connector"]
    longer = yaml.safe_load(
        expand_template("edge", {"edge_password": PASSWORD, "resume_window": "2m"})
    )
    connector = longer["chains"][0]["hops"][0]["peers"]["connector"]
    assert connector["metadata"] == {"resume": True, "resumeWindow": "2m"}
