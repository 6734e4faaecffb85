"""The audit trail: one ``audit_log`` entry per mutating API call, written after the answer is
decided (so refusals -- 401, 403, 409 -- are recorded too): who, what, when, from where."""

from __future__ import annotations

import logging
import time

from flask import Response, g, request

from master_api.api.routing import API_PREFIX, is_mutating, route_for
from master_api.errors import StoreUnavailable
from master_api.extensions import repos
from master_api.models import AuditEntry

__all__ = ["record_audit"]

log = logging.getLogger(__name__)


def record_audit(response: Response) -> Response:
    """``after_request`` hook. A store outage is logged, not raised: the answer (usually a 503
    already) must still reach the client."""
    if not is_mutating(request.method) or not request.path.startswith(API_PREFIX):
        return response
    spec = route_for(request.endpoint)
    if spec is not None and not spec.audited:
        return response
    identity = g.get("aicdn_identity")
    target = g.get("aicdn_target")
    if target is None and request.view_args:
        target = "/".join(str(value) for value in request.view_args.values())
    entry = AuditEntry(
        actor=identity.name if identity is not None else g.get("aicdn_actor"),
        role=identity.role if identity is not None else None,
        method=request.method,
        path=request.path[:512],
        endpoint=request.endpoint,
        status=response.status_code,
        ip=request.remote_addr,
        at=time.time(),
        target=str(target)[:256] if target is not None else None,
    )
    if response.status_code == 503:
        # The store is down (that is what 503 means here): do not wait out another timeout.
        log.error(
            "audit entry not stored (database unavailable): %s %s by %s from %s -> 503",
            entry.method,
            entry.path,
            entry.actor,
            entry.ip,
        )
        return response
    try:
        repos().audit_log.record(entry)
    except StoreUnavailable as exc:
        log.error(
            "audit entry lost (%s): %s %s by %s -> %d",
            exc.message,
            entry.method,
            entry.path,
            entry.actor,
            entry.status,
        )
    return response
