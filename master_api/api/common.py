"""Pieces shared by the blueprints: name patterns, paging, path-parameter bounds."""

from __future__ import annotations

from master_api.api.schema import INT64_MAX, Field

__all__ = [
    "CONFIG_TYPE_PATTERN",
    "INT_ID",
    "NAME_PATTERN",
    "REGION_PATTERN",
    "TAG_PATTERN",
    "limit_field",
    "offset_field",
]

#: Node and user names: also file names on the hosts (the renderer's rule).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
REGION_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
CONFIG_TYPE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
#: Werkzeug converter for integer ids that the database can hold (larger ones: 404).
INT_ID = f"int(max={INT64_MAX})"


def limit_field(default: int = 50) -> Field:
    return Field("limit", "integer", f"page size (default {default})", minimum=1, maximum=1000)


def offset_field() -> Field:
    return Field("offset", "integer", "items to skip", minimum=0, maximum=1_000_000)
