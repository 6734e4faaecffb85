"""Fleet rendering: one relay config per node, from a config version and the node inventory.

The master (``GET /nodes/{id}/config``, ``PushConfig``) and the Ansible filter ``gost_config``
both render through this module, so a node gets the same YAML whichever way it is deployed.
Everything here is pure: no I/O, no clock, no master or database imports (the master imports
this module, never the other way round). Rendering builds plain data and ``yaml`` dumps it;
there are no text templates.

Config versions
---------------
A config version's ``config_data`` is the YAML of a *generic* relay config for one node type:
the gost-style schema of DESIGN §3.2 (``relay.config.loader``) plus two fleet extensions that
the renderer consumes before the relay's own checker sees the result:

``@node`` (``NODE_PLACEHOLDER``)
    As the value of ``certFile``, ``keyFile`` or ``caFile`` in a ``tls`` block (the top-level
    ``tls``, ``api.tls``, ``metrics.tls``, a service's ``listener.tls``, a chain node's
    ``dialer.tls`` or a ``peers`` dialer's ``tls``), it means "this node's file". The renderer
    fills in ``node.metadata["cert_file"]``, ``["key_file"]`` or ``["ca_file"]`` when the node
    has one (used verbatim), else ``{base_dir}/tls/{node.name}.pem``,
    ``{base_dir}/tls/{node.name}.key`` or ``{base_dir}/tls/ca.pem``. Concrete paths are kept as
    written. ``@node`` anywhere else is an error.

``peers`` in a chain hop
    Instead of (or besides) ``nodes``, a hop may say which fleet nodes to chain to::

        peers:
          type: core                  # required: node type of the peers (edge | core)
          port: 8443                  # optional: port to dial; default each peer's own port
          metadataPort: ws_port       # optional: peer.metadata key that overrides ``port``
          connector: {type: relay, auth: {username: edge, password: "..."}}
          dialer: {type: tls, tls: {caFile: "@node"}}

    The renderer replaces it with one chain node per eligible peer, listed before the hop's
    explicit ``nodes`` (static extras such as a CDN-fronted fallback keep their place last):

    * eligible: ``type`` matches, ``status`` is ``online`` or ``degraded`` (never ``offline``,
      ``draining``, ``standby`` or anything else), and it is not the node itself;
    * order: online peers of the node's own region, then its degraded ones, then online peers
      of other regions, then their degraded ones; by name (then id) within each group. Order is
      preference under the ``fifo`` strategy the ``edge`` template uses;
    * each node: ``name`` = the peer's name, ``addr`` = ``{peer.addr}:{port}`` (IPv6 in
      brackets), where port = ``peer.metadata[metadataPort]`` if set, else the spec's ``port``,
      else ``peer.port``; ``connector`` and ``dialer`` are copies of the spec's. A connector
      ``auth`` without ``username`` gets the rendered node's name (so a core can tell edges
      apart once it checks per-edge users); the password comes from the spec. A ``tls``,
      ``wss`` or ``quic`` dialer gets ``tls.serverName`` = ``peer.addr`` unless it sets one.
    * a hop left with no node at all (no eligible peer and no explicit ``nodes``) is refused:
      ``chains[i].hops[j].peers: no online core node to chain to``.

Everything else is kept as written, in its order: services and their listening ports, ``api``
and ``metrics`` addresses, policies. ``version`` is set to the version being rendered.

The result is checked with ``config_from_mapping(..., check_files=False)`` -- the relay's own
checker, without looking for certificate files, which exist on the target host rather than
here -- so a rendered config that the relay would refuse is never returned.
``check_config_data`` runs the same checks on a version's ``config_data`` before any node
exists (the master's draft validation), rendering it for stand-in nodes. Issue paths name
the rendered config (``chains[0].hops[0].nodes[2].addr``), the node (``node.metadata.cert_file``)
or ``config_data`` (YAML syntax). Rendering is deterministic: equal inputs give equal YAML,
whatever the order of ``peers``.

Templates
---------
``expand_template`` builds the generic ``config_data`` of a node type from documented
parameters (``template_params``). Ports default to DESIGN §1:

* ``core``: a relay tunnel service (``transport`` tls, tcp, or multiplexed mtls or mtcp) on
  ``port`` (8443) and, unless ``ws_port`` is null, a WebSocket tunnel service (wss, or ws when
  ``transport`` is tcp or mtcp) on ``ws_port`` (8444) at ``ws_path``; both forward only to
  ``origins`` (round robin) and accept one user, ``edge_username``/``edge_password``. The
  relay handler checks a single user (its ``auth`` has no list of users), so every edge shares
  one name; the edge template sends it explicitly rather than relying on the per-node username
  default above.
* ``edge``: an ``http`` entry service on ``port`` (443; ``listener`` tls or tcp) and, unless
  ``http_port`` is null, a plain-HTTP entry on ``http_port`` (8080: the port DESIGN §1 gives
  the edge's WebSocket entry, which the http handler does not speak yet), both with
  ``ttfb_timeout``/``idle_timeout``, chained through ``to-core`` to a ``peers`` hop of type
  core dialled with ``transport`` (tls, tcp, wss, ws, mtls or mtcp) and the shared credentials.
  tls/tcp/mtls/mtcp dial each core's own port (``core_port`` overrides); ws/wss dial the core's
  ``metadata.ws_port``, else ``core_ws_port`` (8444). The edge's transport must match what the
  cores serve (tls/tcp/mtls/mtcp: the core's ``transport``; wss/ws: its ``ws_port`` service).
  Streams are resumable across a broken tunnel (connector ``metadata.resume``) within
  ``resume_window`` (30s; null: off).
* both: ``metrics_addr`` (``:9100``), ``api_addr`` (``127.0.0.1:18080``, the agent's
  ``relay_api``), ``api_token``, ``log_level``, ``log_format``; TLS listeners use the node's
  certificate (``@node``); tls/wss/mtls dialers verify cores against ``ca_file`` (``@node``: the
  node's fleet CA; null: the system store).
"""

from __future__ import annotations

import copy
import functools
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import yaml

from relay.config.errors import ConfigError, ConfigIssue

# The checker's own YAML loader (safe, refuses duplicate keys) and its syntax-error reporting, so
# config_data parses here exactly as ``aicdn-relay check`` parses a file.
from relay.config.loader import _Loader, _yaml_issue, config_from_mapping, parse_address
from relay.config.loader import parse_duration as _parse_duration
from relay.config.model import LOG_FORMATS, LOG_LEVELS, STRATEGIES
from relay.config.values import _kind, _show

__all__ = [
    "NODE_PLACEHOLDER",
    "NODE_TYPES",
    "PEER_STATUSES",
    "TEMPLATES",
    "FleetNode",
    "ParamSpec",
    "check_config_data",
    "expand_template",
    "peer_types",
    "render_node_config",
    "render_node_mapping",
    "template_params",
]

NodeType = Literal["edge", "core"]

NODE_TYPES: Final = ("edge", "core")
#: Statuses a node may have and still be chained to; ``degraded`` ones are listed last.
PEER_STATUSES: Final = ("online", "degraded")
#: ``certFile``/``keyFile``/``caFile`` value meaning "this node's file" (see module docstring).
NODE_PLACEHOLDER: Final = "@node"
TEMPLATES: tuple[str, ...] = ("edge", "core")
DEFAULT_BASE_DIR: Final = "/etc/aicdn"


@dataclass(frozen=True, slots=True)
class FleetNode:
    """A node of the inventory, as the renderer needs it (the master maps its documents here)."""

    id: str
    name: str
    type: NodeType
    region: str
    #: Host or IP the node is reached at (by peers dialling it).
    addr: str
    #: Its main listening port: the client entry of an edge, the tunnel port of a core.
    port: int
    #: online | offline | degraded | draining | standby ...; only ``PEER_STATUSES`` are chained to.
    status: str = "online"
    tags: tuple[str, ...] = ()
    #: Free-form attributes; the renderer reads ``cert_file``, ``key_file``, ``ca_file`` (paths
    #: on the node) and whatever key a ``peers`` spec names in ``metadataPort`` (e.g. ``ws_port``).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One template parameter.

    ``type`` is one of ``port`` (integer 1-65535), ``int`` (integer >= 1), ``str`` (non-empty),
    ``secret`` (non-empty string, a credential), ``path`` (URL path starting with ``/``),
    ``duration`` (positive, ``"10s"`` or seconds), ``addr`` (listen address ``host:port``,
    host optional), ``list[addr]`` (non-empty list of dialled ``host:port``) or ``choice``
    (one of ``choices``); a ``|null`` suffix also allows null, which turns the feature off.
    """

    name: str
    type: str
    #: Used when the parameter is not given; meaningless when ``required``.
    default: Any
    description: str
    required: bool = False
    choices: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# Templates


def template_params(template: str) -> Mapping[str, ParamSpec]:
    """The documented parameters of ``template`` (one of ``TEMPLATES``), by name, read-only.

    Raises ``ConfigError`` (path ``template``) for an unknown template.
    """
    return _TEMPLATE_SPECS[_template_name(template)]


def expand_template(template: str, params: Mapping[str, Any]) -> str:
    """YAML text of the generic config of a node type: ``template`` filled with ``params``.

    Missing parameters take their defaults. The result is what a config version stores as
    ``config_data``: it still holds ``peers`` hops and ``@node`` placeholders, and is rendered
    per node by ``render_node_config``. It is checked (``check_config_data``) before it is
    returned. Raises ``ConfigError``: path ``template`` for an unknown template, and
    ``params.<name>`` (``params.origins[1]``) for every unknown, missing or mistyped parameter
    and for two listening ports that clash.
    """
    name = _template_name(template)
    values = _resolve_params(_TEMPLATE_SPECS[name], params)
    _check_param_ports(values, _LISTEN_PARAMS[name])
    text = _dump(_BUILDERS[name](values))
    check_config_data(text, name)
    return text


def _template_name(template: str) -> str:
    if not isinstance(template, str) or template not in _TEMPLATE_SPECS:
        raise ConfigError.single(
            "template",
            f"unknown template {_show(template)}; expected one of {', '.join(TEMPLATES)}",
        )
    return template


def _common_specs() -> tuple[ParamSpec, ...]:
    return (
        ParamSpec(
            "edge_password",
            "secret",
            None,
            "password edges present to cores (relay auth); the same on both templates",
            required=True,
        ),
        ParamSpec(
            "edge_username",
            "str",
            "edge",
            "user name edges present to cores; shared by all edges (a core checks one user)",
        ),
        ParamSpec("ws_path", "path", "/tunnel", "URL path of the WebSocket tunnel"),
        ParamSpec("metrics_addr", "addr|null", ":9100", "Prometheus metrics address; null: none"),
        ParamSpec(
            "api_addr",
            "addr|null",
            "127.0.0.1:18080",
            "admin API address (the agent's relay_api); null: none",
        ),
        ParamSpec("api_token", "secret|null", None, "bearer token of the admin API; null: none"),
        ParamSpec("log_level", "choice", "info", "log level", choices=LOG_LEVELS),
        ParamSpec("log_format", "choice", "json", "log format", choices=LOG_FORMATS),
    )


_EDGE_SPECS = (
    ParamSpec("port", "port", 443, "client entry port (HTTPS with listener tls)"),
    ParamSpec(
        "listener", "choice", "tls", "client entry listener; tls uses the node's certificate",
        choices=("tls", "tcp"),
    ),
    ParamSpec("http_port", "port|null", 8080, "second, plain-HTTP client entry; null: none"),
    ParamSpec("ttfb_timeout", "duration", "600s", "longest wait for an origin's first byte"),
    ParamSpec("idle_timeout", "duration", "300s", "longest silence between response chunks"),
    ParamSpec(
        "transport", "choice", "tls",
        "tunnel transport to the cores; mtls/mtcp: every tunnel a stream of one connection",
        choices=("tls", "tcp", "wss", "ws", "mtls", "mtcp"),
    ),
    ParamSpec(
        "core_port", "port|null", None,
        "tls/tcp: port dialled on every core; null: each core's own port",
    ),
    ParamSpec(
        "core_ws_port", "port", 8444,
        "wss/ws: port dialled on a core without metadata.ws_port",
    ),
    ParamSpec(
        "ca_file", "str|null", NODE_PLACEHOLDER,
        "CA bundle tls/wss dialers verify cores against; @node: the node's fleet CA; "
        "null: the system store",
    ),
    ParamSpec(
        "strategy", "choice", "fifo", "core selection; fifo follows the preference order",
        choices=STRATEGIES,
    ),
    ParamSpec("max_fails", "int", 1, "failures after which a core is skipped"),
    ParamSpec("fail_timeout", "duration", "10s", "how long a failed core is skipped"),
    ParamSpec(
        "resume_window", "duration|null", "30s",
        "streams survive a broken tunnel: the edge resumes them on a core within this window "
        "(cores keep them for their own resumeWindow, 30s by default); null: off",
    ),
    *_common_specs(),
)  # fmt: skip

_CORE_SPECS = (
    ParamSpec(
        "transport", "choice", "tls",
        "tunnel listener on port; tls/mtls use the node's certificate",
        choices=("tls", "tcp", "mtls", "mtcp"),
    ),
    ParamSpec("port", "port", 8443, "tunnel port (the node's registered port)"),
    ParamSpec(
        "ws_port", "port|null", 8444,
        "WebSocket tunnel port (wss with transport tls, ws with tcp); null: none",
    ),
    ParamSpec(
        "origins", "list[addr]", ("127.0.0.1:8000",),
        "origins (host:port) the tunnel forwards to, round robin; the only targets allowed",
    ),
    *_common_specs(),
)  # fmt: skip

_TEMPLATE_SPECS: Mapping[str, Mapping[str, ParamSpec]] = MappingProxyType(
    {
        "edge": MappingProxyType({spec.name: spec for spec in _EDGE_SPECS}),
        "core": MappingProxyType({spec.name: spec for spec in _CORE_SPECS}),
    }
)
#: Parameters that are listening addresses or ports, in the order clashes are reported.
_LISTEN_PARAMS: Mapping[str, tuple[str, ...]] = {
    "edge": ("port", "http_port", "metrics_addr", "api_addr"),
    "core": ("port", "ws_port", "metrics_addr", "api_addr"),
}


def _resolve_params(specs: Mapping[str, ParamSpec], params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter's value (given or default), or ``ConfigError`` naming each bad one."""
    if not isinstance(params, Mapping):
        raise ConfigError.single("params", f"expected a mapping of parameters, got {_kind(params)}")
    issues: list[ConfigIssue] = []
    for key in params:
        if not isinstance(key, str):
            issues.append(ConfigIssue("params", f"parameter name {_show(key)} is not a string"))
        elif key not in specs:
            issues.append(
                ConfigIssue(
                    f"params.{key}", f"unknown parameter; expected one of {', '.join(specs)}"
                )
            )
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        path = f"params.{name}"
        if name in params:
            values[name] = _coerce(spec, params[name], path, issues)
        elif spec.required:
            issues.append(ConfigIssue(path, f"required: {spec.description}"))
        else:
            values[name] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    if issues:
        raise ConfigError(issues)
    return values


_TYPE_HINTS = {
    "port": "a port number 1-65535",
    "int": "an integer >= 1",
    "str": "a non-empty string",
    "secret": "a non-empty string",
    "path": "a URL path starting with '/'",
    "duration": "a positive duration like '10s'",
    "addr": "an address like ':9100' or '127.0.0.1:18080'",
    "list[addr]": "a non-empty list of addresses like '127.0.0.1:8000'",
    "choice": "one of",
}


def _coerce(spec: ParamSpec, value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    """``value`` checked against ``spec.type``; problems go to ``issues`` (value then None)."""
    base = spec.type.removesuffix("|null")
    hint = _TYPE_HINTS[base]
    if base == "choice":
        hint = f"one of {', '.join(spec.choices)}"
    if value is None:
        if spec.type.endswith("|null"):
            return None
        issues.append(ConfigIssue(path, f"expected {hint}, got null"))
        return None
    problem = _PARAM_CHECKS[base](spec, value)
    if problem is None:
        return list(value) if base == "list[addr]" else value
    for suffix, message in problem:
        issues.append(ConfigIssue(path + suffix, message or f"expected {hint}, got {_seen(value)}"))
    return None


#: Param checks: None when fine, else (path suffix, message) pairs; "" means "expected <hint>".
_Problems = list[tuple[str, str]] | None


def _check_int(minimum: int, maximum: int) -> Callable[[ParamSpec, Any], _Problems]:
    def check(spec: ParamSpec, value: Any) -> _Problems:
        ok = isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum
        return None if ok else [("", "")]

    return check


def _check_str(spec: ParamSpec, value: Any) -> _Problems:
    return None if isinstance(value, str) and value else [("", "")]


def _check_path(spec: ParamSpec, value: Any) -> _Problems:
    return None if isinstance(value, str) and value.startswith("/") else [("", "")]


def _check_choice(spec: ParamSpec, value: Any) -> _Problems:
    return None if isinstance(value, str) and value in spec.choices else [("", "")]


def _check_duration(spec: ParamSpec, value: Any) -> _Problems:
    try:
        seconds = _parse_duration(value)
    except ValueError as exc:
        return [("", str(exc))]
    return None if seconds > 0 else [("", "must be greater than zero")]


def _check_listen_addr(spec: ParamSpec, value: Any) -> _Problems:
    if not isinstance(value, str):
        return [("", "")]
    try:
        parse_address(value, listen=True)
    except ValueError as exc:
        return [("", str(exc))]
    return None


def _check_addr_list(spec: ParamSpec, value: Any) -> _Problems:
    if not isinstance(value, list | tuple) or not value:
        return [("", "")]
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append((f"[{index}]", f"expected 'host:port', got {_seen(item)}"))
            continue
        try:
            parse_address(item, listen=False)
        except ValueError as exc:
            problems.append((f"[{index}]", str(exc)))
    return problems or None


_PARAM_CHECKS: Mapping[str, Callable[[ParamSpec, Any], _Problems]] = {
    "port": _check_int(1, 65535),
    "int": _check_int(1, 1 << 31),
    "str": _check_str,
    "secret": _check_str,
    "path": _check_path,
    "duration": _check_duration,
    "addr": _check_listen_addr,
    "list[addr]": _check_addr_list,
    "choice": _check_choice,
}


def _check_param_ports(values: Mapping[str, Any], names: Sequence[str]) -> None:
    """Refuse two listening parameters on the same port where their hosts overlap. Services
    listen on all interfaces (``:port``), so they overlap everything."""
    seen: list[tuple[str, str, int]] = []
    issues: list[ConfigIssue] = []
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        host, port = ("", value) if isinstance(value, int) else _host_port(value)
        for other, other_host, other_port in seen:
            if port and port == other_port and (host == other_host or "" in (host, other_host)):
                issues.append(
                    ConfigIssue(f"params.{name}", f"port {port} is already used by params.{other}")
                )
                break
        seen.append((name, host, port))
    if issues:
        raise ConfigError(issues)


def _host_port(value: str) -> tuple[str, int]:
    addr = parse_address(value, listen=True)  # checked already
    host = "" if addr.host in ("0.0.0.0", "::") else addr.host
    return host, addr.port


def _head(p: Mapping[str, Any]) -> dict[str, Any]:
    """log, api and metrics sections shared by the templates."""
    data: dict[str, Any] = {"log": {"level": p["log_level"], "format": p["log_format"]}}
    if p["api_addr"] is not None:
        api: dict[str, Any] = {"addr": p["api_addr"]}
        if p["api_token"] is not None:
            api["auth"] = {"token": p["api_token"]}
        data["api"] = api
    if p["metrics_addr"] is not None:
        data["metrics"] = {"addr": p["metrics_addr"], "path": "/metrics"}
    return data


def _node_tls() -> dict[str, Any]:
    return {"certFile": NODE_PLACEHOLDER, "keyFile": NODE_PLACEHOLDER}


def _edge_auth(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"username": p["edge_username"], "password": p["edge_password"]}


def _build_core(p: Mapping[str, Any]) -> dict[str, Any]:
    data = _head(p)
    secure = p["transport"] in ("tls", "mtls")
    if secure:
        data["tls"] = _node_tls()

    def service(name: str, port: int, listener: dict[str, Any]) -> dict[str, Any]:
        origins = p["origins"]
        return {
            "name": name,
            "addr": f":{port}",
            "listener": listener,
            "handler": {"type": "relay", "auth": _edge_auth(p)},
            "forwarder": {
                "nodes": [
                    {"name": "origin" if len(origins) == 1 else f"origin-{i + 1}", "addr": addr}
                    for i, addr in enumerate(origins)
                ],
                "selector": {"strategy": "round", "maxFails": 1, "failTimeout": "10s"},
            },
        }

    services = [service("tunnel", p["port"], {"type": p["transport"]})]
    if p["ws_port"] is not None:
        ws_type = "wss" if secure else "ws"
        services.append(
            service(
                "tunnel-ws", p["ws_port"], {"type": ws_type, "metadata": {"path": p["ws_path"]}}
            )
        )
    data["services"] = services
    return data


def _build_edge(p: Mapping[str, Any]) -> dict[str, Any]:
    data = _head(p)
    if p["listener"] == "tls":
        data["tls"] = _node_tls()

    def service(name: str, port: int, listener: str) -> dict[str, Any]:
        metadata = {"ttfbTimeout": p["ttfb_timeout"], "idleTimeout": p["idle_timeout"]}
        return {
            "name": name,
            "addr": f":{port}",
            "listener": {"type": listener},
            "handler": {"type": "http", "chain": "to-core", "metadata": metadata},
        }

    services = [service("entry", p["port"], p["listener"])]
    if p["http_port"] is not None:
        services.append(service("entry-http", p["http_port"], "tcp"))
    transport = p["transport"]
    dialer: dict[str, Any] = {"type": transport}
    if transport in ("tls", "wss", "mtls") and p["ca_file"] is not None:
        dialer["tls"] = {"caFile": p["ca_file"]}
    if transport in ("ws", "wss"):
        dialer["metadata"] = {"path": p["ws_path"]}
    peers: dict[str, Any] = {"type": "core"}
    if transport in ("ws", "wss"):
        peers["port"] = p["core_ws_port"]
        peers["metadataPort"] = "ws_port"
    elif p["core_port"] is not None:
        peers["port"] = p["core_port"]
    peers["connector"] = {"type": "relay", "auth": _edge_auth(p)}
    if p["resume_window"] is not None:
        peers["connector"]["metadata"] = {"resume": True, "resumeWindow": p["resume_window"]}
    peers["dialer"] = dialer
    selector = {
        "strategy": p["strategy"],
        "maxFails": p["max_fails"],
        "failTimeout": p["fail_timeout"],
    }
    data["services"] = services
    data["chains"] = [
        {"name": "to-core", "hops": [{"name": "core", "selector": selector, "peers": peers}]}
    ]
    return data


_BUILDERS: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "edge": _build_edge,
    "core": _build_core,
}


# ----------------------------------------------------------------------------------------------
# Rendering


def render_node_config(
    config_data: str,
    node: FleetNode,
    peers: Sequence[FleetNode],
    version: int,
    base_dir: str = DEFAULT_BASE_DIR,
) -> str:
    """YAML text of ``node``'s relay config: ``render_node_mapping`` dumped, keys in order.

    Same arguments, contract and errors as ``render_node_mapping``.
    """
    return _dump(render_node_mapping(config_data, node, peers, version, base_dir))


def render_node_mapping(
    config_data: str,
    node: FleetNode,
    peers: Sequence[FleetNode],
    version: int,
    base_dir: str = DEFAULT_BASE_DIR,
) -> dict[str, Any]:
    """``node``'s relay config as plain data (gost-style keys), ready for ``yaml.safe_dump``.

    ``config_data`` is the YAML of the config version (generic for the node type), ``peers``
    the inventory to chain to (any order; may include ``node`` itself and nodes of any type or
    status), ``version`` the config version (>= 0), ``base_dir`` the relay's config directory
    on the target host (default ``/etc/aicdn``). See the module docstring for what is filled in.

    The result is fresh data (no aliasing of the input) and passes the relay's checker
    (certificate files are not looked for). Raises ``ConfigError`` listing every problem:
    bad YAML (path ``config_data``), a bad node or argument (``node.name``,
    ``node.metadata.cert_file``, ``version``, ``base_dir``), a ``peers`` spec that is malformed or
    has nothing to chain to (``chains[i].hops[j].peers...``), or whatever the checker refuses in
    the rendered config (its own paths).
    """
    issues = _check_args(node, version, base_dir)
    try:
        data = _parse(config_data)
    except ConfigError as exc:
        raise ConfigError([*issues, *exc.issues]) from None
    _expand_peers(data, node, peers, issues)
    files = _node_files(node, base_dir, issues)
    for tls in _tls_blocks(data):
        for key, file_path in files.items():
            if tls.get(key) == NODE_PLACEHOLDER:
                tls[key] = file_path
    for path, _ in _placeholders(data, ""):
        issues.append(
            ConfigIssue(
                path,
                f"the {NODE_PLACEHOLDER} placeholder is only understood as certFile, keyFile or "
                "caFile of a tls block",
            )
        )
    if issues:
        raise ConfigError(issues)
    data["version"] = version
    config_from_mapping(data, base_dir=base_dir, check_files=False)
    return data


def check_config_data(config_data: str, node_type: str, base_dir: str = DEFAULT_BASE_DIR) -> None:
    """Check a config version's ``config_data`` for ``node_type`` before any node exists.

    Renders it for a stand-in node of that type with one stand-in online peer of every type
    its ``peers`` hops name, so everything but the inventory is checked: YAML, schema, peers
    specs, placeholders. For the master's draft validation. Raises ``ConfigError`` as
    ``render_node_mapping`` does (``node_type`` for an unknown type); returns None when fine.
    """
    if node_type not in NODE_TYPES:
        raise ConfigError.single(
            "node_type", f"unknown node type {_show(node_type)}; expected one of edge, core"
        )
    kind: NodeType = "edge" if node_type == "edge" else "core"
    peer_types = sorted(
        {
            spec["type"]
            for _, hop in _hops(_parse(config_data))
            if isinstance(spec := hop.get("peers"), dict) and spec.get("type") in NODE_TYPES
        }
    )
    stand_in = FleetNode("stand-in", f"{kind}-stand-in", kind, "any", f"{kind}.invalid", 1)
    stand_in_peers = [
        FleetNode(f"peer-{t}", f"{t}-peer-stand-in", t, "any", f"{t}-peer.invalid", 1)
        for t in peer_types
    ]
    render_node_mapping(config_data, stand_in, stand_in_peers, 0, base_dir)


def peer_types(config_data: str) -> frozenset[str]:
    """Node types that ``config_data``'s ``peers`` hops chain to (``{"core"}`` for the edge
    template): whose inventory changes alter what this version renders. Unparsable YAML or
    malformed hops count as none (the checker reports them elsewhere)."""
    try:
        data = _parse(config_data)
    except ConfigError:
        return frozenset()
    return frozenset(
        spec["type"]
        for _, hop in _hops(data)
        if isinstance(spec := hop.get("peers"), dict) and spec.get("type") in NODE_TYPES
    )


_NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_args(node: FleetNode, version: int, base_dir: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    # The name becomes a file name ({base_dir}/tls/{name}.pem): no separators, no "..".
    if not isinstance(node.name, str) or not _NODE_NAME_RE.fullmatch(node.name):
        issues.append(
            ConfigIssue(
                "node.name",
                f"{_show(node.name)} is not a node name (letters, digits, '_', '.', '-'; "
                "starting with a letter or digit)",
            )
        )
    if node.type not in NODE_TYPES:
        issues.append(ConfigIssue("node.type", f"unknown node type {_show(node.type)}"))
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        issues.append(ConfigIssue("version", f"expected an integer >= 0, got {_seen(version)}"))
    if not isinstance(base_dir, str) or not base_dir:
        issues.append(ConfigIssue("base_dir", f"expected a directory path, got {_seen(base_dir)}"))
    return issues


#: Bounds on config_data once YAML aliases are expanded: a few hundred values is typical.
_MAX_VALUES = 100_000
_MAX_DEPTH = 64


def _parse(config_data: str) -> dict[str, Any]:
    """config_data as fresh, alias-free plain data (a mapping), or ``ConfigError``."""
    if not isinstance(config_data, str):
        raise ConfigError.single("config_data", f"expected YAML text, got {_kind(config_data)}")
    data = _load(config_data)
    if not isinstance(data, dict):
        raise ConfigError.single(
            "config_data",
            f"the config must be a mapping of sections (services, chains, ...), got {_kind(data)}",
        )
    budget = [_MAX_VALUES]
    fresh: dict[str, Any] = _fresh(data, 0, budget)
    return fresh


@functools.lru_cache(maxsize=16)
def _load(config_data: str) -> Any:
    """The YAML of a config version, parsed once per process: a version's content never
    changes, and a publish renders it for every node of its type (parsing was a third of a
    render). Callers never mutate the result; ``_fresh`` copies it. Errors are not cached."""
    try:
        data = yaml.load(config_data, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError((_yaml_issue("config_data", config_data, exc),)) from None
    except RecursionError:
        raise ConfigError.single("config_data", "YAML nested too deeply") from None
    return {} if data is None else data


def _fresh(value: Any, depth: int, budget: list[int]) -> Any:
    """A deep copy that shares nothing (YAML aliases become copies), within fixed bounds so
    an alias bomb or a self-referencing document is refused rather than expanded."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise ConfigError.single(
            "config_data", "too large or nested too deeply once YAML aliases are expanded"
        )
    if isinstance(value, dict):
        return {key: _fresh(item, depth + 1, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [_fresh(item, depth + 1, budget) for item in value]
    return value


def _hops(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, hop) of every well-formed hop; malformed ones are left to the checker."""
    chains = data.get("chains")
    if not isinstance(chains, list):
        return
    for i, chain in enumerate(chains):
        hops = chain.get("hops") if isinstance(chain, dict) else None
        if not isinstance(hops, list):
            continue
        for j, hop in enumerate(hops):
            if isinstance(hop, dict):
                yield f"chains[{i}].hops[{j}]", hop


_PEERS_KEYS = ("type", "port", "metadataPort", "connector", "dialer")
#: Dialers that do TLS and therefore need the peer's name.
_TLS_DIALERS = ("tls", "wss", "mtls", "quic")


def _expand_peers(
    data: dict[str, Any], node: FleetNode, peers: Sequence[FleetNode], issues: list[ConfigIssue]
) -> None:
    """Replace every hop's ``peers`` with chain nodes (before its explicit ``nodes``)."""
    for hop_path, hop in _hops(data):
        if "peers" not in hop:
            continue
        path = f"{hop_path}.peers"
        spec = _peers_spec(hop.pop("peers"), path, issues)
        explicit = hop.get("nodes")
        if explicit is None:
            explicit = []
        elif not isinstance(explicit, list):
            issues.append(
                ConfigIssue(f"{hop_path}.nodes", f"expected a list, got {_kind(explicit)}")
            )
            continue
        if spec is None:
            continue
        nodes = [
            _peer_node(spec, path, node, peer, issues)
            for peer in _eligible(node, peers, spec["type"])
        ]
        if not nodes and not explicit:
            issues.append(ConfigIssue(path, f"no online {spec['type']} node to chain to"))
            continue
        hop["nodes"] = nodes + explicit


def _peers_spec(spec: Any, path: str, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    """The ``peers`` spec if well-formed, else None after reporting every problem in it."""
    if not isinstance(spec, dict):
        issues.append(
            ConfigIssue(path, f"expected a mapping ({', '.join(_PEERS_KEYS)}), got {_kind(spec)}")
        )
        return None
    found: list[ConfigIssue] = []
    for key in spec:
        if key not in _PEERS_KEYS:
            found.append(
                ConfigIssue(
                    f"{path}.{key}",
                    f"unknown key {_show(key)}; expected one of {', '.join(_PEERS_KEYS)}",
                )
            )
    if spec.get("type") not in NODE_TYPES:
        found.append(
            ConfigIssue(
                f"{path}.type",
                f"expected the peers' node type, one of edge, core; got {_seen(spec.get('type'))}",
            )
        )
    port = spec.get("port")
    if port is not None and not (
        isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
    ):
        found.append(ConfigIssue(f"{path}.port", f"expected a port 1-65535, got {_seen(port)}"))
    key = spec.get("metadataPort")
    if key is not None and not (isinstance(key, str) and key):
        found.append(
            ConfigIssue(f"{path}.metadataPort", f"expected a metadata key, got {_seen(key)}")
        )
    for section, inner in (("connector", "auth"), ("dialer", "tls")):
        value = spec.get(section)
        if value is not None and not isinstance(value, dict):
            found.append(
                ConfigIssue(f"{path}.{section}", f"expected a mapping, got {_kind(value)}")
            )
        elif isinstance(value, dict) and not isinstance(value.get(inner), dict | None):
            found.append(
                ConfigIssue(
                    f"{path}.{section}.{inner}", f"expected a mapping, got {_kind(value[inner])}"
                )
            )
    issues.extend(found)
    return None if found else spec


def _eligible(node: FleetNode, peers: Sequence[FleetNode], peer_type: str) -> list[FleetNode]:
    """Peers to chain to, best first (see the module docstring); duplicates (by id) once."""
    ranked: dict[str, tuple[int, str, str, FleetNode]] = {}
    for peer in peers:
        if peer.type != peer_type or peer.id == node.id or peer.status not in PEER_STATUSES:
            continue
        rank = (0 if peer.region == node.region else 2) + PEER_STATUSES.index(peer.status)
        ranked.setdefault(peer.id, (rank, str(peer.name), peer.id, peer))
    return [entry[3] for entry in sorted(ranked.values(), key=lambda entry: entry[:3])]


def _peer_node(
    spec: dict[str, Any], path: str, node: FleetNode, peer: FleetNode, issues: list[ConfigIssue]
) -> dict[str, Any]:
    """The chain node dialling ``peer`` (problems with the peer's own data are reported)."""
    what = f"{peer.type} node {_show(peer.name)}"
    port = spec.get("port") or peer.port
    port_path = f"{path}.port"
    key = spec.get("metadataPort")
    if key is not None and peer.metadata.get(key) is not None:
        port, port_path = peer.metadata[key], f"{path}.metadataPort"
        what = f"{what} metadata.{key}"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        issues.append(ConfigIssue(port_path, f"{what} has port {_seen(port)}; expected 1-65535"))
        port = 1
    host = peer.addr if isinstance(peer.addr, str) else ""
    if not host:
        issues.append(ConfigIssue(path, f"{peer.type} node {_show(peer.name)} has no addr"))
    host = host.removeprefix("[").removesuffix("]")
    out: dict[str, Any] = {
        "name": peer.name,
        "addr": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
    }
    connector = copy.deepcopy(spec.get("connector")) or {"type": "relay"}
    auth = connector.get("auth")
    if isinstance(auth, dict) and auth.get("username") is None:
        rest = {key: item for key, item in auth.items() if key != "username"}
        connector["auth"] = {"username": node.name, **rest}
    out["connector"] = connector
    dialer = copy.deepcopy(spec.get("dialer")) or {"type": "tcp"}
    if dialer.get("type") in _TLS_DIALERS:
        tls = dialer.get("tls")
        if tls is None:
            dialer["tls"] = {"serverName": host}
        elif not tls.get("serverName"):
            tls["serverName"] = host
    out["dialer"] = dialer
    return out


def _tls_blocks(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every tls block that may hold ``@node``: the top-level one, listeners', chain nodes'
    dialers' (peers are expanded by then). Malformed sections are left to the checker."""

    def sub(value: Any, *keys: str) -> Any:
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    services = data.get("services")
    blocks = [data.get("tls"), sub(data, "api", "tls"), sub(data, "metrics", "tls")]
    blocks += [sub(s, "listener", "tls") for s in _as_list(services)]
    for _, hop in _hops(data):
        blocks += [sub(n, "dialer", "tls") for n in _as_list(hop.get("nodes"))]
    yield from (block for block in blocks if isinstance(block, dict))


#: tls key -> (node.metadata key, default path under base_dir; {name} is the node's name).
_NODE_FILES = {
    "certFile": ("cert_file", "tls/{name}.pem"),
    "keyFile": ("key_file", "tls/{name}.key"),
    "caFile": ("ca_file", "tls/ca.pem"),
}


def _node_files(node: FleetNode, base_dir: str, issues: list[ConfigIssue]) -> dict[str, str]:
    """tls key -> this node's file; a bad metadata path is reported (and the default used, so
    the problem is reported once, not once per tls block)."""
    files: dict[str, str] = {}
    for key, (meta_key, default) in _NODE_FILES.items():
        given = node.metadata.get(meta_key)
        if isinstance(given, str) and given:
            files[key] = given
            continue
        if given is not None:
            issues.append(
                ConfigIssue(
                    f"node.metadata.{meta_key}", f"expected a file path, got {_seen(given)}"
                )
            )
        base = base_dir if isinstance(base_dir, str) else ""  # a bad one is reported already
        files[key] = posixpath.join(base, default.format(name=node.name))
    return files


def _placeholders(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every ``@node`` string left in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _placeholders(item, f"{path}[{index}]")
    elif value == NODE_PLACEHOLDER:
        yield path, value


# ----------------------------------------------------------------------------------------------
# Helpers


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# libyaml's emitter when PyYAML has it (the wheels do): dumping was half of a render.
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Safe dumper that never writes anchors: rendered files are read by people too."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _seen(value: object) -> str:
    """``integer 0``, ``string 'x'``, ``null``: what was given, for messages."""
    return "null" if value is None else f"{_kind(value)} {_show(value)}"
