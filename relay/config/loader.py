"""Load and validate a relay config (DESIGN §3.2): gost v3 style YAML -> frozen ``RelayConfig``.

The loader is the only place that maps gost's camelCase keys onto the dataclasses of
``relay.config.model`` and the only place that validates. Contract of every public loader:

* it returns a fully validated ``RelayConfig``, or
* it raises ``ConfigError`` listing *every* problem found (not just the first), each issue
  carrying the path of the bad field (``services[1].listener.type``) and a message that says
  what was expected;
* nothing else ever escapes, whatever the input (garbage types, odd YAML, deep nesting).

This module is the public entry point; the work is done by package-internal modules:

* ``yaml_source``: YAML text -> plain data (duplicate keys refused, line/column errors);
* ``top_level``: the whole document -> ``RelayConfig``, section by section:
  ``services``, ``chains``, ``policies`` and ``shared_sections`` (tls, auth, selector, probe);
* ``checks``: checks across items and sections (duplicate names, references, ports, TLS);
* ``readers``: the issue collector ``_Ctx`` and the typed readers that report into it;
* ``values``: primitive parsers (durations, addresses, limit lines);
* ``schema``: the keys each section allows.

The validators never raise: they report into a ``_Ctx`` and return a placeholder (the default)
so parsing can carry on and find further problems. A config with any issue is never returned,
so placeholders never reach a running relay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from relay.config.errors import ConfigError
from relay.config.model import RelayConfig
from relay.config.top_level import _build
from relay.config.values import _show as _show
from relay.config.values import parse_address, parse_duration
from relay.config.values import parse_limit_line as parse_limit_line
from relay.config.yaml_source import _Loader as _Loader
from relay.config.yaml_source import _read_yaml
from relay.config.yaml_source import _yaml_issue as _yaml_issue

__all__ = [
    "config_from_mapping",
    "load_config_file",
    "load_config_text",
    "parse_address",
    "parse_duration",
]
# Re-exported with ``X as X`` (explicit for mypy), as importable from here as before the split:
# ``parse_limit_line``, and the package-internal ``_show`` (used by ``shorthand``), ``_Loader``
# and ``_yaml_issue`` (used by ``fleet``).


def load_config_file(path: str) -> RelayConfig:
    """Read, parse and validate the YAML file at ``path``.

    Relative certificate paths resolve against the file's directory (``RelayConfig.base_dir``).
    Unreadable files and malformed YAML are reported as a ``ConfigError`` whose single issue's
    path is ``path`` itself.
    """
    try:
        with open(path, encoding="utf-8-sig") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError.single(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError.single(path, f"not UTF-8 text: {exc.reason}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError.single(path or "<file>", f"cannot read: {exc}") from None
    return _load_text(text, os.path.dirname(os.path.abspath(path)), path)


def load_config_text(text: str, base_dir: str = ".", *, check_files: bool = True) -> RelayConfig:
    """Parse and validate YAML text; relative file paths resolve against ``base_dir``.

    YAML syntax errors give one issue with path ``<yaml>`` and a 1-based line and column.
    ``check_files=False`` skips checking that certificate files exist (see
    ``config_from_mapping``).
    """
    return _load_text(text, base_dir, "<yaml>", check_files=check_files)


def config_from_mapping(
    data: Mapping[str, object], base_dir: str = ".", *, check_files: bool = True
) -> RelayConfig:
    """Validate an already parsed config (gost-style keys) and build the ``RelayConfig``.

    ``data`` is checked, not trusted: anything that is not a mapping of the documented shape
    is reported as a ``ConfigError``. ``check_files=False`` skips checking that certificate
    files exist under ``base_dir``: for configs rendered for another host (the master's
    renderer), where the files exist on the target, not here. Everything else is checked.
    """
    return _build(data, base_dir, "<config>", check_files=check_files)


def _load_text(text: str, base_dir: str, source: str, *, check_files: bool = True) -> RelayConfig:
    return _build(_read_yaml(text, source), base_dir, source, check_files=check_files)
