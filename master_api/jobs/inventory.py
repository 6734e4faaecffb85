"""The inventory of one deployment, built from the node documents in MongoDB.

Host names are node names. Host variables mirror the ``aicdn.tunnel.aicdn_master`` inventory
plugin (``ansible_host`` = the node's ``addr``, ``aicdn_node_id``, ``aicdn_node_type``,
``aicdn_region``, ``aicdn_node_metadata``...), plus ``aicdn_node_release``; groups are the node
type (``edge``, ``core``), the region (``hk``) and ``tag_<tag>``, as the plugin makes them.

A node may carry connection settings and role inputs for Ansible in ``metadata.ansible_vars``
(an object of host variables). Only an allow-list is taken from there, because whoever may edit
a node must not be able to run commands on the master through Ansible (``ansible_ssh_common_args``
with a ProxyCommand, ``ansible_python_interpreter`` on a local connection...):

* ``ansible_host``, ``ansible_port``, ``ansible_user``, ``ansible_become``;
* ``ansible_connection``, with a value from ``Settings.deploy_connections`` (default ``ssh``
  only; the local test hosts need ``local`` there, the demo's containers
  ``community.docker.nsenter``);
* ``ansible_nsenter_pid`` (an integer), for hosts on that connection: a process of the
  container to enter (it only matters once an operator allowed ``community.docker.nsenter``);
* variables named ``aicdn_*``, ``relay_*``, ``tuning_*`` or ``monitoring_*`` (role inputs).

Anything else refuses the deployment with :class:`InventoryError` naming the node and variable.
A host on the ``local`` connection runs its modules with the master's own interpreter.
Every string value is written ``!unsafe`` (see :mod:`master_api.jobs.files`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from master_api.models import Node

__all__ = ["ANSIBLE_VARS_KEY", "InventoryError", "host_vars", "inventory_document"]

#: The node metadata key whose object holds extra host variables.
ANSIBLE_VARS_KEY = "ansible_vars"
_ALLOWED_NAMES = frozenset(
    {
        "ansible_host",
        "ansible_port",
        "ansible_user",
        "ansible_become",
        "ansible_connection",
        "ansible_nsenter_pid",
    }
)
_ALLOWED_PREFIXES = ("aicdn_", "relay_", "tuning_", "monitoring_")
_VAR_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_GROUP_SAFE = re.compile(r"[^A-Za-z0-9_]")


class InventoryError(ValueError):
    """A node's variables cannot go into an inventory; the message names node and variable."""


def _group(value: str) -> str:
    return _GROUP_SAFE.sub("_", value)


def _extra_vars(node: Node, connections: Sequence[str]) -> dict[str, Any]:
    raw = node.metadata.get(ANSIBLE_VARS_KEY)
    if raw is None:
        return {}
    where = f"node {node.name}: metadata.{ANSIBLE_VARS_KEY}"
    if not isinstance(raw, Mapping):
        raise InventoryError(f"{where} must be an object of host variables")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if not _VAR_NAME.match(name) or not (
            name in _ALLOWED_NAMES or name.startswith(_ALLOWED_PREFIXES)
        ):
            raise InventoryError(
                f"{where}.{name} is not allowed (allowed: {', '.join(sorted(_ALLOWED_NAMES))} "
                f"and names starting with {', '.join(_ALLOWED_PREFIXES)})"
            )
        if name == "ansible_nsenter_pid" and (
            isinstance(value, bool) or not isinstance(value, int)
        ):
            raise InventoryError(f"{where}.ansible_nsenter_pid must be an integer (a PID)")
        if name == "ansible_connection" and value not in connections:
            raise InventoryError(
                f"{where}.ansible_connection {value!r} is not allowed here "
                f"(AICDN_DEPLOY_CONNECTIONS: {', '.join(connections)})"
            )
        out[name] = value
    return out


def host_vars(node: Node, connections: Sequence[str]) -> dict[str, Any]:
    """The host variables of ``node``; raises :class:`InventoryError` for a variable in its
    ``metadata.ansible_vars`` that is not allowed."""
    out: dict[str, Any] = {
        "ansible_host": node.addr,
        "aicdn_node_id": node.id,
        "aicdn_node_name": node.name,
        "aicdn_node_type": node.type,
        "aicdn_region": node.region,
        "aicdn_node_addr": node.addr,
        "aicdn_node_port": node.port,
        "aicdn_node_status": node.status,
        "aicdn_node_tags": list(node.tags),
        "aicdn_node_metadata": {k: v for k, v in node.metadata.items() if k != ANSIBLE_VARS_KEY},
        "aicdn_node_applied_version": node.applied_version,
        "aicdn_node_release": node.release,
    }
    out.update(_extra_vars(node, connections))
    if out.get("ansible_connection") == "local":
        # Modules of a local host run in the master's own interpreter (never one the node
        # document names: ansible_python_interpreter is not on the allow-list).
        out["ansible_python_interpreter"] = sys.executable
    return out


def inventory_document(
    nodes: Iterable[Node],
    connections: Sequence[str],
    master_vars: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The YAML inventory (``all.hosts`` with their variables, ``all.children`` groups) of
    ``nodes``; raises :class:`InventoryError` (see :func:`host_vars`). ``master_vars`` (by node
    id) are variables the master sets for a host, e.g. its rendered config: they win over the
    node's own ``ansible_vars``."""
    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for node in nodes:
        hosts[node.name] = host_vars(node, connections)
        hosts[node.name].update((master_vars or {}).get(node.id, {}))
        names = [_group(node.type), _group(node.region)]
        names += [f"tag_{_group(tag)}" for tag in node.tags]
        for name in names:
            groups.setdefault(name, {"hosts": {}})["hosts"][node.name] = {}
    return {"all": {"hosts": hosts, "children": groups}}
