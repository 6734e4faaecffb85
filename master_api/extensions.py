"""Extensions, created at import time and bound to an app in ``init_app`` (STYLE B3).

* ``jwt``: flask-jwt-extended, with every failure answered as ``{"error", "message"}`` 401;
* ``store``: the process's database connection and repositories;
* accessors :func:`repos` and :func:`settings` for views and services.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Flask, Response, current_app
from flask_jwt_extended import JWTManager

from master_api.errors import error_response
from master_api.repos import Repos
from master_api.services import Services
from master_api.settings import Settings
from master_api.store import Store

__all__ = [
    "StoreExtension",
    "init_jwt",
    "init_services",
    "init_settings",
    "jwt",
    "repos",
    "services",
    "settings",
    "store",
]

log = logging.getLogger(__name__)

_SETTINGS_KEY = "AICDN_SETTINGS"


class StoreExtension:
    """Binds one :class:`Store` (one ``MongoClient``) and its :class:`Repos` to an app."""

    def init_app(self, app: Flask, settings: Settings, uri: str) -> None:
        """Connect lazily to ``uri`` and create every index (raises ``StoreUnavailable``)."""
        db_store = Store(uri, settings.mongo_db, settings.mongo_timeout)
        bundle = Repos(db_store.db)
        app.extensions["aicdn_store"] = (db_store, bundle)
        bundle.ensure_indexes()

    @staticmethod
    def get(app: Flask) -> tuple[Store, Repos]:
        value: tuple[Store, Repos] = app.extensions["aicdn_store"]
        return value


jwt = JWTManager()
store = StoreExtension()


def repos(app: Flask | None = None) -> Repos:
    """The repositories of ``app`` (default: the current app)."""
    return StoreExtension.get(app or current_app)[1]


def services(app: Flask | None = None) -> Services:
    """The domain services of ``app`` (default: the current app)."""
    value: Services = (app or current_app).extensions["aicdn_services"]
    return value


def init_services(app: Flask) -> None:
    """Build the domain services on the app's repositories and settings."""
    app.extensions["aicdn_services"] = Services(repos(app), settings(app))


def settings(app: Flask | None = None) -> Settings:
    """The settings ``app`` was created with (default: the current app)."""
    value: Settings = (app or current_app).config[_SETTINGS_KEY]
    return value


def init_settings(app: Flask, value: Settings) -> None:
    """Attach ``value`` and the Flask/JWT options derived from it."""
    app.config[_SETTINGS_KEY] = value
    app.config["MAX_CONTENT_LENGTH"] = value.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    app.config["JWT_SECRET_KEY"] = value.jwt_secret
    app.config["JWT_TOKEN_LOCATION"] = ["headers"]
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=value.access_token_ttl)
    app.config["JWT_REFRESH_TOKEN_EXPIRES"] = timedelta(seconds=value.refresh_token_ttl)
    app.config["JWT_ERROR_MESSAGE_KEY"] = "message"


def _unauthorized(message: str) -> Response:
    return error_response(
        401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="aicdn"'}
    )


def init_jwt(app: Flask) -> None:
    """Bind ``jwt`` to ``app`` with JSON 401 answers and the revocation check."""
    jwt.init_app(app)


@jwt.unauthorized_loader
def _missing_token(reason: str) -> Response:
    return _unauthorized(f"authentication required: {reason}")


@jwt.invalid_token_loader
def _invalid_token(reason: str) -> Response:
    return _unauthorized(f"invalid token: {reason}")


@jwt.expired_token_loader
def _expired_token(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("token has expired; log in or refresh")


@jwt.revoked_token_loader
def _revoked_token(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("token has been revoked; log in again")


@jwt.user_lookup_error_loader
def _unknown_user(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("the token's user no longer exists")


@jwt.needs_fresh_token_loader
def _needs_fresh(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("a fresh token is required; log in again")


@jwt.token_verification_failed_loader
def _claims_failed(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("token claims were refused")


@jwt.token_in_blocklist_loader
def _is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    # A store outage raises StoreUnavailable here, answered 503: we cannot tell whether the
    # token was revoked, so refusing to serve is the safe answer.
    return repos().revoked_tokens.is_revoked(str(payload.get("jti", "")))
