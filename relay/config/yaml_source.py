"""YAML text -> plain data, the way every config file is read: safe loading that refuses
duplicate keys, and syntax errors reported as one issue with a 1-based line and column.
"""

from __future__ import annotations

from typing import Any

import yaml

from relay.config.errors import ConfigError, ConfigIssue
from relay.config.values import _kind


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last; gost refuses)."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Checked on the composed graph, before construction: merge keys (``<<``) rewrite
        # mapping nodes in place while constructing, which would look like duplicates.
        _reject_duplicate_keys(node)
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _reject_duplicate_keys(root: yaml.Node) -> None:
    # Iterative with a visited set: aliases make the node graph a DAG (or even cyclic).
    stack: list[yaml.Node] = [root]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            _check_mapping_node(node)
            for key_node, value_node in node.value:
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _check_mapping_node(node: yaml.MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key_node.value!r}",
                key_node.start_mark,
            )
        seen.add(ident)


def _read_yaml(text: str, source: str) -> object:
    """The document in ``text`` (an empty document is ``{}``); a ``ConfigError`` whose single
    issue's path is ``source`` when the text is not YAML."""
    if not isinstance(text, str):
        raise ConfigError.single(source, f"expected YAML text, got {_kind(text)}")
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError((_yaml_issue(source, text, exc),)) from None
    except RecursionError:
        raise ConfigError.single(source, "YAML nested too deeply") from None
    if data is None:  # empty document
        data = {}
    return data


def _yaml_issue(source: str, text: str, exc: yaml.YAMLError) -> ConfigIssue:
    """One issue naming the 1-based line and column PyYAML stopped at."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        return ConfigIssue(
            source, f"line {mark.line + 1}, column {mark.column + 1}: {problem}{context}"
        )
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised before scanning (control characters): it knows only an offset into the text.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return ConfigIssue(
            source, f"line {line}, column {column}: character U+{ord(char):04X} is not allowed"
        )
    return ConfigIssue(source, f"invalid YAML: {exc}")
