"""What the demo asks of the master: its nodes and config versions, and deployments followed
live to their end."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from master_api.demo.client import ApiClient
from master_api.demo.hosts import DemoHost, Hosts
from master_api.demo.pki import DemoPki

__all__ = ["DeploymentFailed", "FleetSteps", "release_name"]


class DeploymentFailed(RuntimeError):
    """A deployment did not end ``successful``; the message has its error."""


def release_name(root: Path) -> str:
    """A release name that changes with the code: releases are immutable on the hosts and the
    wheelhouse of a name is reused, so new code must never ship under an old name."""
    digest = hashlib.sha256()
    files = [*sorted(root.joinpath("relay").rglob("*.py")), root / "pyproject.toml"]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"demo-{digest.hexdigest()[:10]}"


class FleetSteps:
    """The master operations of the demo, through its REST API as ``api``'s operator."""

    def __init__(self, api: ApiClient, password: str, say: Callable[[str], None]) -> None:
        self.api = api
        self.password = password  # the edges' tunnel credential, shared by the templates
        self.say = say

    # -- nodes and configs ----------------------------------------------------------------------

    def register(self, hosts: Hosts, host: DemoHost, tls: list[dict[str, str]]) -> str:
        """Register ``host`` with how Ansible reaches it and the TLS files it needs; returns
        its node id."""
        ansible_vars = {
            **hosts.ansible_vars(host),
            "relay_tls_files": tls,
            "relay_health_retries": 20,
            "relay_health_delay": 1,
        }
        node = self.api.call(
            "POST",
            "/nodes",
            {
                "name": host.node, "type": host.type, "region": host.region, "addr": host.addr,
                "port": host.port,
                "metadata": {**hosts.node_metadata(host), "ansible_vars": ansible_vars},
            },
        )  # fmt: skip
        self.say(
            f"registered {host.type} {host.node} ({host.region}) at {host.addr}:{host.port}, "
            f"id {node['id']}"
        )
        return str(node["id"])

    def register_fleet(self, hosts: Hosts, pki: DemoPki) -> None:
        """Register the core (its certificate and key) and the edge (the CA it verifies
        cores with)."""
        core, edge = hosts.core, hosts.edge
        self.register(
            hosts, core,
            [{"name": f"{core.node}.pem", "content": pki.core_cert},
             {"name": f"{core.node}.key", "content": pki.core_key}],
        )  # fmt: skip
        self.register(hosts, edge, [{"name": "ca.pem", "content": pki.ca_cert}])

    def core_params(self, hosts: Hosts) -> dict[str, Any]:
        core = hosts.core
        return {
            "transport": "tls", "port": core.port, "ws_port": None, "origins": [hosts.origin],
            "edge_password": self.password, "api_addr": core.admin_addr,
            "metrics_addr": core.metrics_addr,
        }  # fmt: skip

    def edge_params(self, hosts: Hosts, **changes: Any) -> dict[str, Any]:
        edge = hosts.edge
        return {
            "listener": "tcp", "port": edge.port, "http_port": None, "transport": "tls",
            "edge_password": self.password, "api_addr": edge.admin_addr,
            "metrics_addr": edge.metrics_addr, **changes,
        }  # fmt: skip

    def publish(self, node_type: str, params: Mapping[str, Any], description: str) -> int:
        """Create a version from the node type's template and publish it; returns its id."""
        version = self.api.call(
            "POST",
            "/configs",
            {"node_type": node_type, "template": node_type, "params": dict(params),
             "description": description},
        )  # fmt: skip
        version_id = int(version["version_id"])
        self.api.call("POST", f"/configs/{version_id}/publish")
        self.say(f"{node_type} config v{version_id} published: {description}")
        return version_id

    # -- deployments ----------------------------------------------------------------------------

    def deploy(self, body: Mapping[str, Any], quiet_tasks: bool = False) -> dict[str, Any]:
        """Create a deployment, print its events as they arrive, and return it once ended.
        Raises :class:`DeploymentFailed` unless it ends ``successful``."""
        started = time.monotonic()
        created = self.api.call("POST", "/deployments", dict(body))
        targets = ", ".join(t["name"] for t in created["targets"])
        self.say(f"deployment {created['id']} ({body['playbook']}) queued for {targets}")
        for name, event in self.api.events(created["id"]):
            line = _progress_line(name, event, time.monotonic() - started, quiet_tasks)
            if line:
                self.say(line)
        done: dict[str, Any] = self.api.call("GET", f"/deployments/{created['id']}")
        took = time.monotonic() - started
        if done["status"] != "successful":
            raise DeploymentFailed(
                f"deployment {done['id']} ended {done['status']}: {done.get('error')}"
            )
        hosts = ", ".join(f"{h['host']} {h['status']}" for h in done["result"]["hosts"])
        self.say(f"deployment {done['id']} successful in {took:.0f} s ({hosts})")
        return done


def _progress_line(name: str, event: Mapping[str, Any], elapsed: float, quiet: bool) -> str:
    """One line of live progress for a deployment event; empty to skip it."""
    stamp = f"  {elapsed:6.1f}s"
    data = event.get("data") or {}
    host = event.get("host") or ""
    task = event.get("task") or ""
    if name == "playbook_on_play_start":
        return f"{stamp}  play: {data.get('play', '')}"
    if name == "runner_on_ok" and (data.get("changed") or not quiet):
        mark = "changed" if data.get("changed") else "ok     "
        return f"{stamp}  [{host}] {mark} {task}"
    if name in ("runner_on_failed", "runner_on_unreachable"):
        return f"{stamp}  [{host}] FAILED  {task}: {data.get('msg', '')}"
    if name in ("deployment_finished", "rollback_started", "job_error"):
        return f"{stamp}  {name}: {data}"
    stdout = str(event.get("stdout") or "")
    if name == "verbose" and ("ERROR" in stdout or "WARNING" in stdout):
        return f"{stamp}  ansible: {stdout.strip()}"  # e.g. a playbook refused before it ran
    return ""
