"""The admin API's usage endpoints (issue 12), through which the agent drains usage:

=============================  ===============================================================
``GET /usage``                 the pending batch, sealing one when there is none:
                               ``{"batch": {"batch_id", "start", "end", "entries": [...]}}``,
                               ``{"batch": null}`` when nothing was counted
``POST /usage/ack?batch=ID``   drop the pending batch ``ID`` (the master has it);
                               ``{"acked": true|false}`` (false: not the pending one, e.g.
                               acknowledged already, or the relay restarted)
``PUT /usage/blocked``         body ``{"keys": ["<key hash>", ...]}``: the keys over quota,
                               answered 429 from now on (replaces the previous set)
``GET /usage/blocked``         the current set
=============================  ===============================================================

They sit behind the admin API's bearer token like ``/config`` and ``/reload``. Under
``workers: N`` the supervisor serves them from its workers (``Supervisor.usage_request``).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from relay.usage import UsageMeter

__all__ = ["usage_route"]


def usage_route(
    meter: UsageMeter | None, method: str, path: str, query: str, body: bytes
) -> tuple[int, dict[str, object]]:
    """Answer one ``/usage`` request: (status, JSON payload)."""
    if meter is None:
        return 501, {"error": "not_implemented", "message": "this process counts no usage"}
    if path == "/usage" and method == "GET":
        batch = meter.take_batch()
        return 200, {"batch": batch.to_json() if batch is not None else None}
    if path == "/usage/ack" and method == "POST":
        ids = parse_qs(query).get("batch", [])
        if len(ids) != 1 or not ids[0]:
            return 400, {"error": "bad_request", "message": "give one ?batch=<batch id>"}
        return 200, {"acked": meter.ack(ids[0])}
    if path == "/usage/blocked" and method == "GET":
        return 200, {"keys": sorted(meter.blocked)}
    if path == "/usage/blocked" and method == "PUT":
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return 400, {"error": "bad_request", "message": "body: not JSON"}
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            return 400, {"error": "bad_request", "message": 'body: expected {"keys": [...]}'}
        try:
            count = meter.set_blocked(keys)
        except ValueError as exc:
            return 400, {"error": "bad_request", "message": f"keys: {exc}"}
        return 200, {"blocked": count}
    if path in ("/usage", "/usage/ack", "/usage/blocked"):
        return 405, {"error": "method_not_allowed", "message": method}
    return 404, {"error": "not_found", "message": path}
