"""A tiny Ansible project for the deployment tests, independent of the repository's playbooks:
``deploy.yml``, ``rollback.yml`` and ``reload.yml`` that write marker files under each host's
own prefix (``aicdn_prefix``) on local-connection hosts, and fail, pause or echo a note when the
host's variables say so (``aicdn_fail``, ``aicdn_sleep``, ``aicdn_note``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from master_api.settings import Settings
from tests.master.conftest import Caller, base_settings, register

DEPLOY = """\
- name: Deploy the test release
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the release marker
      ansible.builtin.copy:
        dest: "{{ aicdn_prefix }}/release"
        content: "{{ relay_version | default('none') }} {{ aicdn_note | default('') }}\\n"
        mode: "0644"
    - name: Wait when told to
      ansible.builtin.pause:
        seconds: "{{ aicdn_sleep | default('0') | int }}"
      when: (aicdn_sleep | default('0') | int) > 0
    - name: Fail when told to
      ansible.builtin.fail:
        msg: told to fail
      when: aicdn_fail | default(false) | bool
    - name: Write the done marker
      ansible.builtin.copy:
        dest: "{{ aicdn_prefix }}/done"
        content: "{{ relay_config_version | default('none') }}\\n"
        mode: "0644"
    - name: Install the config the master rendered
      ansible.builtin.copy:
        dest: "{{ aicdn_prefix }}/relay.yaml"
        content: "{{ relay_config_rendered }}"
        mode: "0644"
      when: relay_config_rendered is defined
"""

ROLLBACK = """\
- name: Roll back
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the rollback marker
      vars:
        __to: "{{ relay_rollback_to | default('previous') }}"
      ansible.builtin.copy:
        dest: "{{ aicdn_prefix }}/rolled_back"
        content: "{{ aicdn_rollback_of | default('manual') }} {{ __to }}\\n"
        mode: "0644"
"""

RELOAD = """\
- name: Reload the config
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the config marker
      ansible.builtin.copy:
        dest: "{{ aicdn_prefix }}/config"
        content: "{{ relay_config_version | default('none') }}\\n"
        mode: "0644"
"""

ANSIBLE_CFG = """\
[defaults]
gathering = explicit
retry_files_enabled = false
host_key_checking = false
forks = 10
"""


def write_project(root: Path) -> Path:
    """Write the project under ``root``; returns its ``playbooks`` directory."""
    playbooks = root / "playbooks"
    playbooks.mkdir(parents=True)
    (playbooks / "deploy.yml").write_text(DEPLOY)
    (playbooks / "rollback.yml").write_text(ROLLBACK)
    (playbooks / "reload.yml").write_text(RELOAD)
    (root / "ansible.cfg").write_text(ANSIBLE_CFG)
    return playbooks


def deploy_settings(mongo_uri: str, root: Path, **overrides: Any) -> Settings:
    """Test settings running the project under ``root`` (local connections allowed)."""
    playbooks = write_project(root / "project")
    values: dict[str, Any] = {
        "ansible_playbook_dir": str(playbooks),
        "ansible_config": str(root / "project" / "ansible.cfg"),
        "deploy_work_dir": str(root / "work"),
        "deploy_connections": ("ssh", "local"),
        "deploy_poll_interval": 0.1,
        "deploy_event_flush": 0.1,
        "deploy_idle_timeout": 120.0,
        "deploy_job_timeout": 300.0,
    }
    values.update(overrides)
    return base_settings(mongo_uri, **values)


def local_node(
    caller: Caller,
    root: Path,
    name: str,
    type_: str = "edge",
    region: str = "hk",
    tags: tuple[str, ...] = (),
    **host: Any,
) -> dict[str, Any]:
    """Register a node on the local connection with its own prefix ``root/hosts/<name>`` and
    the host variables ``host``."""
    prefix = root / "hosts" / name
    prefix.mkdir(parents=True)
    ansible_vars = {"ansible_connection": "local", "aicdn_prefix": str(prefix), **host}
    node = register(
        caller, name, type_, region, tags=list(tags), metadata={"ansible_vars": ansible_vars}
    )
    node["prefix"] = prefix
    return node
