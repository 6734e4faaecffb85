"""The role matrix: every mutating route refuses an anonymous caller (401) and a viewer (403);
every route's declared role is enforced exactly (one role below it: 403)."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from master_api.api.routing import ROUTES, RouteSpec
from master_api.models import ROLES
from tests.master.conftest import Caller

MUTATING = [r for r in ROUTES if r.method in ("POST", "PATCH", "PUT", "DELETE")]
PROTECTED_MUTATING = [r for r in MUTATING if r.access in ROLES]


def _url(route: RouteSpec) -> str:
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", lambda m: "1" if "int" in m.group(0) else "x", route.path)


def _ids(route: RouteSpec) -> str:
    return f"{route.method} {route.rule}"


def test_every_mutating_route_declares_protection() -> None:
    public = {(r.method, r.rule) for r in MUTATING if r.access not in ROLES}
    # Log in / refresh tokens and the agents' heartbeat have their own credentials.
    assert public == {
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("POST", "/nodes/<node_id>/heartbeat"),
    }


@pytest.mark.parametrize("route", PROTECTED_MUTATING, ids=_ids)
def test_anonymous_gets_401(route: RouteSpec, client: FlaskClient) -> None:
    answer = client.open(_url(route), method=route.method, json={})
    assert answer.status_code == 401, answer.json
    assert answer.json["error"] == "unauthorized"


@pytest.mark.parametrize("route", [r for r in PROTECTED_MUTATING if r.access != "viewer"], ids=_ids)
def test_viewer_gets_403(route: RouteSpec, users: dict[str, Caller]) -> None:
    """Every mutating route above viewer (the only viewer one is logging yourself out)."""
    answer = users["viewer"].call(route.method, _url(route), json={})
    assert answer.status_code == 403, answer.json
    assert answer.json["error"] == "forbidden"


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.access in ("operator", "admin")], ids=_ids
)
def test_one_role_below_the_declared_one_gets_403(
    route: RouteSpec, users: dict[str, Caller]
) -> None:
    below = ROLES[ROLES.index(route.access) - 1]  # type: ignore[arg-type]
    answer = users[below].call(route.method, _url(route), json={})
    assert answer.status_code == 403, (below, answer.json)


def test_the_declared_role_passes_the_check(users: dict[str, Caller]) -> None:
    for route in ROUTES:
        if route.access not in ROLES or route.rule == "/auth/logout":
            continue
        caller = users[route.access]
        answer = caller.call(route.method, _url(route), json={})
        assert answer.status_code not in (401, 403), (_ids(route), answer.json)
