"""The AgentService protocol (``agent.proto``) and the modules grpcio-tools generates from it.

The generated modules -- ``agent_pb2`` (messages), its ``agent_pb2.pyi`` stub (types for mypy)
and ``agent_pb2_grpc`` (stub and servicer registration) -- are build products, not sources:
they are not committed. Importing this package makes sure they exist and match ``agent.proto``
(a stamp records the proto's SHA-256 and the generator's version) and generates them when they
do not, so a clean clone, an installed wheel and CI all work without a separate step.
``python -m relay.agent.proto`` generates them ahead of time (``make proto``, run before the
tests and the type check).

Where they go: next to ``agent.proto`` when that directory is writable (a checkout, a venv),
else into a per-user cache directory that is added to this package's ``__path__``, so
``from relay.agent.proto import agent_pb2`` works the same on a read-only install.

Generation is atomic per file (written aside, then renamed), so processes that import the
package at the same moment cannot see a half-written module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["GENERATED", "PROTO", "ProtoGenerationError", "ensure_generated"]

log = logging.getLogger(__name__)

PROTO = Path(__file__).with_name("agent.proto")
#: The files grpcio-tools writes (relative to this package's directory).
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")
_STAMP = "_generated.stamp"
# The proto's path relative to the include root: generated imports then read
# ``from relay.agent.proto import agent_pb2``, which works inside the package.
_PROTO_NAME = "relay/agent/proto/agent.proto"


class ProtoGenerationError(ImportError):
    """The generated modules are missing or stale and cannot be generated here."""


def _generator_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - stdlib since 3.8
        return None
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return None


def _stamp_text(generator: str | None) -> str:
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()
    return f"{digest} grpcio-tools=={generator or 'unknown'}\n"


def _is_current(directory: Path, generator: str | None) -> bool:
    """True when every generated file exists in ``directory`` and the stamp matches."""
    stamp = directory / _STAMP
    if not all((directory / name).is_file() for name in GENERATED) or not stamp.is_file():
        return False
    if generator is None:  # cannot regenerate: whatever was generated for this proto will do
        return stamp.read_text(encoding="utf-8").split(" ")[0] == _stamp_text(None).split(" ")[0]
    return stamp.read_text(encoding="utf-8") == _stamp_text(generator)


def _protoc(out_root: Path) -> None:
    """Run grpcio-tools' protoc on ``agent.proto`` into ``out_root/relay/agent/proto``."""
    from grpc_tools import protoc  # the generator: a dependency of the relay package

    include_root = PROTO.parents[3]  # the directory holding the ``relay`` package
    well_known = Path(protoc.__file__).with_name("_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{include_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(include_root / _PROTO_NAME),
    ]
    status = protoc.main(args)
    if status != 0:
        raise ProtoGenerationError(f"grpc_tools.protoc failed on {PROTO} (status {status})")


def _generate_into(directory: Path, generator: str) -> None:
    """Generate into a scratch tree, then move each file into ``directory`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".gen-") as scratch:
        _protoc(Path(scratch))
        produced = Path(scratch) / "relay" / "agent" / "proto"
        for name in GENERATED:
            os.replace(produced / name, directory / name)
        stamp = Path(scratch) / _STAMP
        stamp.write_text(_stamp_text(generator), encoding="utf-8")
        os.replace(stamp, directory / _STAMP)
    log.info("generated the AgentService modules from %s into %s", PROTO.name, directory)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    return Path(base) / "aicdn" / "proto" / digest


def ensure_generated() -> Path:
    """Make sure the generated modules exist and match ``agent.proto``; returns their directory.

    Call before importing ``agent_pb2``/``agent_pb2_grpc`` (this package's import does). Uses
    the package directory when current or writable, else the cache directory (which it adds to
    ``__path__``). Raises :class:`ProtoGenerationError` when nothing current exists and
    grpcio-tools is not installed or fails.
    """
    here = PROTO.parent
    generator = _generator_version()
    if _is_current(here, generator):
        return here
    if generator is None:
        raise ProtoGenerationError(
            f"the AgentService modules are missing next to {PROTO} and grpcio-tools is not "
            "installed to generate them (pip install grpcio-tools, or run `make proto`)"
        )
    try:
        _generate_into(here, generator)
        return here
    except OSError:  # not writable (permissions, a read-only file system): use the cache
        cache = _cache_dir()
        if not _is_current(cache, generator):
            _generate_into(cache, generator)
        if str(cache) not in __path__:
            __path__.append(str(cache))
        return cache


ensure_generated()
