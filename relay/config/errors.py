"""Configuration errors: every problem found, each with the path of the bad field.

``aicdn-relay check`` prints ``str(ConfigError)``: one ``path: message`` line per problem, e.g.
``services[1].listener.type: unknown listener 'qic'; expected one of tcp, tls, ws, wss, mtcp,
mtls, quic, http3``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: ``path`` locates the field (``services[0].addr``), ``message`` says why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """A configuration was refused. ``issues`` lists every problem found, in discovery order.

    The issues are the exception's only argument so the error pickles (worker processes may
    hand it back to the parent) and compares by content in tests.
    """

    issues: tuple[ConfigIssue, ...]

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    @classmethod
    def single(cls, path: str, message: str) -> ConfigError:
        """Shortcut for an error with exactly one issue."""
        return cls((ConfigIssue(path, message),))
