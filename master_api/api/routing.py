"""The route table: every API route is declared with :func:`api_route`, which

* registers the view on its blueprint,
* enforces who may call it (``access``: a role, ``public``, ``refresh`` or ``node``),
* validates the query string and the JSON body with their :class:`~master_api.api.schema.Schema`,
* and records it in :data:`ROUTES`, from which the OpenAPI document is generated (and against
  which a test compares ``app.url_map``, so the document cannot drift from the routes).

Authentication comes before validation: an anonymous caller learns nothing about the body
rules. Access failures are 401 (no or bad credentials) and 403 (a role too low).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from flask import Blueprint, Response, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request

from master_api.api.schema import Schema
from master_api.errors import ApiError, BadRequest, Forbidden
from master_api.extensions import settings
from master_api.models import ROLES, role_allows

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "Access",
    "Identity",
    "Reply",
    "RouteSpec",
    "api_route",
    "check_admin_allow",
    "current_identity",
    "route_for",
]

API_PREFIX = "/api/v1"
Access = Literal["viewer", "operator", "admin", "public", "refresh", "node"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented response: status, description, and a JSON schema or another media type."""

    status: int
    description: str
    schema: Mapping[str, Any] | None = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    alternatives: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Other media types the same answer can come in (``text/csv``), with their schemas."""


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One API operation as declared in code (the source of the OpenAPI document)."""

    endpoint: str
    rule: str
    method: str
    summary: str
    access: Access
    tag: str
    replies: tuple[Reply, ...]
    body: Schema[Any] | None = None
    body_required: bool = True
    query: Schema[Any] | None = None
    managed: bool = True
    """Management API: only from ``AICDN_ADMIN_ALLOW`` CIDRs (False: health, metrics, agents)."""
    audited: bool = True
    """Writes an ``audit_log`` entry when its method is mutating."""

    @property
    def path(self) -> str:
        """The full URL rule (``/api/v1/nodes/<node_id>``)."""
        return API_PREFIX + self.rule

    def statuses(self) -> list[int]:
        """Every status the route can answer, documented ones first."""
        codes = [reply.status for reply in self.replies]
        implied: list[int] = [503]
        if self.access not in ("public",):
            implied.append(401)
        if self.access in ROLES:
            implied.append(403)
        if self.managed:
            implied.append(403)
        if self.body is not None or self.query is not None or "<" in self.rule:
            implied.append(400)
        if "<" in self.rule:
            implied.append(404)  # unknown id, or an id the URL converter refuses
        if self.body is not None:
            implied += [413, 415]
        return sorted(set(codes + implied))


#: Every route declared so far, in declaration order (filled at import of the blueprints).
ROUTES: list[RouteSpec] = []
_BY_ENDPOINT: dict[str, RouteSpec] = {}

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller of a JWT-protected route."""

    name: str
    role: str
    jti: str
    refresh_jti: str | None


def current_identity() -> Identity:
    """The caller of the current JWT-protected request (set by the route wrapper)."""
    identity: Identity = g.aicdn_identity
    return identity


def route_for(endpoint: str | None) -> RouteSpec | None:
    """The declaration of a Flask endpoint (``nodes.get_node``), or None."""
    return _BY_ENDPOINT.get(endpoint or "")


def api_route(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    access: Access,
    replies: Sequence[Reply],
    body: Schema[Any] | None = None,
    body_required: bool = True,
    query: Schema[Any] | None = None,
    managed: bool = True,
    audited: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare and register an API operation; see the module docstring.

    The view receives the path arguments, plus ``body=`` and/or ``query=`` (the values their
    schemas built) when declared.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        endpoint = f"{bp.name}.{view.__name__}"
        spec = RouteSpec(
            endpoint=endpoint,
            rule=rule,
            method=method,
            summary=summary,
            access=access,
            tag=bp.name,
            replies=tuple(replies),
            body=body,
            body_required=body_required,
            query=query,
            managed=managed,
            audited=audited,
        )

        @functools.wraps(view)
        def wrapper(**path_args: Any) -> Any:
            _authorize(spec)
            kwargs = dict(path_args)
            if query is not None:
                kwargs["query"] = query.parse_query(request.args)
            elif request.args:
                raise BadRequest(f"query: this route takes no query parameters: {_args()}")
            if body is not None:
                data = _json_body(required=body_required)
                kwargs["body"] = body.parse(data) if data is not None else body.parse({})
            return view(**kwargs)

        # No automatic OPTIONS: every method a path answers is a documented one (others: 405).
        bp.add_url_rule(
            rule,
            endpoint=view.__name__,
            view_func=wrapper,
            methods=[method],
            provide_automatic_options=False,
        )
        if endpoint not in _BY_ENDPOINT:
            ROUTES.append(spec)
            _BY_ENDPOINT[endpoint] = spec
        return wrapper

    return decorate


def _args() -> str:
    return ", ".join(sorted(request.args))[:80]


def _authorize(spec: RouteSpec) -> None:
    if spec.access in ("public", "node"):
        return  # node routes authenticate with the node token in the view
    verify_jwt_in_request(refresh=spec.access == "refresh")
    claims = get_jwt()
    identity = Identity(
        name=str(claims.get("sub", "")),
        role=str(claims.get("role", "")),
        jti=str(claims.get("jti", "")),
        refresh_jti=cast(str | None, claims.get("rjti")),
    )
    g.aicdn_identity = identity
    if spec.access in ROLES and not role_allows(identity.role, spec.access):
        raise Forbidden(f"this needs the {spec.access} role; you are {identity.role or 'nobody'}")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_body(required: bool) -> object:
    """The parsed JSON body; None when there is none and it is optional."""
    raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: werkzeug's 413
    if not raw:
        if required:
            raise BadRequest("body: a JSON object is required")
        return None
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(
            "body: send it as application/json",
            status_code=415,
            error="unsupported_media_type",
        )
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise BadRequest(f"body: not valid JSON: {message[:200]}") from None


def check_admin_allow() -> Response | None:
    """``before_request`` hook: refuse management routes to clients outside the allowed CIDRs
    (and unknown URLs under the API prefix, so probing learns nothing)."""
    if not request.path.startswith(API_PREFIX):
        return None
    spec = route_for(request.endpoint)
    if spec is not None and not spec.managed:
        return None
    address = request.remote_addr or ""
    try:
        client = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        client = None
    networks = settings().admin_allow
    if client is not None and any(client in network for network in networks):
        return None
    raise Forbidden(
        f"client address {address or 'unknown'} is not allowed to the management API "
        "(AICDN_ADMIN_ALLOW)"
    )


def is_mutating(method: str) -> bool:
    return method in _MUTATING
