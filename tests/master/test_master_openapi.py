"""The OpenAPI document matches the routes, and schemathesis, generating requests from it
against the real app and database, finds no 500, no undocumented status and no answer that
breaks its documented schema or media type."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from master_api.api.openapi import build_document, openapi_path
from master_api.api.routing import API_PREFIX, ROUTES
from tests.master.conftest import Caller, draft, register


def test_document_lists_exactly_the_routes_of_the_app(app: Flask) -> None:
    served = {
        (openapi_path(rule.rule).removeprefix(API_PREFIX), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    document = app.test_client().get("/api/v1/openapi.json").json
    documented = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    assert served == documented
    assert len(documented) == len(ROUTES)
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert op["x-access"] in ("viewer", "operator", "admin", "public", "refresh", "node")
            assert "503" in op["responses"], (method, path)
            if op["x-access"] in ("viewer", "operator", "admin"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_design_routes_are_all_there(app: Flask) -> None:
    """DESIGN §4.3 (deployments belong to the deployments issue)."""
    document = app.test_client().get("/api/v1/openapi.json").json
    paths = document["paths"]
    expected = {
        "/auth/login": {"post"},
        "/auth/refresh": {"post"},
        "/nodes": {"get", "post"},
        "/nodes/{node_id}": {"get", "patch", "delete"},
        "/nodes/{node_id}/config": {"get"},
        "/configs": {"get", "post"},
        "/configs/{version_id}": {"get"},
        "/configs/{version_id}/publish": {"post"},
        "/configs/{version_id}/deprecate": {"post"},
        "/configs/rollback": {"post"},
        "/configs/history": {"get"},
        "/configs/{a}/diff/{b}": {"get"},
        "/alerts": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path


@pytest.fixture
def api_app(app: Flask, admin: Caller) -> Any:
    """The app as a WSGI callable for schemathesis, with some data in place so that lookups
    can also succeed."""
    register(admin, "core-1", "core", "cn")
    register(admin, "edge-1", "edge", "hk")
    version = draft(admin, "edge")["version_id"]
    admin.post(f"/api/v1/configs/{version}/publish")
    draft(admin, "core")

    def from_loopback(environ: dict[str, Any], start_response: Any) -> Any:
        # werkzeug's bare test client sends no REMOTE_ADDR; the admin-allow filter refuses
        # an unknown client, so present the loopback address a local caller would have.
        environ.setdefault("REMOTE_ADDR", "127.0.0.1")
        return app.wsgi_app(environ, start_response)

    return from_loopback


# The document does not depend on the database: load it once, from the code.
schema = schemathesis.openapi.from_dict(build_document())


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_schemathesis_finds_no_server_error_or_undocumented_answer(
    case: schemathesis.Case, api_app: Any, admin: Caller
) -> None:
    case.call_and_validate(
        app=api_app,
        headers={"Authorization": f"Bearer {admin.token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
