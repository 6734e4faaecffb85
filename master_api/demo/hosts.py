"""The demo's relay hosts: what they are, and the two kinds it can run on.

:class:`PodmanHosts` (preferred): containers of the molecule image (``molecule/image/build.sh``:
Debian with systemd as PID 1) on the internal podman network ``aicdn-demo`` (10.231.78.0/24, no
route out), reached with Ansible's ``community.docker.nsenter`` connection; the relay runs under
systemd as on a real host. :class:`~master_api.demo.local_hosts.LocalHosts` (where podman cannot
run): directories on this machine, each with its own install root and ports, reached with the
``local`` connection; the relay runs under start-stop-daemon (the role's ``process`` mode).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DemoHost", "HostError", "Hosts", "PodmanHosts"]

IMAGE = "localhost/aicdn-debian-systemd:bookworm"
NETWORK = "aicdn-demo"
SUBNET = "10.231.78.0/24"
GATEWAY = "10.231.78.1"
#: Every demo container's name starts with this, so a later run can find and remove them.
PREFIX = "aicdn-demo-"


class HostError(RuntimeError):
    """A host cannot be provided; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class DemoHost:
    """One relay host and the node it becomes: where clients and peers reach it, and where its
    relay's admin API and metrics listen (as the host sees them)."""

    node: str  # node name in the master, e.g. "core-1"
    type: str
    region: str
    addr: str
    port: int
    admin_addr: str
    metrics_addr: str


class Hosts(Protocol):
    """A kind of demo host."""

    kind: str
    #: The value of ``AICDN_DEPLOY_CONNECTIONS`` the master needs for these hosts.
    connection: str
    core: DemoHost
    edge: DemoHost
    #: Where the origin listens (reachable from the core).
    origin: str

    def check(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> list[str]: ...
    def ansible_vars(self, host: DemoHost) -> dict[str, Any]: ...
    def node_metadata(self, host: DemoHost) -> dict[str, Any]: ...
    def relay_state(self, host: DemoHost) -> tuple[int, int | None]: ...


def _podman(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise HostError(f"podman {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _podman_host(node: str, type_: str, region: str, ip: str, port: int) -> DemoHost:
    # One relay per container: the templates' default admin and metrics addresses fit.
    return DemoHost(node, type_, region, ip, port, "127.0.0.1:18080", ":9100")


class PodmanHosts:
    """Two containers booting systemd: ``aicdn-demo-core-1`` and ``aicdn-demo-edge-1``."""

    kind = "podman"
    connection = "community.docker.nsenter"
    core = _podman_host("core-1", "core", "cn", "10.231.78.11", 8443)
    edge = _podman_host("edge-1", "edge", "hk", "10.231.78.12", 8080)
    origin = f"{GATEWAY}:8000"

    def __init__(self, image: str = IMAGE) -> None:
        self.image = image
        # Containers get the open-file limit this process may hand out: raising it needs
        # CAP_SYS_RESOURCE, which a sandboxed machine may not have.
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    @staticmethod
    def container(host: DemoHost) -> str:
        return PREFIX + host.node

    def check(self) -> None:
        """Raise :class:`HostError` unless podman runs here and the image is built."""
        if shutil.which("podman") is None:
            raise HostError("podman is not installed (apt-get install podman runc debootstrap)")
        if subprocess.run(["podman", "info"], capture_output=True, check=False).returncode != 0:
            raise HostError("podman does not work here: `podman info` fails")
        done = subprocess.run(["podman", "image", "exists", self.image], check=False)
        if done.returncode != 0:
            raise HostError(f"image {self.image} is not built: run `make molecule-image`")

    def stop(self) -> list[str]:
        """Remove every demo container (of this run or an earlier one); returns their names."""
        if shutil.which("podman") is None:
            return []
        names = _podman("ps", "-a", "--format", "{{.Names}}").split()
        mine = [name for name in names if name.startswith(PREFIX)]
        if mine:
            _podman("rm", "--force", "--time", "5", *mine)
        return mine

    def start(self) -> None:
        """Fresh containers for both hosts, once systemd runs in each."""
        self.stop()
        if subprocess.run(["podman", "network", "exists", NETWORK], check=False).returncode:
            _podman("network", "create", "--internal", "--subnet", SUBNET, NETWORK)
        for host in (self.core, self.edge):
            _podman(
                "run", "--detach", "--name", self.container(host), "--hostname", host.node,
                "--runtime=runc", f"--network={NETWORK}", f"--ip={host.addr}",
                "--systemd=always", "--cap-add=SYS_ADMIN",
                "--ulimit", f"nofile={self.nofile}:{self.nofile}",
                "--ulimit", "nproc=32768:32768",
                self.image, "/sbin/init",
            )  # fmt: skip
        for host in (self.core, self.edge):
            self._wait_systemd(host)

    def ansible_vars(self, host: DemoHost) -> dict[str, Any]:
        # nsenter into the container's init costs milliseconds per command, where the podman
        # connection pays several `podman exec` (~0.4 s each) per task.
        inspect = ("container", "inspect", "--format", "{{.State.Pid}}", self.container(host))
        pid = int(_podman(*inspect))
        return {
            "ansible_connection": self.connection,
            "ansible_nsenter_pid": pid,
            "relay_limit_nofile": self.nofile,
        }

    def node_metadata(self, host: DemoHost) -> dict[str, Any]:
        return {}  # certificates at the renderer's defaults (/etc/aicdn/tls/...)

    def relay_state(self, host: DemoHost) -> tuple[int, int | None]:
        """The relay's main PID (systemd) and the config version it runs (admin API)."""
        container = self.container(host)
        pid = _podman(
            "exec", container, "systemctl", "show", "-p", "MainPID", "--value", "aicdn-relay"
        )
        probe = (
            "import urllib.request;"
            f"print(urllib.request.urlopen('http://{host.admin_addr}/config').read().decode())"
        )
        config = _podman("exec", container, "/opt/aicdn/current/venv/bin/python", "-c", probe)
        return int(pid), _config_version(config)

    def _wait_systemd(self, host: DemoHost, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["podman", "exec", self.container(host), "systemctl", "is-system-running"],
                capture_output=True,
                text=True,
                check=False,
            )
            state = done.stdout.strip()
            # "degraded": a unit the image does not need failed (e.g. no kernel module); the
            # relay's own unit is what the deploy's health gate judges.
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise HostError(f"{self.container(host)}: systemd did not come up ({state or 'no answer'})")


def _config_version(text: str) -> int | None:
    """The ``version`` of the relay's ``GET /config`` answer (JSON)."""
    version = json.loads(text).get("version")
    return version if isinstance(version, int) else None
