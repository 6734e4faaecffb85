"""Fixtures of the Ansible tests (tests/ansible): see aicdn_ansible_helpers.

Everything here needs the `ansible` extra (`make venv-ansible`); without it the directory is
skipped, so a plain `make test` still runs on a machine that never installed Ansible.
"""

from __future__ import annotations

import pytest

# ansible-core's own module, not the name: with tests/ on sys.path, this very directory would
# import as a namespace package called "ansible".
pytest.importorskip(
    "ansible.module_utils", reason="the ansible extra is not installed (make venv-ansible)"
)

from aicdn_ansible_helpers import stub_master  # noqa: F401 - the fixture

collect_ignore = ["aicdn_ansible_helpers.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "molecule: runs a molecule scenario in podman containers (minutes; needs root)"
    )
