# Copyright (c) AI CDN Tunnel authors
# SPDX-License-Identifier: Apache-2.0
"""Filters that render a relay node's config with the fleet renderer the master uses.

There is exactly one renderer: ``relay.config.fleet``. These filters only translate Ansible
data (host vars, lists of dicts) into its ``FleetNode`` and call ``expand_template`` /
``render_node_config``; every rule about peers, ``@node`` placeholders and validation lives
there. The ``relay`` package must be importable by the Python that runs ansible-playbook.
Documentation: ``gost_config.yml`` and ``fleet_node.yml`` beside this file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from relay.config import ConfigError
    from relay.config.fleet import DEFAULT_BASE_DIR, FleetNode, expand_template, render_node_config
except ImportError as _exc:  # pragma: no cover - exercised only without the relay package
    RELAY_IMPORT_ERROR: ImportError | None = _exc
    DEFAULT_BASE_DIR = "/etc/aicdn"
else:
    RELAY_IMPORT_ERROR = None

#: Host vars the inventory (static group_vars or the aicdn_master plugin) describes a node with.
_HOSTVAR_KEYS = {
    "id": "aicdn_node_id",
    "name": "aicdn_node_name",
    "type": "aicdn_node_type",
    "region": "aicdn_region",
    "addr": "aicdn_node_addr",
    "port": "aicdn_node_port",
    "status": "aicdn_node_status",
    "tags": "aicdn_node_tags",
    "metadata": "aicdn_node_metadata",
}


def _plain(value: Any) -> Any:
    """``value`` as plain Python data: Ansible hands filters its own str/dict/list subclasses
    (tagged values, lazy containers), which the renderer's YAML dumper refuses to represent."""
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Sequence | set | frozenset):
        return [_plain(item) for item in value]
    return value


def _require_relay() -> None:
    if RELAY_IMPORT_ERROR is not None:
        raise AnsibleFilterError(
            "the gost_config filters need the relay package (pip install aicdn-tunnel) "
            f"on the controller: {RELAY_IMPORT_ERROR}"
        )


def _issues(exc: ConfigError) -> str:
    return "; ".join(str(issue) for issue in exc.issues)


def fleet_node(hostvars: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """A node mapping (FleetNode fields) from one host's variables.

    Reads ``aicdn_node_*``/``aicdn_region``; the name defaults to ``inventory_hostname``
    (or ``name``), the id to the name, the address to ``ansible_host``.
    """
    if not isinstance(hostvars, Mapping):
        raise AnsibleFilterError(
            f"fleet_node expects a host's variables (a mapping), got {type(hostvars).__name__}"
        )
    host = name or hostvars.get("inventory_hostname")
    node: dict[str, Any] = {}
    for field, var in _HOSTVAR_KEYS.items():
        if var in hostvars and hostvars[var] is not None:
            node[field] = _plain(hostvars[var])
    node.setdefault("name", host)
    node.setdefault("id", node["name"])
    if "addr" not in node:
        node["addr"] = hostvars.get("ansible_host") or node["name"]
    return node


def _to_fleet_node(value: Any, what: str) -> FleetNode:
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"{what}: expected a node mapping, got {type(value).__name__}")
    missing = [key for key in ("name", "type", "addr", "port") if value.get(key) in (None, "")]
    if missing:
        raise AnsibleFilterError(f"{what}: missing {', '.join(missing)} in {dict(value)!r}")
    port = value["port"]
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{what}.port: expected an integer, got {port!r}") from None
    tags = value.get("tags") or ()
    metadata = value.get("metadata") or {}
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise AnsibleFilterError(f"{what}.tags: expected a list, got {type(tags).__name__}")
    if not isinstance(metadata, Mapping):
        raise AnsibleFilterError(
            f"{what}.metadata: expected a mapping, got {type(metadata).__name__}"
        )
    return FleetNode(
        id=str(value.get("id") or value["name"]),
        name=str(value["name"]),
        type=str(value["type"]),  # type: ignore[arg-type]  # checked by the renderer
        region=str(value.get("region") or "any"),
        addr=str(value["addr"]),
        port=port,
        status=str(value.get("status") or "online"),
        tags=tuple(str(tag) for tag in tags),
        metadata=dict(metadata),
    )


def gost_config(
    node: Mapping[str, Any],
    peers: Sequence[Mapping[str, Any]] | None = None,
    config_data: str | None = None,
    template: str | None = None,
    params: Mapping[str, Any] | None = None,
    version: int = 0,
    base_dir: str = DEFAULT_BASE_DIR,
) -> str:
    """YAML text of ``node``'s relay config, as ``relay.config.fleet.render_node_config``.

    The generic config is ``config_data`` (a config version's YAML) or, when it is empty,
    ``expand_template(template or node.type, params)``.
    """
    _require_relay()
    node, peers, params = _plain(node), _plain(peers), _plain(params)
    config_data = None if config_data is None else str(config_data)
    fleet_self = _to_fleet_node(node, "node")
    if peers is None:
        peers = []
    if isinstance(peers, str | Mapping) or not isinstance(peers, Sequence):
        raise AnsibleFilterError(f"peers: expected a list of nodes, got {type(peers).__name__}")
    fleet_peers = [_to_fleet_node(peer, f"peers[{i}]") for i, peer in enumerate(peers)]
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"version: expected an integer, got {version!r}") from None
    try:
        if not config_data:
            config_data = expand_template(template or fleet_self.type, dict(params or {}))
        return render_node_config(config_data, fleet_self, fleet_peers, version, base_dir)
    except ConfigError as exc:
        raise AnsibleFilterError(
            f"cannot render the relay config of node {fleet_self.name!r}: {_issues(exc)}"
        ) from exc


class FilterModule:
    """aicdn.tunnel filters: gost_config, fleet_node."""

    def filters(self) -> dict[str, Any]:
        return {"gost_config": gost_config, "fleet_node": fleet_node}
