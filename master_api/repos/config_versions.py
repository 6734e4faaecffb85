"""``config_versions``: immutable config documents, ``_id`` = ``version_id`` (unique, from the
``config_version`` counter). Only the lifecycle fields (status, published/deprecated stamps)
ever change, with guarded single-document updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from master_api.models import ConfigVersion
from master_api.repos.base import BaseRepo, Document, IndexSpec, all_of, db_call

__all__ = ["ConfigVersionsRepo"]


class ConfigVersionsRepo(BaseRepo):
    collection_name = "config_versions"
    indexes = (
        IndexSpec(("config_type", 1), ("node_type", 1), ("status", 1)),
        IndexSpec(("created_at", -1)),
    )

    @db_call(conflict="a config version with this id already exists")
    def create(self, version: ConfigVersion) -> None:
        self.collection.insert_one(
            {
                "_id": version.version_id,
                "version_id": version.version_id,
                "config_type": version.config_type,
                "node_type": version.node_type,
                "regions": list(version.regions),
                "description": version.description,
                "config_data": version.config_data,
                "checksum": version.checksum,
                "status": version.status,
                "template": version.template,
                "params": dict(version.params) if version.params is not None else None,
                "created_by": version.created_by,
                "created_at": version.created_at,
                "published_at": None,
                "published_by": None,
                "deprecated_at": None,
            }
        )

    @db_call()
    def get(self, version_id: int) -> ConfigVersion | None:
        doc = self.collection.find_one({"_id": version_id})
        return _version(doc) if doc else None

    @db_call()
    def get_many(self, version_ids: Sequence[int]) -> dict[int, ConfigVersion]:
        if not version_ids:
            return {}
        docs = self.collection.find({"_id": {"$in": list(version_ids)}})
        return {int(doc["_id"]): _version(doc) for doc in docs}

    @db_call()
    def find(
        self,
        *,
        config_type: str | None = None,
        node_type: str | None = None,
        region: str | None = None,
        statuses: Sequence[str] = (),
        version_ids: Sequence[int] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[ConfigVersion]:
        """Versions matching every given filter, newest first, without ``config_data``."""
        clauses: list[Document] = []
        if config_type is not None:
            clauses.append({"config_type": config_type})
        if node_type is not None:
            clauses.append({"node_type": node_type})
        if region is not None:
            clauses.append({"regions": region})
        if statuses:
            clauses.append({"status": {"$in": list(statuses)}})
        if version_ids is not None:
            clauses.append({"_id": {"$in": list(version_ids)}})
        cursor = self.collection.find(all_of(*clauses)).sort("_id", -1).skip(offset).limit(limit)
        return [_version(doc) for doc in cursor]

    @db_call()
    def mark_published(self, version_id: int, actor: str, now: float) -> bool:
        """draft -> published (first publication stamps who and when); False if deprecated."""
        self.collection.update_one(
            {"_id": version_id, "status": "draft"},
            {"$set": {"status": "published", "published_at": now, "published_by": actor}},
        )
        doc = self.collection.find_one({"_id": version_id}, {"status": 1})
        return doc is not None and doc.get("status") == "published"

    @db_call()
    def mark_deprecated(self, version_id: int, now: float) -> str | None:
        """Set status deprecated; returns the status it had (None: no such version).

        Compare-and-set on the status read, so a concurrent change is never overwritten
        blindly and the returned status is the one this call replaced.
        """
        for _ in range(10):
            doc = self.collection.find_one({"_id": version_id}, {"status": 1})
            if doc is None:
                return None
            previous = str(doc["status"])
            if previous == "deprecated":
                return previous
            result = self.collection.update_one(
                {"_id": version_id, "status": previous},
                {"$set": {"status": "deprecated", "deprecated_at": now}},
            )
            if result.modified_count == 1:
                return previous
        return None

    @db_call()
    def restore_status(self, version_id: int, status: str) -> None:
        """Undo :meth:`mark_deprecated` (the version turned out to be active)."""
        self.collection.update_one(
            {"_id": version_id, "status": "deprecated"},
            {"$set": {"status": status, "deprecated_at": None}},
        )


def _version(doc: Document) -> ConfigVersion:
    params: Any = doc.get("params")
    return ConfigVersion(
        version_id=int(doc["_id"]),
        config_type=str(doc["config_type"]),
        node_type=str(doc["node_type"]),
        regions=tuple(str(r) for r in doc.get("regions") or ()),
        description=str(doc.get("description") or ""),
        config_data=str(doc.get("config_data") or ""),
        checksum=str(doc.get("checksum") or ""),
        status=str(doc.get("status") or "draft"),
        created_by=str(doc.get("created_by") or ""),
        created_at=float(doc["created_at"]),
        template=doc.get("template"),
        params=dict(params) if isinstance(params, dict) else None,
        published_at=doc.get("published_at"),
        published_by=doc.get("published_by"),
        deprecated_at=doc.get("deprecated_at"),
    )
