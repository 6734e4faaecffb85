"""The ``tls`` role through ``playbooks/tls.yml`` (real ansible-playbook, two local hosts): it
issues a fleet CA and a certificate per node that chains to it with the names the fleet uses,
changes nothing on a second run, and rotates keys and certificates on ``tls_rotate``."""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aicdn_ansible_helpers import BIN, REPO, ansible_env
from cryptography import x509
from cryptography.hazmat.primitives import serialization

HOSTS = ("edge-a", "core-b")


def _run(inventory: Path, *extra: str) -> str:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/tls.yml",
         "-e", "ansible_become=false", *extra],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result.stdout


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.slow
def test_the_tls_role_issues_checks_and_rotates(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    hosts = {
        name: {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_host": "127.0.0.1",
            "tls_dir": str(tmp_path / "hosts" / name),
        }
        for name in HOSTS
    }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "tls_pki_dir": str(tmp_path / "pki"),
                        "tls_owner": user,
                        "tls_group": group,
                        "tls_reload_services": [],
                    },
                    "children": {"edge": {"hosts": {"edge-a": hosts["edge-a"]}},
                                 "core": {"hosts": {"core-b": hosts["core-b"]}}},
                }
            }
        )
    )  # fmt: skip
    _run(inventory)
    ca = _cert(tmp_path / "pki" / "ca.pem")
    assert (tmp_path / "pki").stat().st_mode & 0o777 == 0o700
    first: dict[str, x509.Certificate] = {}
    for name in HOSTS:
        directory = tmp_path / "hosts" / name
        assert _cert(directory / "ca.pem") == ca
        cert = _cert(directory / f"{name}.pem")
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {name, "localhost"}
        assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
        key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), None)
        assert key.public_key() == cert.public_key()
        assert (directory / f"{name}.key").stat().st_mode & 0o777 == 0o640
        first[name] = cert

    again = _run(inventory)
    for name in HOSTS:
        recap = re.search(rf"^{name}\s+:.*\bchanged=(\d+)", again, re.MULTILINE)
        assert recap is not None and recap.group(1) == "0", again[-3000:]
        assert _cert(tmp_path / "hosts" / name / f"{name}.pem") == first[name]

    _run(inventory, "-e", "tls_rotate=true")
    for name in HOSTS:
        rotated = _cert(tmp_path / "hosts" / name / f"{name}.pem")
        assert rotated.serial_number != first[name].serial_number
        assert rotated.public_key() != first[name].public_key()
        rotated.verify_directly_issued_by(ca)  # same fleet CA: peers keep trusting it
