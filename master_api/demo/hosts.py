"""The demo's relay hosts: podman containers booting systemd, on a private network.

Each host is a container of the molecule image (``molecule/image/build.sh``: Debian with
systemd as PID 1 and what Ansible needs) on the internal podman network ``aicdn-demo``
(10.231.78.0/24, no route out). The master reaches them with Ansible's
``community.docker.nsenter`` connection (into the container's namespaces); clients and the
origin on this machine reach them on their addresses, and they reach the origin on the
network's gateway (10.231.78.1).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DemoHost", "HostError", "PodmanHosts"]

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
    """One relay host: the node it becomes and the container that runs it."""

    node: str  # node name in the master, e.g. "core-1"
    ip: str

    @property
    def container(self) -> str:
        return PREFIX + self.node


def _podman(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise HostError(f"podman {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class PodmanHosts:
    """Creates, waits for and removes the demo's containers."""

    def __init__(self, image: str = IMAGE) -> None:
        self.image = image
        # Containers get the open-file limit this process may hand out: raising it needs
        # CAP_SYS_RESOURCE, which a sandboxed machine may not have.
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def check(self) -> None:
        """Raise :class:`HostError` unless podman runs here and the image is built."""
        if shutil.which("podman") is None:
            raise HostError(
                "podman is not installed: apt-get install podman runc debootstrap "
                "(make demo does it when run as root)"
            )
        if subprocess.run(["podman", "info"], capture_output=True, check=False).returncode != 0:
            raise HostError("podman does not work here: `podman info` fails")
        done = subprocess.run(["podman", "image", "exists", self.image], check=False)
        if done.returncode != 0:
            raise HostError(f"image {self.image} is not built: run `make molecule-image`")

    def ensure_network(self) -> None:
        if subprocess.run(["podman", "network", "exists", NETWORK], check=False).returncode:
            _podman("network", "create", "--internal", "--subnet", SUBNET, NETWORK)

    def remove_all(self) -> list[str]:
        """Remove every demo container (of this run or an earlier one); returns their names."""
        names = _podman("ps", "-a", "--format", "{{.Names}}").split()
        mine = [name for name in names if name.startswith(PREFIX)]
        if mine:
            _podman("rm", "--force", "--time", "5", *mine)
        return mine

    def start(self, hosts: Sequence[DemoHost]) -> None:
        """Start ``hosts`` (fresh containers) and wait until systemd runs in each."""
        self.ensure_network()
        for host in hosts:
            _podman(
                "run", "--detach", "--name", host.container, "--hostname", host.node,
                "--runtime=runc", f"--network={NETWORK}", f"--ip={host.ip}",
                "--systemd=always", "--cap-add=SYS_ADMIN",
                "--ulimit", f"nofile={self.nofile}:{self.nofile}",
                "--ulimit", "nproc=32768:32768",
                self.image, "/sbin/init",
            )  # fmt: skip
        for host in hosts:
            self._wait_systemd(host)

    def pid(self, host: DemoHost) -> int:
        """The host's init process, as seen here: what Ansible's ``nsenter`` connection enters
        (far cheaper per task than ``podman exec``, which the podman connection pays several
        times per task)."""
        return int(_podman("container", "inspect", "--format", "{{.State.Pid}}", host.container))

    def _wait_systemd(self, host: DemoHost, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["podman", "exec", host.container, "systemctl", "is-system-running"],
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
        raise HostError(f"{host.container}: systemd did not come up ({state or 'no answer'})")
