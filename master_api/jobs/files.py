"""The private data dir's files: owner-only permissions, and YAML whose strings are ``!unsafe``.

ansible-runner reads ``env/settings`` itself (plain YAML), while ``env/extravars`` and the
inventory are read by Ansible, whose YAML loader turns a ``!unsafe`` scalar into a value that
is never templated. Every string that reaches Ansible from the database or the API is written
with that tag, so a node name, a metadata value or a release string that contains ``{{ ... }}``
or ``{% ... %}`` stays literal text instead of being evaluated on the controller (Jinja
injection). Numbers, booleans and null carry no template and are written as they are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "UnsafeText",
    "dump_unsafe_yaml",
    "dump_yaml",
    "load_marking_unsafe",
    "make_private_dir",
    "write_private",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeText(str):
    """A string written with Ansible's ``!unsafe`` tag (and read back as one in tests)."""

    __slots__ = ()


class _UnsafeDumper(yaml.SafeDumper):
    """SafeDumper that tags every string ``!unsafe`` (mapping keys stay plain: they are
    variable and host names, which Ansible never templates)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no anchors: every value is written out where it is used


def _represent_unsafe(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", str(value))


def _represent_mapping(dumper: yaml.SafeDumper, value: Mapping[Any, Any]) -> yaml.MappingNode:
    pairs = [
        (dumper.represent_scalar("tag:yaml.org,2002:str", str(key)), dumper.represent_data(item))
        for key, item in value.items()
    ]
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs)


def _represent_sequence(dumper: yaml.SafeDumper, value: tuple[Any, ...]) -> yaml.SequenceNode:
    return dumper.represent_list(list(value))


_UnsafeDumper.add_representer(str, _represent_unsafe)
_UnsafeDumper.add_representer(UnsafeText, _represent_unsafe)
_UnsafeDumper.add_representer(dict, _represent_mapping)
_UnsafeDumper.add_representer(tuple, _represent_sequence)


def dump_unsafe_yaml(data: Mapping[str, Any]) -> str:
    """``data`` as YAML with every string value tagged ``!unsafe``."""
    return yaml.dump(dict(data), Dumper=_UnsafeDumper, default_flow_style=False, sort_keys=False)


def dump_yaml(data: Mapping[str, Any]) -> str:
    """``data`` as plain YAML (for files ansible-runner itself reads, like ``env/settings``)."""
    return yaml.safe_dump(dict(data), default_flow_style=False, sort_keys=False)


class _MarkingLoader(yaml.SafeLoader):
    """Reads ``!unsafe`` scalars back as :class:`UnsafeText` (for tests and checks)."""


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> UnsafeText:
    assert isinstance(node, yaml.ScalarNode)
    return UnsafeText(loader.construct_scalar(node))


_MarkingLoader.add_constructor("!unsafe", _construct_unsafe)


def load_marking_unsafe(text: str) -> Any:
    """Parse YAML written by :func:`dump_unsafe_yaml`; ``!unsafe`` values come back as
    :class:`UnsafeText`, every other string as plain ``str``."""
    return yaml.load(text, Loader=_MarkingLoader)  # a SafeLoader subclass: no arbitrary objects


def make_private_dir(parent: str | None, prefix: str) -> Path:
    """A new directory only the master's user can enter (0700), under ``parent`` (None: the
    system temp dir). The caller removes it (``shutil.rmtree``) when the run is over."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, DIR_MODE)
    return path


def write_private(path: Path, text: str) -> Path:
    """Create ``path`` (and its parent directories, 0700) holding ``text``, mode 0600 from the
    start: the content is never readable by others, not even for a moment. Refuses to follow a
    symlink or to overwrite an existing file (``FileExistsError``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)
    return path
