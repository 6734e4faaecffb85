#!/usr/bin/python
# Copyright (c) AI CDN Tunnel authors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: relay_config
short_description: Validate a relay config with the relay's own checker and install it atomically
version_added: "0.1.0"
author: AI CDN Tunnel authors (@aicdn)
description:
  - Checks O(content) with the relay's checker (C(relay.config.load_config_text), the code behind
    C(aicdn-relay check)) and, only when it is valid, writes it to O(dest) atomically
    (temporary file in the same directory, then rename), optionally keeping a backup.
  - A refused config fails the task with every problem, each naming the path of the bad field;
    O(dest) is left as it was.
  - The C(relay) package must be importable by the Python that runs the module, for example
    by setting C(ansible_python_interpreter) to the release's virtualenv Python.
options:
  content:
    description:
      - The relay config, YAML text (for example rendered by P(aicdn.tunnel.gost_config#filter)).
    type: str
    required: true
  dest:
    description: Path of the config file to install.
    type: path
    required: true
  backup:
    description: Keep a timestamped copy of the previous file when it changes.
    type: bool
    default: false
  base_dir:
    description:
      - Directory that relative certificate paths in the config resolve against.
      - Defaults to the directory of O(dest), as C(aicdn-relay run -C) resolves them.
    type: path
  check_files:
    description: Also check that the certificate files the config names exist.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements:
  - the C(relay) package (C(aicdn-tunnel)) on the target's Python
"""

EXAMPLES = r"""
- name: Install the relay config
  aicdn.tunnel.relay_config:
    content: "{{ node | aicdn.tunnel.gost_config(peers, version=3) }}"
    dest: /opt/aicdn/releases/3/relay.yaml
    owner: root
    group: aicdn
    mode: "0640"
    backup: true
  vars:
    ansible_python_interpreter: /opt/aicdn/releases/3/venv/bin/python
"""

RETURN = r"""
dest:
  description: The installed file.
  returned: always
  type: str
  sample: /etc/aicdn/relay.yaml
checksum:
  description: SHA-1 of the new content.
  returned: always
  type: str
  sample: 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed
backup_file:
  description: The backup of the previous file.
  returned: when O(backup=true) and the file changed
  type: str
  sample: /etc/aicdn/relay.yaml.1234.2026-01-01@00:00:00~
services:
  description: Names of the services the config defines.
  returned: when the config is valid
  type: list
  elements: str
  sample: [entry, entry-http]
chains:
  description: Names of the chains the config defines.
  returned: when the config is valid
  type: list
  elements: str
  sample: [to-core]
version:
  description: The config version the config carries (0 when unset).
  returned: when the config is valid
  type: int
  sample: 3
issues:
  description: Every problem the checker found, C(path) and C(message) each.
  returned: when the config is refused
  type: list
  elements: dict
  sample: [{path: "services[1].listener.type", message: "unknown listener 'qic'"}]
"""

import hashlib
import os
import tempfile
import traceback
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_bytes, to_native

try:
    from relay.config import ConfigError, load_config_text
except ImportError:
    RELAY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    RELAY_IMPORT_ERROR = None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as stream:
            return stream.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _write_atomically(module: AnsibleModule, dest: str, data: bytes) -> None:
    directory = os.path.dirname(dest) or "."
    fd, tmp = tempfile.mkstemp(prefix=".relay_config.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        module.atomic_move(tmp, dest, unsafe_writes=module.params["unsafe_writes"])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "content": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
            "backup": {"type": "bool", "default": False},
            "base_dir": {"type": "path"},
            "check_files": {"type": "bool", "default": True},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    if RELAY_IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib("relay (aicdn-tunnel)"), exception=RELAY_IMPORT_ERROR
        )

    content: str = module.params["content"]
    dest: str = module.params["dest"]
    base_dir: str = module.params["base_dir"] or os.path.dirname(os.path.abspath(dest))
    data = to_bytes(content)
    result: dict[str, Any] = {
        "changed": False,
        "dest": dest,
        "checksum": hashlib.sha1(data).hexdigest(),
    }

    if os.path.isdir(dest):
        module.fail_json(msg=f"dest {dest} is a directory", **result)
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        module.fail_json(msg=f"the directory of dest {dest} does not exist", **result)

    try:
        config = load_config_text(content, base_dir, check_files=module.params["check_files"])
    except ConfigError as exc:
        issues = [{"path": issue.path, "message": issue.message} for issue in exc.issues]
        module.fail_json(
            msg=f"relay config refused ({len(issues)} error(s)): {exc}", issues=issues, **result
        )
    result["services"] = [service.name for service in config.services]
    result["chains"] = [chain.name for chain in config.chains]
    result["version"] = config.version

    before = _read(dest)
    if before != content:
        result["changed"] = True
        if module._diff:
            result["diff"] = {
                "before": before or "",
                "after": content,
                "before_header": dest if before is not None else "/dev/null",
                "after_header": dest,
            }
        if not module.check_mode:
            if module.params["backup"] and before is not None:
                result["backup_file"] = module.backup_local(dest)
            try:
                _write_atomically(module, dest, data)
            except OSError as exc:
                module.fail_json(msg=f"cannot write {dest}: {to_native(exc)}", **result)

    if os.path.exists(dest) or not module.check_mode:
        file_args = module.load_file_common_arguments(module.params, path=dest)
        result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
