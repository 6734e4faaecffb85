"""``/usage``: per-API-key usage reported by the edges, and per-key quotas (issue 12).

``GET /usage`` sums the stored records over the filters (``key``, ``node_id``, ``from``/``to``
as ISO 8601 or epoch seconds, hours starting in [from, to)) per distinct ``group`` fields
(comma-separated, some of ``key,node,hour``; default all three). ``format=csv`` or
``Accept: text/csv`` answers CSV with the same columns as the JSON items.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from flask import Blueprint, Response, request

from master_api.api import shapes
from master_api.api.routing import Reply, api_route
from master_api.api.schema import Field, Schema
from master_api.errors import BadRequest, NotFound
from master_api.extensions import services
from master_api.repos.usage import UsageFilter
from master_api.services.usage import GROUPS, PERIODS, Period, Quota

__all__ = ["bp"]

bp = Blueprint("usage", __name__)

_KEY_PATTERN = r"^([0-9a-f]{32}|-|~overflow)$"
_COLUMNS = (
    "key", "node_id", "hour", "requests", "errors", "blocked", "bytes_in", "bytes_out",
    "streams", "ttfb_count", "prompt_tokens", "completion_tokens", "total_tokens",
    "ttfb_ms_avg", "duration_seconds_sum", "duration_ms_avg",
)  # fmt: skip
_INT_OR_NULL = shapes.nullable(shapes.INT)
USAGE_ROW: shapes.Schema = shapes.obj(
    {
        "key": shapes.nullable(shapes.STR),
        "node_id": shapes.nullable(shapes.STR),
        "hour": _INT_OR_NULL,
        **{name: shapes.INT for name in _COLUMNS[3:13]},
        "ttfb_ms_avg": shapes.nullable(shapes.NUM),
        "duration_seconds_sum": shapes.NUM,
        "duration_ms_avg": shapes.nullable(shapes.NUM),
    }
)
USAGE_LIST: shapes.Schema = shapes.obj(
    {"items": {"type": "array", "items": USAGE_ROW}, "count": shapes.INT, "totals": USAGE_ROW}
)
QUOTA: shapes.Schema = shapes.obj(
    {
        "key": shapes.STR,
        "period": {"type": "string", "enum": list(PERIODS)},
        "requests": _INT_OR_NULL,
        "tokens": _INT_OR_NULL,
        "bytes": _INT_OR_NULL,
        "updated_at": shapes.NUM,
    }
)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    where: UsageFilter
    group: tuple[str, ...]
    csv: bool


def _epoch(text: str, name: str) -> int:
    """Epoch seconds from epoch seconds or an ISO 8601 time (naive: UTC)."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(
                f"query.{name}: expected ISO 8601 or epoch seconds, got {text[:40]!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    if not math.isfinite(value) or not 0 <= value < 2**40:
        raise BadRequest(f"query.{name}: out of range")
    return int(value)


def _usage_query(**values: Any) -> UsageQuery:
    group_text = values.get("group", ",".join(GROUPS))
    group = tuple(part.strip() for part in group_text.split(",") if part.strip())
    unknown = [part for part in group if part not in GROUPS]
    if unknown:
        raise BadRequest(f"query.group: unknown {unknown}; expected some of {', '.join(GROUPS)}")
    start = _epoch(values["from"], "from") if "from" in values else None
    end = _epoch(values["to"], "to") if "to" in values else None
    where = UsageFilter(key=values.get("key"), node_id=values.get("node_id"), start=start, end=end)
    return UsageQuery(where, group, values.get("format") == "csv")


USAGE_QUERY = Schema(
    "UsageQuery",
    [
        Field("key", "string", "a key hash (sha256 of the token, 32 hex)", pattern=_KEY_PATTERN),
        Field("node_id", "string", max_length=64),
        Field("from", "string", "hours starting at or after (ISO 8601 or epoch s)", max_length=40),
        Field("to", "string", "hours starting before (ISO 8601 or epoch s)", max_length=40),
        Field("group", "string", "comma-separated: key,node,hour (default all)", max_length=20),
        Field("format", "string", "json (default) or csv", enum=("json", "csv")),
    ],
    _usage_query,
)


@api_route(
    bp,
    "/usage",
    "GET",
    summary="Per-key usage (requests, bytes, tokens, TTFB) summed per key, node and/or hour",
    access="viewer",
    query=USAGE_QUERY,
    replies=[
        Reply(
            200,
            "Sums per group, oldest hour first; CSV with format=csv or Accept: text/csv",
            USAGE_LIST,
            alternatives={"text/csv": {"type": "string"}},
        )
    ],
)
def list_usage(query: UsageQuery) -> Any:
    usage = services().usage
    rows = [row.to_json() for row in usage.query(query.where, query.group)]
    wants_csv = query.csv or (
        request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"
        and "application/json" not in request.accept_mimetypes.values()
    )
    if wants_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: "" if row[name] is None else row[name] for name in _COLUMNS})
        response = Response(out.getvalue(), mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response
    totals = [row.to_json() for row in usage.query(query.where, ())]
    empty = dict.fromkeys(_COLUMNS, 0) | {
        "key": None, "node_id": None, "hour": None,
        "ttfb_ms_avg": None, "duration_seconds_sum": 0.0, "duration_ms_avg": None,
    }  # fmt: skip
    return {"items": rows, "count": len(rows), "totals": totals[0] if totals else empty}


@dataclass(frozen=True, slots=True)
class QuotaInput:
    period: str
    requests: int | None = None
    tokens: int | None = None
    bytes: int | None = None


QUOTA_INPUT = Schema(
    "QuotaInput",
    [
        Field("period", "string", "UTC period the limits apply to", required=True, enum=PERIODS),
        Field("requests", "integer", "requests per period", nullable=True, minimum=0),
        Field("tokens", "integer", "total LLM tokens per period", nullable=True, minimum=0),
        Field("bytes", "integer", "body bytes in + out per period", nullable=True, minimum=0),
    ],
    QuotaInput,
)
_KEY_ERROR = Reply(400, "Not a key hash", shapes.ERROR)


def _checked_key(key: str) -> str:
    if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
        raise BadRequest("key: expected a key hash (32 lowercase hex digits)")
    return key


@api_route(
    bp,
    "/usage/quotas",
    "GET",
    summary="Per-key quotas",
    access="viewer",
    replies=[Reply(200, "Quotas by key", shapes.list_of(QUOTA))],
)
def list_quotas() -> Any:
    quotas = [q.to_json() for q in services().usage.quotas()]
    return {"items": quotas, "count": len(quotas)}


@api_route(
    bp,
    "/usage/quotas/<key>",
    "PUT",
    summary="Set a key's quota; the edges refuse the key (429) once it is used up",
    access="operator",
    body=QUOTA_INPUT,
    replies=[Reply(200, "The quota", QUOTA), _KEY_ERROR],
)
def put_quota(key: str, body: QuotaInput) -> Any:
    period = cast(Period, body.period)
    quota = Quota(_checked_key(key), period, body.requests, body.tokens, body.bytes)
    return services().usage.set_quota(quota).to_json()


@api_route(
    bp,
    "/usage/quotas/<key>",
    "DELETE",
    summary="Remove a key's quota",
    access="operator",
    replies=[Reply(204, "Deleted", None, media_type=""), Reply(404, "No quota", shapes.ERROR)],
)
def delete_quota(key: str) -> Any:
    if not services().usage.delete_quota(key):
        raise NotFound(f"no quota for key {key[:64]!r}")
    return "", 204
