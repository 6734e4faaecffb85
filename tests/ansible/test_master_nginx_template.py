"""The ``master`` role's nginx template renders (through ansible's own template action) into a
configuration nginx accepts (``nginx -t``), plain and with TLS; ``test_master_cluster.py`` runs
the same balancing rules in front of three masters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aicdn_ansible_helpers import BIN, REPO, ansible_env

from tests.certs import issue, make_ca

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
@pytest.mark.parametrize("tls", [False, True])
def test_the_nginx_template_is_a_valid_nginx_config(tmp_path: Path, tls: bool) -> None:
    assert NGINX is not None
    pair = issue(make_ca(tmp_path), "balancer")
    site = tmp_path / "aicdn-master.conf"
    playbook = tmp_path / "render.yml"
    variables = {
        "__master_nginx_upstreams": ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"],
        "master_nginx_listen": "127.0.0.1:18443",
        "master_nginx_tls_cert_file": str(pair.cert_file) if tls else "",
        "master_nginx_tls_key_file": str(pair.key_file) if tls else "",
    }
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the master's nginx site",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": variables,
                    "tasks": [
                        {
                            "name": "Render it",
                            "ansible.builtin.template": {
                                "src": str(REPO / "roles/master/templates/nginx-masters.conf.j2"),
                                "dest": str(site),
                                "mode": "0644",
                            },
                        }
                    ],
                }
            ]
        )
    )
    rendered = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stdout[-3000:] + rendered.stderr[-2000:]
    text = site.read_text()
    assert text.count("server 127.0.0.1:1808") == 3
    assert ("ssl_protocols TLSv1.3;" in text) is tls
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;\n    include {site};\n}}\n"
    )
    checked = subprocess.run(
        [NGINX, "-t", "-q", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
