"""Fuzzing the relay config loader and checker with typed mutations of the full example.

tests/test_config_loader.py already throws 3000 random garbage mutations at the loader and
checks that only ConfigError comes out. Here hypothesis changes one field of the full example
at a time to a value of a plausible but often wrong type, and checks what a user relies on:
the error names the field that was changed, and a config that is accepted renders, reloads
to the same config, and never shows a secret in its redacted form.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from relay.config import ConfigError, config_from_mapping, config_to_mapping, redacted_mapping
from tests.fuzz.budget import fuzz_settings
from tests.test_config_loader import CERT_FILES, FULL_YAML

BASE: dict[str, Any] = yaml.safe_load(FULL_YAML)

#: Keys whose value is a name other fields refer to: changing one moves the error to the
#: referring field, so the "error names the changed field" rule does not apply to them.
_REFERENCES = {"name", "chain", "admission", "shield", "cc", "climiter", "rlimiter", "bypass"}


def _leaves(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*prefix, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*prefix, i))] or [prefix]
    return [prefix]


LEAVES = _leaves(BASE)


def _text(path: tuple[object, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _related(issue: str, changed: str) -> bool:
    """The issue is about the changed field, one of its parts, or what holds it."""
    a, b = issue.lower(), changed.lower()
    return a.startswith(b) or b.startswith(a)


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0", "-1s", "5s", "10m", "1e309", "tcp", "qic", ":0", "a:b:c", "::1"]),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-certs")
    for name in CERT_FILES:
        (root / name).touch()
    return root


@fuzz_settings(400)
@given(st.sampled_from(LEAVES), values)
def test_a_changed_field_is_named_or_the_config_round_trips(
    certs: Path, path: tuple[object, ...], value: object
) -> None:
    data = copy.deepcopy(BASE)
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        config = config_from_mapping(data, str(certs))
    except ConfigError as exc:
        assert exc.issues and all(issue.message for issue in exc.issues)
        if not _REFERENCES & {p for p in path if isinstance(p, str)}:
            changed = _text(path)
            named = [i.path for i in exc.issues if i.path and _related(i.path, changed)]
            assert named, f"changing {changed} to {value!r} gave {exc}"
        return
    rendered = config_to_mapping(config)
    assert config_from_mapping(rendered, str(certs)) == config
    text = json.dumps(redacted_mapping(config))
    assert "relay-pass" not in text
