# Copyright (c) AI CDN Tunnel authors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
name: aicdn_master
short_description: The relay fleet from the AI CDN Tunnel master's REST API
version_added: "0.1.0"
author: AI CDN Tunnel authors (@aicdn)
description:
  - Reads the nodes of the fleet from the master (C(GET /api/v1/nodes), paged) and makes one
    host per node, named after the node.
  - Groups hosts by node type (C(edge), C(core), C(master)), region (C(hk), C(cn), ...),
    status (C(status_online), ...) and tags (C(tag_<tag>)), each optional.
  - Host variables come from the node document - C(ansible_host) (its C(addr)),
    C(aicdn_node_id), C(aicdn_node_name), C(aicdn_node_type), C(aicdn_region), C(aicdn_node_addr),
    C(aicdn_node_port), C(aicdn_node_status), C(aicdn_node_tags), C(aicdn_node_metadata),
    C(aicdn_node_desired_version), C(aicdn_node_applied_version) and the whole document as
    C(aicdn_node). Every value read from the master is marked unsafe (never templated).
  - Authenticates with a bearer token (O(token)) or logs in with O(username) and O(password)
    (C(POST /api/v1/auth/login)).
  - The configuration file must end in C(aicdn_master.yml) or C(aicdn_master.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; always C(aicdn.tunnel.aicdn_master).
    type: str
    required: true
    choices: [aicdn.tunnel.aicdn_master, aicdn_master]
  url:
    description: Base URL of the master (without C(/api/v1)).
    type: str
    required: true
    env:
      - name: AICDN_MASTER_URL
  token:
    description: A JWT access token. Takes precedence over O(username)/O(password).
    type: str
    env:
      - name: AICDN_MASTER_TOKEN
  username:
    description: User to log in as when no O(token) is given.
    type: str
    env:
      - name: AICDN_MASTER_USERNAME
  password:
    description: Password of O(username).
    type: str
    env:
      - name: AICDN_MASTER_PASSWORD
  validate_certs:
    description: Verify the master's TLS certificate.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for each answer of the master.
    type: int
    default: 10
  page_size:
    description: Nodes asked for per request.
    type: int
    default: 500
  group_by:
    description: Which node fields make groups.
    type: list
    elements: str
    choices: [type, region, status, tags]
    default: [type, region, status, tags]
  statuses:
    description: Only nodes with one of these statuses become hosts (empty - all).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
# inventory/aicdn_master.yml
plugin: aicdn.tunnel.aicdn_master
url: https://master.example:8080
# token from AICDN_MASTER_TOKEN, or username/password
group_by: [type, region, status]
statuses: [online, degraded]
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/aicdn/inventory
cache_timeout: 60
keyed_groups:
  - key: aicdn_node_metadata.rack | default('none')
    prefix: rack
compose:
  relay_version: aicdn_node_desired_version
"""

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var

_TEMPLATE_CHARS = re.compile(r"[{}%#]")
_GROUP_SAFE = re.compile(r"[^A-Za-z0-9_]")


def make_unsafe(value: Any) -> Any:
    """``value`` with every string marked unsafe, so remote data is never templated."""
    if isinstance(value, Mapping):
        return {make_unsafe(key): make_unsafe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [make_unsafe(item) for item in value]
    if isinstance(value, str):
        return wrap_var(value)
    return value


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts and groups from the master's node inventory."""

    NAME = "aicdn.tunnel.aicdn_master"

    def verify_file(self, path: str) -> bool:
        valid = super().verify_file(path)
        return bool(valid) and path.endswith(("aicdn_master.yml", "aicdn_master.yaml"))

    # -- talking to the master --------------------------------------------------------------

    def _request(self, method: str, path: str, token: str | None, body: Any = None) -> Any:
        url = self.get_option("url").rstrip("/") + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = open_url(
                url,
                method=method,
                data=data,
                headers=headers,
                validate_certs=self.get_option("validate_certs"),
                timeout=self.get_option("timeout"),
                follow_redirects="safe",
            )
            raw = response.read()
        except HTTPError as exc:
            raise AnsibleError(
                f"the master answered {method} {url} with HTTP {exc.code}: {_error_text(exc)}"
            ) from exc
        except (URLError, OSError) as exc:
            raise AnsibleError(f"cannot reach the master at {url}: {to_native(exc)}") from exc
        try:
            return json.loads(to_text(raw))
        except ValueError as exc:
            raise AnsibleError(f"the master's answer to {method} {url} is not JSON") from exc

    def _token(self) -> str:
        token = self.get_option("token")
        if token:
            return str(token)
        username = self.get_option("username")
        password = self.get_option("password")
        if not username or not password:
            raise AnsibleError(
                "aicdn_master: give a token (token / AICDN_MASTER_TOKEN) or username and "
                "password (AICDN_MASTER_USERNAME / AICDN_MASTER_PASSWORD)"
            )
        answer = self._request(
            "POST", "/api/v1/auth/login", None, {"username": username, "password": password}
        )
        if not isinstance(answer, Mapping) or not answer.get("access_token"):
            raise AnsibleError("aicdn_master: the master's login answer has no access_token")
        return str(answer["access_token"])

    def fetch_nodes(self) -> list[dict[str, Any]]:
        """Every node document, following ``limit``/``offset`` pages until ``total``."""
        token = self._token()
        size = self.get_option("page_size")
        nodes: list[dict[str, Any]] = []
        while True:
            query = urlencode({"limit": size, "offset": len(nodes)})
            answer = self._request("GET", f"/api/v1/nodes?{query}", token)
            if isinstance(answer, list):  # an unpaged list
                return [node for node in answer if isinstance(node, dict)]
            if not isinstance(answer, Mapping) or not isinstance(answer.get("items"), list):
                raise AnsibleError("aicdn_master: GET /api/v1/nodes answered without items")
            page = [node for node in answer["items"] if isinstance(node, dict)]
            nodes.extend(page)
            total = answer.get("total")
            if not page or not isinstance(total, int) or len(nodes) >= total:
                return nodes

    # -- building the inventory -------------------------------------------------------------

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        nodes: list[dict[str, Any]] | None = None
        if use_cache:
            try:
                nodes = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if nodes is None:
            try:
                nodes = self.fetch_nodes()
            except AnsibleError as exc:
                raise AnsibleParserError(to_native(exc)) from exc
        if update_cache:
            self._cache[cache_key] = nodes
        self.populate(nodes)

    def populate(self, nodes: list[dict[str, Any]]) -> None:
        statuses = self.get_option("statuses")
        group_by = self.get_option("group_by")
        strict = self.get_option("strict")
        for raw in nodes:
            node = make_unsafe(raw)
            name = node.get("name")
            if not name:
                self.display.warning(f"aicdn_master: skipping a node without a name: {raw!r}")
                continue
            if statuses and node.get("status") not in statuses:
                continue
            host = self.inventory.add_host(name)
            hostvars = _hostvars(node)
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            for group in _groups(node, group_by):
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(
                self.get_option("groups"), hostvars, host, strict=strict
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, host, strict=strict
            )


def _hostvars(node: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "aicdn_node": dict(node),
        "aicdn_node_id": node.get("id"),
        "aicdn_node_name": node.get("name"),
        "aicdn_node_type": node.get("type"),
        "aicdn_region": node.get("region"),
        "aicdn_node_addr": node.get("addr"),
        "aicdn_node_port": node.get("port"),
        "aicdn_node_status": node.get("status"),
        "aicdn_node_tags": list(node.get("tags") or []),
        "aicdn_node_metadata": dict(node.get("metadata") or {}),
        "aicdn_node_desired_version": node.get("desired_version"),
        "aicdn_node_applied_version": node.get("applied_version"),
    }
    if node.get("addr"):
        out["ansible_host"] = node["addr"]
    return out


def _group_name(value: Any) -> str:
    return _GROUP_SAFE.sub("_", str(value))


def _groups(node: Mapping[str, Any], group_by: list[str]) -> list[str]:
    groups: list[str] = []
    if "type" in group_by and node.get("type"):
        groups.append(_group_name(node["type"]))
    if "region" in group_by and node.get("region"):
        groups.append(_group_name(node["region"]))
    if "status" in group_by and node.get("status"):
        groups.append(f"status_{_group_name(node['status'])}")
    if "tags" in group_by:
        groups.extend(f"tag_{_group_name(tag)}" for tag in node.get("tags") or [])
    return groups


def _error_text(exc: HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return to_native(exc.reason)
    if isinstance(body, Mapping):
        return str(body.get("message") or body.get("error") or exc.reason)
    return to_native(exc.reason)
