"""``/users``: user management (admin only)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from flask import Blueprint, g

from master_api.api import shapes
from master_api.api.common import NAME_PATTERN
from master_api.api.routing import Reply, api_route, current_identity
from master_api.api.schema import Field, Schema
from master_api.errors import Conflict, NotFound
from master_api.extensions import repos, services
from master_api.models import ROLES, Role, User

__all__ = ["bp"]

bp = Blueprint("users", __name__)


@dataclass(frozen=True, slots=True)
class UserInput:
    name: str
    role: Role
    password: str


@dataclass(frozen=True, slots=True)
class UserPatch:
    role: Role | None = None
    password: str | None = None


_ROLE = Field(
    "role", "string", "viewer reads; operator changes the fleet; admin also users", enum=ROLES
)
_PASSWORD = Field("password", "string", "at least 10 characters", min_length=10, max_length=1024)

USER_IN = Schema(
    "UserCreate",
    [
        Field("name", "string", required=True, pattern=NAME_PATTERN, max_length=63),
        replace(_ROLE, required=True),
        replace(_PASSWORD, required=True),
    ],
    UserInput,
)
USER_PATCH = Schema("UserUpdate", [_ROLE, _PASSWORD], UserPatch, min_fields=1)


def _get(name: str) -> User:
    user = repos().users.get(name)
    if user is None:
        raise NotFound(f"user {name!r} does not exist")
    return user


def _keep_an_admin(user: User, new_role: str | None) -> None:
    """Refuse to remove or demote the last admin (nobody could manage users any more)."""
    if user.role == "admin" and new_role != "admin" and repos().users.count_role("admin") <= 1:
        raise Conflict("this is the last admin; create another admin first")


_REPLIES_404 = Reply(404, "No such user", shapes.ERROR)


@api_route(
    bp,
    "/users",
    "GET",
    summary="List users",
    access="admin",
    replies=[Reply(200, "Users", shapes.list_of(shapes.USER))],
)
def list_users() -> Any:
    users = repos().users.find()
    return {"items": [u.to_json() for u in users], "count": len(users)}


@api_route(
    bp,
    "/users",
    "POST",
    summary="Create a user",
    access="admin",
    body=USER_IN,
    replies=[Reply(201, "Created", shapes.USER), Reply(409, "Name taken", shapes.ERROR)],
)
def create_user(body: UserInput) -> Any:
    g.aicdn_target = body.name
    now = time.time()
    user = User(body.name, body.role, services().passwords.hash(body.password), now, now)
    repos().users.create(user)
    return user.to_json(), 201


@api_route(
    bp,
    "/users/<name>",
    "GET",
    summary="Get a user",
    access="admin",
    replies=[Reply(200, "The user", shapes.USER), _REPLIES_404],
)
def get_user(name: str) -> Any:
    return _get(name).to_json()


@api_route(
    bp,
    "/users/<name>",
    "PATCH",
    summary="Change a user's role or password",
    access="admin",
    body=USER_PATCH,
    replies=[
        Reply(200, "Updated", shapes.USER),
        _REPLIES_404,
        Reply(409, "Would leave no admin", shapes.ERROR),
    ],
)
def update_user(name: str, body: UserPatch) -> Any:
    user = _get(name)
    changes: dict[str, Any] = {}
    if body.role is not None:
        _keep_an_admin(user, body.role)
        changes["role"] = body.role
    if body.password is not None:
        changes["password_hash"] = services().passwords.hash(body.password)
    if not repos().users.update(name, time.time(), **changes):
        raise NotFound(f"user {name!r} does not exist")
    return _get(name).to_json()


@api_route(
    bp,
    "/users/<name>",
    "DELETE",
    summary="Delete a user",
    access="admin",
    replies=[
        Reply(204, "Deleted", None, media_type=""),
        _REPLIES_404,
        Reply(409, "The last admin, or yourself", shapes.ERROR),
    ],
)
def delete_user(name: str) -> Any:
    user = _get(name)
    if name == current_identity().name:
        raise Conflict("you cannot delete yourself")
    _keep_an_admin(user, None)
    repos().users.delete(name)
    return "", 204
