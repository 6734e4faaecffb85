"""Errors as the API shows them: ``{"error": <code>, "message": <text>}`` with the right status.

Two handlers cover everything (STYLE E2): one for the domain :class:`ApiError` (raised by views,
services and repositories) and one for every werkzeug ``HTTPException`` (404 for unknown URLs,
405, 413 for oversize bodies...). An unexpected exception is logged with its traceback and
answered with a JSON 500 that reveals nothing of the internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "StoreUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "error_response",
    "init_app",
]

log = logging.getLogger(__name__)

# Machine-readable codes for the statuses werkzeug raises on its own.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "store_unavailable",
}


class ApiError(Exception):
    """A refusal the client should see: ``status_code``, a stable ``error`` code and a message.

    ``extra`` adds fields to the JSON body (e.g. ``issues`` of a refused config);
    ``headers`` adds response headers (e.g. ``Retry-After``).
    """

    status_code = 400
    error = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if error is not None:
            self.error = error
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON body: ``error`` and ``message`` first, then any extra fields."""
        return {"error": self.error, "message": self.message, **self.extra}


class BadRequest(ApiError):
    status_code = 400
    error = "bad_request"


class Unauthorized(ApiError):
    status_code = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    error = "forbidden"


class NotFound(ApiError):
    status_code = 404
    error = "not_found"


class Conflict(ApiError):
    status_code = 409
    error = "conflict"


class TooManyRequests(ApiError):
    status_code = 429
    error = "too_many_requests"


class StoreUnavailable(ApiError):
    """The database did not answer in time; raised by the repositories only."""

    status_code = 503
    error = "store_unavailable"


def issues_extra(issues: Sequence[Any]) -> dict[str, Any]:
    """``{"issues": [{"path", "message"}, ...]}`` from relay ``ConfigIssue`` objects."""
    return {"issues": [{"path": i.path, "message": i.message} for i in issues]}


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON error response outside of exception handling (e.g. from JWT callbacks)."""
    response = jsonify({"error": error, "message": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _handle_api_error(exc: ApiError) -> Response:
    if exc.status_code >= 500:
        log.warning("%s %s: %s", request.method, request.path, exc.message)
    response = jsonify(exc.to_dict())
    response.status_code = exc.status_code
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def _handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
    response = error_response(status, code, exc.description or exc.name or "error")
    if status == 405 and exc.response is None:
        # Keep the Allow header werkzeug computed for the route.
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response


def _handle_unexpected(exc: Exception) -> Response:
    # The one broad catch of the web layer (STYLE E6): log with context, answer a JSON 500.
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; see the master's log")


def init_app(app: Flask) -> None:
    """Register the JSON error handlers on ``app``."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
