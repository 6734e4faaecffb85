"""``/auth``: log in (rate limited), refresh, log out (revocation)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, g, request
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token

from master_api.api import shapes
from master_api.api.routing import Reply, api_route, current_identity
from master_api.api.schema import Field, Schema
from master_api.errors import TooManyRequests, Unauthorized
from master_api.extensions import repos, services, settings

__all__ = ["bp"]

bp = Blueprint("auth", __name__)


@dataclass(frozen=True, slots=True)
class LoginInput:
    username: str
    password: str


LOGIN = Schema(
    "Login",
    [
        Field("username", "string", required=True, min_length=1, max_length=64),
        Field("password", "string", required=True, min_length=1, max_length=1024),
    ],
    LoginInput,
)


def _issue(name: str, role: str) -> dict[str, Any]:
    refresh = create_refresh_token(identity=name, additional_claims={"role": role})
    refresh_jti = str(decode_token(refresh)["jti"])
    access = create_access_token(
        identity=name, additional_claims={"role": role, "rjti": refresh_jti}
    )
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": int(settings().access_token_ttl),
        "role": role,
    }


def _window() -> tuple[int, float]:
    length = settings().login_window
    start = int(time.time() // length * length)
    return start, start + length


def _too_many(what: str, window_end: float) -> TooManyRequests:
    retry = max(1, math.ceil(window_end - time.time()))
    return TooManyRequests(
        f"too many login attempts {what}; retry in {retry}s", headers={"Retry-After": str(retry)}
    )


@api_route(
    bp,
    "/auth/login",
    "POST",
    summary="Log in: exchange a user name and password for access and refresh tokens",
    access="public",
    body=LOGIN,
    replies=[
        Reply(200, "Tokens", shapes.TOKENS),
        Reply(401, "Unknown user or wrong password", shapes.ERROR),
        Reply(429, "Too many attempts from this address or for this user", shapes.ERROR),
    ],
)
def login(body: LoginInput) -> Any:
    """Rate limits: all attempts per client IP, failed attempts per user name, per window."""
    g.aicdn_actor = body.username
    conf = settings()
    store = repos()
    start, end = _window()
    ip_key = f"ip:{request.remote_addr or 'unknown'}"
    user_key = f"user:{body.username}"
    if store.login_attempts.hit(ip_key, start, end) > conf.login_max_per_ip:
        raise _too_many("from this address", end)
    if store.login_attempts.count(user_key, start) >= conf.login_max_per_user:
        raise _too_many("for this user", end)
    user = store.users.get(body.username)
    if not services().passwords.verify(user.password_hash if user else None, body.password):
        store.login_attempts.hit(user_key, start, end)
        raise Unauthorized("unknown user or wrong password")
    assert user is not None
    return _issue(user.name, user.role)


@api_route(
    bp,
    "/auth/refresh",
    "POST",
    summary="A new access token from a refresh token (sent as the bearer token)",
    access="refresh",
    replies=[Reply(200, "A new access token", shapes.ACCESS_TOKEN)],
)
def refresh() -> Any:
    """The user is read again, so a deleted user cannot refresh and a role change applies."""
    identity = current_identity()
    user = repos().users.get(identity.name)
    if user is None:
        raise Unauthorized("the token's user no longer exists")
    access = create_access_token(
        identity=user.name, additional_claims={"role": user.role, "rjti": identity.jti}
    )
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": int(settings().access_token_ttl),
    }


@api_route(
    bp,
    "/auth/logout",
    "POST",
    summary="Revoke the access token and the refresh token it was issued with",
    access="viewer",
    replies=[Reply(200, "Revoked", shapes.MESSAGE)],
)
def logout() -> Any:
    identity = current_identity()
    now = time.time()
    conf = settings()
    revoked = repos().revoked_tokens
    revoked.revoke(identity.jti, now + conf.access_token_ttl, identity.name, "access", now)
    if identity.refresh_jti:
        revoked.revoke(
            identity.refresh_jti, now + conf.refresh_token_ttl, identity.name, "refresh", now
        )
    return {"message": "logged out; the tokens are revoked"}
