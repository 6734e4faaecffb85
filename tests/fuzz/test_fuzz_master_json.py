"""Fuzzing the master's JSON request validation: every route that takes a body gets arbitrary
JSON (and bytes that are not JSON) from an admin. The rule: never a 500, always a JSON error
naming what is wrong. schemathesis (tests/master/test_master_openapi.py) covers bodies shaped
by the OpenAPI document; these are the shapes it does not generate."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from master_api.api.routing import API_PREFIX, ROUTES
from tests.fuzz.budget import fuzz_settings
from tests.master.conftest import Caller, draft, register

pytestmark = pytest.mark.slow

BODY_ROUTES = sorted(
    {(r.method, r.rule) for r in ROUTES if r.method in ("POST", "PATCH") and r.body is not None}
)
#: Statuses a route may answer to a body it cannot use. 503/504 only where the route itself
#: documents them (commands need a live agent stream).
ALLOWED = {200, 201, 202, 204, 400, 401, 403, 404, 409, 413, 415, 422, 429}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
#: Objects with the field names the routes really read, so values reach the validators.
FIELDS = [
    "name", "type", "region", "addr", "port", "tags", "metadata", "config_type", "node_type",
    "regions", "description", "config_data", "template", "params", "version_id", "node_ids",
    "playbook", "action", "username", "password", "role", "command", "args", "reason",
    "targets", "check", "auto_rollback", "serial", "region", "timeout",
]  # fmt: skip
field_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


@pytest.fixture
def targets(admin: Caller) -> dict[str, str]:
    node = register(admin, "fuzz-core", "core", "cn")
    version = draft(admin, "core")
    return {"node_id": node["id"], "version_id": str(version["version_id"]), "name": "viewer"}


def _path(rule: str, targets: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return targets.get(match.group(1), "x")

    return API_PREFIX + re.sub(r"<(?:[^:>]+:)?([^>]+)>", fill, rule)


def _check(answer: Any, method: str, rule: str, body: object) -> None:
    allowed = ALLOWED | ({503, 504} if rule.endswith("/commands") else set())
    assert answer.status_code in allowed, (method, rule, body, answer.status_code, answer.data)
    if answer.status_code >= 400:
        doc = answer.get_json(silent=True)
        assert isinstance(doc, dict) and doc.get("error") and doc.get("message"), answer.data


@fuzz_settings(60)
@given(
    route=st.sampled_from(BODY_ROUTES),
    body=json_values | field_objects,
)
@example(route=("POST", "/nodes"), body={"name": "n", "type": "edge", "port": 2**70})
@example(route=("POST", "/configs"), body={"node_type": "edge", "config_data": "\x00"})
def test_any_json_body_gets_a_json_answer_never_a_500(
    admin: Caller, targets: dict[str, str], route: tuple[str, str], body: object
) -> None:
    method, rule = route
    answer = admin.call(method, _path(rule, targets), json=body)
    _check(answer, method, rule, body)


@fuzz_settings(30)
@given(route=st.sampled_from(BODY_ROUTES), raw=st.binary(max_size=200))
@example(route=("POST", "/nodes"), raw=b'{"name": "a", "name": "b"}')
@example(route=("POST", "/nodes"), raw=b"[" * 5000)  # deep nesting
@example(route=("POST", "/nodes"), raw=b'{"port": 1e999}')
def test_bytes_that_are_not_json_get_a_400(
    admin: Caller, targets: dict[str, str], route: tuple[str, str], raw: bytes
) -> None:
    method, rule = route
    answer = admin.call(
        method, _path(rule, targets), data=raw, headers={"Content-Type": "application/json"}
    )
    _check(answer, method, rule, raw)
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        assert answer.status_code in (400, 401, 413, 429), (rule, raw, answer.data)
