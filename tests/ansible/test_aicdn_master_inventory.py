"""The aicdn_master inventory plugin against a stand-in master (DESIGN §4.3).

The real master (master_api) has no create_app yet, so these tests serve the documented API
from a small local HTTP server (conftest.StubMaster).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aicdn_ansible_helpers import BIN, PLUGINS, REPO, StubMaster, ansible_env
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader

inventory_loader.add_directory(str(PLUGINS / "inventory"))


def parse(tmp_path: Path, config: dict[str, Any], cache: bool = False) -> InventoryData:
    path = tmp_path / "aicdn_master.yml"
    path.write_text(json.dumps({"plugin": "aicdn_master", **config}))
    plugin = inventory_loader.get("aicdn_master")
    inventory = InventoryData()
    plugin.parse(inventory, DataLoader(), str(path), cache=cache)
    if getattr(plugin, "_cache", None) is not None:  # as InventoryManager does after a parse
        plugin.update_cache_if_changed()
    return inventory


def test_verify_file_wants_the_plugins_file_name(tmp_path: Path) -> None:
    plugin = inventory_loader.get("aicdn_master")
    for name, ok in [
        ("aicdn_master.yml", True),
        ("prod.aicdn_master.yaml", True),
        ("hosts.yml", False),
    ]:
        path = tmp_path / name
        path.write_text("plugin: aicdn_master\n")
        assert plugin.verify_file(str(path)) is ok, name


def test_nodes_become_hosts_grouped_by_type_region_status_and_tags(
    tmp_path: Path, stub_master: StubMaster
) -> None:
    inventory = parse(tmp_path, {"url": stub_master.url, "token": stub_master.token})
    assert set(inventory.hosts) == {"edge-hk-1", "edge-us-1", "core-cn-1"}
    members = {
        name: {h.name for h in group.get_hosts()} for name, group in inventory.groups.items()
    }
    assert members["edge"] == {"edge-hk-1", "edge-us-1"}
    assert members["core"] == {"core-cn-1"}
    assert members["hk"] == {"edge-hk-1"}
    assert members["status_online"] == {"edge-hk-1", "core-cn-1"}
    assert members["status_offline"] == {"edge-us-1"}
    assert members["tag_gpu_near"] == {"edge-hk-1"}
    hostvars = inventory.get_host("core-cn-1").vars
    assert hostvars["ansible_host"] == "192.0.2.41"
    assert hostvars["aicdn_node_type"] == "core"
    assert hostvars["aicdn_region"] == "cn"
    assert hostvars["aicdn_node_port"] == 8443
    assert hostvars["aicdn_node_metadata"]["ws_port"] == 8444
    assert hostvars["aicdn_node"]["id"] == "n3"


def test_statuses_filter_and_group_by(tmp_path: Path, stub_master: StubMaster) -> None:
    inventory = parse(
        tmp_path,
        {
            "url": stub_master.url,
            "token": stub_master.token,
            "statuses": ["online"],
            "group_by": ["type"],
        },
    )
    assert set(inventory.hosts) == {"edge-hk-1", "core-cn-1"}
    assert "hk" not in inventory.groups
    assert "status_online" not in inventory.groups


def test_pages_through_the_nodes(tmp_path: Path, stub_master: StubMaster) -> None:
    inventory = parse(
        tmp_path, {"url": stub_master.url, "token": stub_master.token, "page_size": 2}
    )
    assert len(inventory.hosts) == 3
    assert [q["offset"] for q in stub_master.node_requests] == [["0"], ["2"]]


def test_logs_in_with_username_and_password(tmp_path: Path, stub_master: StubMaster) -> None:
    inventory = parse(
        tmp_path,
        {
            "url": stub_master.url,
            "username": stub_master.username,
            "password": stub_master.password,
        },
    )
    assert stub_master.logins == 1
    assert len(inventory.hosts) == 3


def test_wrong_password_is_a_clear_error(tmp_path: Path, stub_master: StubMaster) -> None:
    with pytest.raises(AnsibleParserError, match="HTTP 401: unknown user or wrong password"):
        parse(tmp_path, {"url": stub_master.url, "username": "operator", "password": "nope"})


def test_unreachable_master_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        AnsibleParserError, match=r"cannot reach the master at http://127\.0\.0\.1:9/"
    ):
        parse(tmp_path, {"url": "http://127.0.0.1:9", "token": "t", "timeout": 2})


def test_cache_serves_the_second_parse(tmp_path: Path, stub_master: StubMaster) -> None:
    config = {
        "url": stub_master.url,
        "token": stub_master.token,
        "cache": True,
        "cache_plugin": "jsonfile",
        "cache_connection": str(tmp_path / "cache"),
    }
    parse(tmp_path, config, cache=False)  # refresh: fetch and store
    stub_master.nodes = []
    inventory = parse(tmp_path, config, cache=True)  # served from the cache
    assert len(inventory.hosts) == 3
    assert len(stub_master.node_requests) == 1


def test_ansible_inventory_uses_the_collection_plugin(
    tmp_path: Path, stub_master: StubMaster
) -> None:
    """End to end: the repository's ansible.cfg, the FQCN, a token from the environment."""
    config = tmp_path / "aicdn_master.yml"
    config.write_text(
        (REPO / "inventory" / "aicdn_master.yml").read_text().replace("cache: true", "cache: false")
    )
    result = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(config), "--list"],
        cwd=REPO,
        env=ansible_env(AICDN_MASTER_URL=stub_master.url, AICDN_MASTER_TOKEN=stub_master.token),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    # statuses: [online, degraded, standby] in the example: the offline edge is left out.
    assert sorted(listing["_meta"]["hostvars"]) == ["core-cn-1", "edge-hk-1"]
    assert listing["edge"]["hosts"] == ["edge-hk-1"]
    assert listing["_meta"]["hostvars"]["edge-hk-1"]["aicdn_metrics_port"] == 9100


def test_templates_in_node_documents_are_never_run(tmp_path: Path, stub_master: StubMaster) -> None:
    """A node's metadata holding "{{ lookup('pipe', 'id') }}" is printed, not executed."""
    config = tmp_path / "aicdn_master.yml"
    config.write_text(f"plugin: aicdn.tunnel.aicdn_master\nurl: {stub_master.url}\n")
    result = subprocess.run(
        [str(BIN / "ansible"), "core-cn-1", "-i", str(config), "-c", "local",
         "-e", "ansible_python_interpreter={{ ansible_playbook_python }}",
         "-m", "ansible.builtin.debug", "-a", "var=aicdn_node_metadata.note"],
        cwd=REPO,
        env=ansible_env(AICDN_MASTER_TOKEN=stub_master.token),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert "lookup('pipe', 'id')" in result.stdout, result.stdout + result.stderr
    assert "uid=" not in result.stdout
