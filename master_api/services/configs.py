"""Config versions: drafts, publish, deprecate, rollback, history, diff (seed §5.2.2-5.2.3).

Concurrency model (no multi-document transactions: ``shared/mongo.md`` rule 7):

* ``version_id`` comes from an atomic ``$inc`` counter: unique and increasing.
* What is *active* for a (config_type, node_type, region) is one pointer document
  (``config_active``), changed only by compare-and-set on its ``seq``. One document per key
  means there can never be two active versions for a key, whatever runs concurrently; a
  version's displayed status ``active`` is derived from the pointers, never stored.
* Publishing moves each of the version's region pointers with a CAS loop (last writer wins);
  a rollback does a single CAS against the pointer it read and answers 409 if it lost.
* Deprecating and publishing the same version concurrently: each re-checks after its write
  and undoes it, so a deprecated version is never left active.

A version's ``regions`` may hold ``"*"``: it is then active for nodes of every region that has
no region-specific active version.
"""

from __future__ import annotations

import difflib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from master_api.errors import BadRequest, Conflict, NotFound, issues_extra
from master_api.models import ActivePointer, ConfigVersion, HistoryEntry, RollbackRecord
from master_api.repos import Repos
from master_api.services.snapshots import Snapshot
from master_api.settings import Settings
from relay.config import ConfigError
from relay.config.fleet import check_config_data, expand_template

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_CONFIG_TYPE",
    "ConfigService",
    "DraftInput",
    "PointerChange",
    "PublishResult",
    "RollbackInput",
]

ALL_REGIONS = "*"
#: The config type nodes render (``GET /nodes/{id}/config``).
DEFAULT_CONFIG_TYPE = "relay"
_COUNTER = "config_version"
# Bound on CAS retries of one pointer: each failed try means another publish won, so this is
# only reached under absurd contention; the caller then gets a 409 and may retry.
_MAX_CAS_ATTEMPTS = 100
#: How many versions' YAML ``config_data()`` keeps (the active ones of each type and region).
_DATA_CACHE = 32


@dataclass(frozen=True, slots=True)
class DraftInput:
    """A new version: ``config_data`` (full YAML) or ``template`` + ``params``, not both."""

    node_type: str
    config_type: str = DEFAULT_CONFIG_TYPE
    regions: tuple[str, ...] = (ALL_REGIONS,)
    description: str = ""
    config_data: str | None = None
    template: str | None = None
    params: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RollbackInput:
    """Roll (config_type, node_type, region) back to ``to_version``, or the previous one."""

    node_type: str
    region: str
    config_type: str = DEFAULT_CONFIG_TYPE
    to_version: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PointerChange:
    region: str
    from_version: int | None
    to_version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "from_version": self.from_version,
            "to_version": self.to_version,
        }


@dataclass(frozen=True, slots=True)
class PublishResult:
    version: ConfigVersion
    active_regions: tuple[str, ...]
    changes: tuple[PointerChange, ...]


class ConfigService:
    """Operations on config versions. Stateless apart from its collaborators; thread-safe."""

    def __init__(
        self, repos: Repos, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._repos = repos
        self._settings = settings
        self._clock = clock
        self._pointers = Snapshot(self._repos.config_active.all)
        # version_id -> config_data: a version's content never changes once stored.
        self._data: dict[int, str] = {}
        self._data_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    # Reading

    def get(self, version_id: int) -> ConfigVersion:
        """The version, or 404."""
        version = self._repos.config_versions.get(version_id)
        if version is None:
            raise NotFound(f"config version {version_id} does not exist")
        return version

    def config_data(self, version_id: int) -> str:
        """The YAML of a version (404 if it does not exist). Content is immutable, so it is
        read once per process and kept (a few recent versions)."""
        with self._data_lock:
            data = self._data.get(version_id)
        if data is None:
            data = self.get(version_id).config_data
            with self._data_lock:
                if len(self._data) >= _DATA_CACHE:
                    del self._data[next(iter(self._data))]
                self._data[version_id] = data
        return data

    def active_regions(self, version_id: int) -> tuple[str, ...]:
        """Regions where ``version_id`` is active (sorted; empty: not active anywhere)."""
        return tuple(sorted(p.region for p in self._repos.config_active.naming(version_id)))

    def active_map(self) -> dict[int, tuple[str, ...]]:
        """version_id -> regions where it is active, for every active version."""
        regions: dict[int, list[str]] = {}
        for pointer in self._repos.config_active.all():
            regions.setdefault(pointer.version_id, []).append(pointer.region)
        return {vid: tuple(sorted(r)) for vid, r in regions.items()}

    def pointers(self, max_age: float = 0.0) -> list[ActivePointer]:
        """Every active pointer; with ``max_age`` > 0 possibly a read that recent (shared by
        the AgentService's heartbeats: a publish then reaches agents ``max_age`` later)."""
        return self._pointers.get(max_age)

    def effective_version_id(
        self,
        node_type: str,
        region: str,
        config_type: str = DEFAULT_CONFIG_TYPE,
        pointers: Sequence[ActivePointer] | None = None,
    ) -> int | None:
        """The version active for a node of ``node_type`` in ``region``: the region's own
        pointer, else the ``"*"`` one; None when neither exists."""
        if pointers is None:
            pointers = self._repos.config_active.all()
        by_region = {
            p.region: p.version_id
            for p in pointers
            if p.config_type == config_type and p.node_type == node_type
        }
        return by_region.get(region, by_region.get(ALL_REGIONS))

    def diff(self, a: int, b: int) -> str:
        """Unified diff of the ``config_data`` of versions ``a`` -> ``b`` (404 if either is
        missing). Empty when they are equal."""
        first, second = self.get(a), self.get(b)
        return "".join(
            difflib.unified_diff(
                first.config_data.splitlines(keepends=True),
                second.config_data.splitlines(keepends=True),
                fromfile=f"version {a}",
                tofile=f"version {b}",
            )
        )

    def history(self, **filters: Any) -> list[HistoryEntry]:
        return self._repos.config_history.find(**filters)

    # ------------------------------------------------------------------------------------------
    # Changing

    def validate(self, draft: DraftInput) -> str:
        """The YAML ``draft`` would store (its ``config_data``, or its template expanded), after
        the relay's checker accepted it; nothing is stored.

        Raises ``BadRequest`` (400) like :meth:`create_draft`: the checker's refusal carries
        ``issues``, each with the ``path`` of the field it is about.
        """
        if (draft.config_data is None) == (draft.template is None):
            raise BadRequest("give either config_data or template (with params), not both")
        if draft.template is None and draft.params is not None:
            raise BadRequest("params is only used with template")
        try:
            if draft.template is not None:
                config_data = expand_template(draft.template, draft.params or {})
            else:
                assert draft.config_data is not None
                config_data = draft.config_data
            check_config_data(config_data, draft.node_type, self._settings.node_base_dir)
        except ConfigError as exc:
            raise BadRequest(
                f"config refused by the relay checker ({len(exc.issues)} issue(s))",
                error="invalid_config",
                extra=issues_extra(exc.issues),
            ) from None
        return config_data

    def create_draft(self, draft: DraftInput, actor: str) -> ConfigVersion:
        """Validate and store a new draft version.

        Raises ``BadRequest`` (400) when both or neither of ``config_data`` and ``template``
        are given, and when the template parameters or the YAML are refused by the relay's
        checker -- the answer then carries the checker's ``issues``.
        """
        config_data = self.validate(draft)
        now = self._clock()
        version = ConfigVersion(
            version_id=self._repos.counters.next(_COUNTER),
            config_type=draft.config_type,
            node_type=draft.node_type,
            regions=draft.regions,
            description=draft.description,
            config_data=config_data,
            checksum=hashlib.sha256(config_data.encode("utf-8")).hexdigest(),
            status="draft",
            created_by=actor,
            created_at=now,
            template=draft.template,
            params=dict(draft.params) if draft.params is not None else None,
        )
        self._repos.config_versions.create(version)
        self._repos.config_history.record(
            "create",
            version.config_type,
            version.node_type,
            None,
            None,
            version.version_id,
            actor,
            now,
        )
        return version

    def publish(self, version_id: int, actor: str, action: str = "publish") -> PublishResult:
        """Make ``version_id`` the active version of each of its regions; the history entries
        carry ``action`` (``failover`` when the leader's failover publishes).

        Idempotent for regions where it is already active. 404 for an unknown version, 409 for
        a deprecated one (or one deprecated while this call ran).
        """
        version = self.get(version_id)
        if not self._repos.config_versions.mark_published(version_id, actor, self._clock()):
            raise Conflict(f"config version {version_id} is deprecated and cannot be published")
        changes: list[PointerChange] = []
        for region in version.regions:
            change = self._point(version, region, actor)
            if change is not None:
                changes.append(change)
        current = self.get(version_id)
        if current.status == "deprecated":
            # Deprecated while we were publishing: undo our pointer moves (only those still ours).
            self._undo(version, changes, actor)
            raise Conflict(f"config version {version_id} was deprecated during publication")
        now = self._clock()
        for change in changes:
            self._repos.config_history.record(
                action,
                version.config_type,
                version.node_type,
                change.region,
                change.from_version,
                change.to_version,
                actor,
                now,
            )
        return PublishResult(current, self.active_regions(version_id), tuple(changes))

    def _point(self, version: ConfigVersion, region: str, actor: str) -> PointerChange | None:
        """CAS-loop the region's pointer to ``version``; None if it already pointed there."""
        pointers = self._repos.config_active
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = pointers.get(version.config_type, version.node_type, region)
            if current is not None and current.version_id == version.version_id:
                return None
            if pointers.compare_and_set(
                version.config_type,
                version.node_type,
                region,
                current,
                version.version_id,
                actor,
                self._clock(),
            ):
                return PointerChange(
                    region, current.version_id if current else None, version.version_id
                )
        raise Conflict(
            f"too many concurrent changes to the active {version.node_type} config of region "
            f"{region!r}; retry"
        )

    def _undo(self, version: ConfigVersion, changes: Sequence[PointerChange], actor: str) -> None:
        pointers = self._repos.config_active
        for change in changes:
            current = pointers.get(version.config_type, version.node_type, change.region)
            if current is None or current.version_id != version.version_id:
                continue  # someone else moved it since: leave their choice alone
            if change.from_version is not None:
                pointers.compare_and_set(
                    version.config_type,
                    version.node_type,
                    change.region,
                    current,
                    change.from_version,
                    actor,
                    self._clock(),
                )

    def deprecate(self, version_id: int, actor: str) -> ConfigVersion:
        """Mark a version deprecated: it can no longer be published or rolled back to.

        409 while it is active anywhere (publish or roll back another version first).
        """
        previous = self._repos.config_versions.mark_deprecated(version_id, self._clock())
        if previous is None:
            raise NotFound(f"config version {version_id} does not exist")
        regions = self.active_regions(version_id)
        if regions:
            if previous != "deprecated":
                self._repos.config_versions.restore_status(version_id, previous)
            raise Conflict(
                f"config version {version_id} is active in {', '.join(regions)}; publish or "
                "roll back to another version first"
            )
        version = self.get(version_id)
        if previous != "deprecated":
            self._repos.config_history.record(
                "deprecate",
                version.config_type,
                version.node_type,
                None,
                version_id,
                None,
                actor,
                self._clock(),
            )
        return version

    def rollback(self, request: RollbackInput, actor: str) -> RollbackRecord:
        """Point (config_type, node_type, region) back at ``to_version`` or, when None, at the
        version that was active before the current one. Writes ``config_rollbacks`` and
        ``config_history``.

        409: nothing active there, no previous version, the target is deprecated or already
        active, or the pointer changed while this call ran. 404: unknown target. 400: the
        target is for another config type, node type or region.
        """
        ct, nt, region = request.config_type, request.node_type, request.region
        current = self._repos.config_active.get(ct, nt, region)
        if current is None:
            raise Conflict(f"no {ct} config is active for {nt} nodes in region {region!r}")
        target_id = request.to_version
        if target_id is None:
            entry = self._repos.config_history.last_activation(ct, nt, region, current.version_id)
            if entry is None or entry.from_version is None:
                raise Conflict(
                    f"version {current.version_id} has no previous version in region {region!r}"
                )
            target_id = entry.from_version
        target = self.get(target_id)
        if target.config_type != ct or target.node_type != nt:
            raise BadRequest(
                f"version {target_id} is a {target.config_type} config for {target.node_type} "
                f"nodes, not {ct} for {nt}"
            )
        if region not in target.regions and ALL_REGIONS not in target.regions:
            raise BadRequest(f"version {target_id} is not for region {region!r}")
        if target.status == "deprecated":
            raise Conflict(f"version {target_id} is deprecated")
        if target_id == current.version_id:
            raise Conflict(f"version {target_id} is already active in region {region!r}")
        now = self._clock()
        if not self._repos.config_active.compare_and_set(
            ct, nt, region, current, target_id, actor, now
        ):
            raise Conflict("the active version changed during the rollback; check and retry")
        self._repos.config_versions.mark_published(target_id, actor, now)
        record = self._repos.config_rollbacks.record(
            ct, nt, region, current.version_id, target_id, request.reason, actor, now
        )
        self._repos.config_history.record(
            "rollback", ct, nt, region, current.version_id, target_id, actor, now
        )
        return record
