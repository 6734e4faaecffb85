"""The gost_config filter renders through relay.config.fleet (one implementation)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from aicdn_ansible_helpers import load_plugin
from ansible.errors import AnsibleFilterError

from relay.config import load_config_text
from relay.config.fleet import FleetNode, expand_template, render_node_config

FILTERS = load_plugin("filter", "gost_config").FilterModule().filters()
gost_config = FILTERS["gost_config"]
fleet_node = FILTERS["fleet_node"]

EDGE = {"id": "e1", "name": "edge-hk-1", "type": "edge", "region": "hk", "addr": "10.0.0.11",
        "port": 443}  # fmt: skip
CORES = [
    {"name": "core-cn-1", "type": "core", "region": "cn", "addr": "10.0.0.41", "port": 8443},
    {"name": "core-cn-2", "type": "core", "region": "cn", "addr": "10.0.0.42", "port": 8443,
     "status": "offline"},
]  # fmt: skip
EDGE_PARAMS = {"edge_password": "s3cret", "listener": "tcp", "transport": "tcp"}


def test_filter_output_is_the_renderers_output() -> None:
    config_data = expand_template("edge", EDGE_PARAMS)
    expected = render_node_config(
        config_data,
        FleetNode("e1", "edge-hk-1", "edge", "hk", "10.0.0.11", 443),
        [
            FleetNode("core-cn-1", "core-cn-1", "core", "cn", "10.0.0.41", 8443),
            FleetNode("core-cn-2", "core-cn-2", "core", "cn", "10.0.0.42", 8443, "offline"),
        ],
        5,
        "/etc/aicdn",
    )
    assert gost_config(EDGE, CORES, params=EDGE_PARAMS, version=5) == expected
    assert gost_config(EDGE, CORES, config_data=config_data, version=5) == expected


def test_rendered_config_passes_the_relays_checker() -> None:
    text = gost_config(EDGE, CORES, params=EDGE_PARAMS, version=2)
    config = load_config_text(text, check_files=False)
    assert config.version == 2
    [hop] = config.chains[0].hops
    # Offline cores are never chained to.
    assert [node.name for node in hop.nodes] == ["core-cn-1"]


def test_template_defaults_to_the_node_type() -> None:
    core = {"name": "core-cn-1", "type": "core", "addr": "10.0.0.41", "port": 8443}
    text = gost_config(core, [], params={"edge_password": "x", "transport": "tcp"})
    data = yaml.safe_load(text)
    assert data["services"][0]["handler"]["type"] == "relay"


def test_renderer_errors_become_filter_errors_naming_the_path() -> None:
    with pytest.raises(AnsibleFilterError, match=r"params\.edge_password: required"):
        gost_config(EDGE, CORES, params={"listener": "tcp"})
    with pytest.raises(AnsibleFilterError, match=r"no online core node to chain to"):
        gost_config(EDGE, [], params=EDGE_PARAMS)


@pytest.mark.parametrize(
    ("node", "peers", "message"),
    [
        ("edge", [], r"node: expected a node mapping, got str"),
        ({"name": "x", "type": "edge"}, [], r"node: missing addr, port"),
        ({**EDGE, "port": "https"}, [], r"node\.port: expected an integer, got 'https'"),
        (EDGE, {"name": "x"}, r"peers: expected a list of nodes, got dict"),
        (EDGE, [{**CORES[0], "tags": "a,b"}], r"peers\[0\]\.tags: expected a list, got str"),
    ],
)
def test_bad_input_is_refused_with_its_type(node: Any, peers: Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        gost_config(node, peers, params=EDGE_PARAMS)


def test_fleet_node_reads_inventory_variables() -> None:
    hostvars = {
        "inventory_hostname": "core-cn-1",
        "ansible_host": "192.0.2.41",
        "aicdn_node_type": "core",
        "aicdn_region": "cn",
        "aicdn_node_port": 8443,
        "aicdn_node_metadata": {"ws_port": 8444},
        "unrelated": "ignored",
    }
    assert fleet_node(hostvars) == {
        "id": "core-cn-1",
        "name": "core-cn-1",
        "type": "core",
        "region": "cn",
        "addr": "192.0.2.41",
        "port": 8443,
        "metadata": {"ws_port": 8444},
    }
    assert fleet_node({**hostvars, "aicdn_node_addr": "core1.example"})["addr"] == "core1.example"
    with pytest.raises(AnsibleFilterError, match="got list"):
        fleet_node(["core-cn-1"])  # type: ignore[arg-type]


class _TaggedStr(str):
    """Stands in for the str subclasses Ansible passes filters (tagged inventory values)."""


def test_ansible_string_subclasses_are_rendered_as_plain_strings() -> None:
    params = {key: _TaggedStr(value) for key, value in EDGE_PARAMS.items()}
    node = {**EDGE, "name": _TaggedStr("edge-hk-1")}
    assert gost_config(node, CORES, params=params) == gost_config(EDGE, CORES, params=EDGE_PARAMS)
