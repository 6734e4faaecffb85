"""Demo hosts where podman cannot run: directories on this machine, each one host.

Every host has its own install root and config directory under the demo's work dir
(``hosts/<node>/opt/aicdn``, ``hosts/<node>/etc/aicdn``) and its own ports, all on loopback.
The master reaches them with Ansible's ``local`` connection, and the relay role runs the relay
as a process under start-stop-daemon (``relay_service_manager: process``) as the user running
the demo, changing nothing system-wide (``relay_manage_system: false``).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from master_api.demo.hosts import DemoHost, HostError, _config_version
from master_api.demo.processes import free_port

__all__ = ["LocalHosts"]


def _local_host(node: str, type_: str, region: str) -> DemoHost:
    return DemoHost(
        node, type_, region, "127.0.0.1", free_port(),
        admin_addr=f"127.0.0.1:{free_port()}", metrics_addr=f"127.0.0.1:{free_port()}",
    )  # fmt: skip


class LocalHosts:
    """A core and an edge as local-connection hosts under ``workdir/hosts``."""

    kind = "local"
    connection = "local"

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "hosts"
        self.core = _local_host("core-1", "core", "cn")
        self.edge = _local_host("edge-1", "edge", "hk")
        self.origin = f"127.0.0.1:{free_port()}"

    def prefix(self, host: DemoHost) -> Path:
        return self.root / host.node

    def _pidfile(self, host: DemoHost) -> Path:
        return self.prefix(host) / "opt/aicdn/run/relay.pid"

    def check(self) -> None:
        if shutil.which("start-stop-daemon") is None:
            raise HostError("start-stop-daemon (Debian's dpkg) is needed for local demo hosts")

    def start(self) -> None:
        self.stop()
        for host in (self.core, self.edge):
            self.prefix(host).mkdir(parents=True, exist_ok=True)

    def stop(self) -> list[str]:
        """Stop the relays of these hosts (and of an earlier run in the same work dir)."""
        stopped = []
        for pidfile in sorted(self.root.glob("*/opt/aicdn/run/relay.pid")):
            done = subprocess.run(
                ["start-stop-daemon", "--stop", "--quiet", "--pidfile", str(pidfile),
                 "--remove-pidfile", "--retry", "TERM/30/KILL/5"],
                check=False,
            )  # fmt: skip
            if done.returncode == 0:
                stopped.append(pidfile.parents[2].name)
        return stopped

    def ansible_vars(self, host: DemoHost) -> dict[str, Any]:
        prefix = self.prefix(host)
        return {
            "ansible_connection": "local",
            "relay_service_manager": "process",
            "relay_manage_system": False,
            "relay_install_root": str(prefix / "opt/aicdn"),
            "relay_config_dir": str(prefix / "etc/aicdn"),
            "relay_user": "root",
            "relay_group": "root",
        }

    def node_metadata(self, host: DemoHost) -> dict[str, Any]:
        # Where the @node placeholders point: this host's own config directory (the master's
        # node_base_dir is the same for every node).
        tls = self.prefix(host) / "etc/aicdn/tls"
        return {
            "cert_file": str(tls / f"{host.node}.pem"),
            "key_file": str(tls / f"{host.node}.key"),
            "ca_file": str(tls / "ca.pem"),
        }

    def relay_state(self, host: DemoHost) -> tuple[int, int | None]:
        pid = int(self._pidfile(host).read_text().strip())
        with urllib.request.urlopen(f"http://{host.admin_addr}/config", timeout=10) as answer:
            return pid, _config_version(answer.read().decode())
