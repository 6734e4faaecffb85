"""The REST API (``/api/v1``): blueprints, the admin-allow filter and the audit trail."""

from __future__ import annotations

from flask import Flask

from master_api.api import (
    alerts,
    auth,
    configs,
    deployments,
    fleet,
    nodes,
    system,
    usage,
    users,
)
from master_api.api.audit import record_audit
from master_api.api.routing import API_PREFIX, ROUTES, check_admin_allow

__all__ = ["API_PREFIX", "ROUTES", "init_app"]

BLUEPRINTS = (
    system.bp,
    auth.bp,
    users.bp,
    nodes.bp,
    configs.bp,
    alerts.bp,
    deployments.bp,
    fleet.bp,
    usage.bp,
)


def init_app(app: Flask) -> None:
    """Register every blueprint under ``/api/v1`` with the admin-allow check and auditing."""
    app.before_request(check_admin_allow)
    app.after_request(record_audit)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp, url_prefix=API_PREFIX)
