"""gost-style command line shorthand: ``-L`` services and ``-F`` chain nodes as URLs (DESIGN §3.1).

URL form: ``scheme://[user[:pass]@]host:port[/target[,target...]][?key=value&...]``.

``-L`` (one service each):

* ``scheme`` is ``handler+transport`` (``relay+quic``), or one word: a transport (``tcp``,
  ``tls``, ``ws``, ``wss``, ``mtcp``, ``mtls``, ``quic``) means the ``forward`` handler when a
  target is given and ``http`` otherwise (``http3`` is always ``http``); a handler (``http``,
  ``relay``, ``forward``) means transport ``tcp``.
* ``/target`` becomes the forwarder (``relay://:8443/127.0.0.1:8000`` is a relay server that
  only reaches 127.0.0.1:8000); ``user:pass@`` the handler's auth.
* query: ``path``, ``keepalive`` (listener); ``certFile``, ``keyFile``, ``caFile`` (listener
  TLS); ``ttfbTimeout``, ``idleTimeout``, ``totalTimeout``, ``keepaliveTimeout``,
  ``retryBuffer``, ``maxHeaderSize``, ``maxBodySize``, ``headerTimeout``, ``sseHeartbeat``
  (handler); ``bufferSize`` (service).

``-F`` (one hop each, in order, of the single chain ``chain-0`` that every service uses):

* ``scheme`` is ``relay+transport`` or one word (``relay`` = relay over tcp; a transport =
  relay over it); ``user:pass@`` becomes the connector's auth.
* query: ``path``, ``host``, ``keepalive``, ``timeout`` (dialer); ``serverName``,
  ``insecureSkipVerify``, ``caFile``, ``certFile``, ``keyFile`` (dialer TLS).

The URLs become a gost-style mapping that goes through ``config_from_mapping``, so validation
is exactly that of a config file. Issues are reported against the flag that caused them:
``-L[0]`` for the URL itself, ``-L[0].listener.type`` for a field it produced, ``-F[1].dialer``
for the second ``-F``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl, unquote

from relay.config.errors import ConfigError, ConfigIssue
from relay.config.loader import _show, config_from_mapping
from relay.config.model import DIALER_TYPES, HANDLER_TYPES, LISTENER_TYPES, RelayConfig

__all__ = ["CHAIN_NAME", "config_from_urls"]

#: Name of the chain built from the ``-F`` URLs.
CHAIN_NAME = "chain-0"

_URL_FORM = "scheme://[user:pass@]host:port[/target][?key=value]"

# Query parameter -> where it goes. Integer and boolean parameters are converted from their
# text here; everything else is passed on as text for the loader to check like a file value.
_LISTENER_META = ("path", "keepalive")
_TLS_FILES = ("certFile", "keyFile", "caFile")
_HANDLER_META = (
    "ttfbTimeout",
    "idleTimeout",
    "totalTimeout",
    "keepaliveTimeout",
    "retryBuffer",
    "maxHeaderSize",
    "sseHeartbeat",
    "maxBodySize",
    "headerTimeout",
)
_SERVICE_META = ("bufferSize",)
_DIALER_META = ("path", "host", "keepalive", "timeout")
_DIALER_TLS = ("serverName", "insecureSkipVerify", *_TLS_FILES)
_INT_PARAMS = ("retryBuffer", "maxHeaderSize", "bufferSize", "maxBodySize")
_BOOL_PARAMS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class _URLError(ValueError):
    """A URL that cannot be turned into a mapping; the message names what is wrong."""


class _URL:
    """The parts of one shorthand URL (no validation of the values beyond the shape)."""

    def __init__(self, text: str) -> None:
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme:
            raise _URLError(f"bad URL {_show(text)}: expected {_URL_FORM}")
        rest, _, _fragment = rest.partition("#")
        rest, _, query = rest.partition("?")
        netloc, _, target = rest.partition("/")
        userinfo, at, hostport = netloc.rpartition("@")
        if not hostport:
            raise _URLError(f"bad URL {_show(text)}: no host:port")
        self.scheme = scheme.lower()
        self.hostport = hostport
        self.user: str | None = None
        self.password = ""
        if at:
            user, _, password = userinfo.partition(":")
            self.user, self.password = unquote(user), unquote(password)
        self.targets = target.split(",") if target else []
        if any(not t for t in self.targets):
            raise _URLError(f"bad URL {_show(text)}: empty target in {_show(target)}")
        self.query: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in self.query:
                raise _URLError(f"query parameter {_show(key)} given more than once")
            self.query[key] = value


def config_from_urls(listen: Sequence[str], forward: Sequence[str] = ()) -> RelayConfig:
    """A ``RelayConfig`` from ``-L`` URLs (services) and ``-F`` URLs (hops of one chain).

    Raises ``ConfigError`` with every problem found; paths name the flag (``-L[0]``,
    ``-F[1].dialer.type``) rather than the generated mapping. URLs that cannot be read are
    reported and left out, and the rest are still validated, so one run lists everything.
    """
    issues: list[ConfigIssue] = []
    chained = bool(forward)
    services = _parse_all("-L", listen, lambda text, i: _service(text, i, chained), issues)
    hops = _parse_all("-F", forward, _hop, issues)
    data: dict[str, object] = {"services": [mapping for _, mapping in services]}
    if forward:
        data["chains"] = [{"name": CHAIN_NAME, "hops": [mapping for _, mapping in hops]}]
    flags = _Flags([index for index, _ in services], [index for index, _ in hops])
    url_errors = bool(issues)
    try:
        config = config_from_mapping(data)
    except ConfigError as exc:
        for issue in map(flags.issue, exc.issues):
            # An empty -L/-F list caused by unreadable URLs is not a problem of its own.
            if not (url_errors and issue.path in ("-L", "-F")):
                issues.append(issue)
        raise ConfigError(issues) from None
    if issues:
        raise ConfigError(issues)
    return config


def _parse_all(
    flag: str,
    urls: Sequence[str],
    parse: Callable[[object, int], dict[str, object]],
    issues: list[ConfigIssue],
) -> list[tuple[int, dict[str, object]]]:
    """(flag index, mapping) of each URL that could be read; the others go to ``issues``."""
    out: list[tuple[int, dict[str, object]]] = []
    for index, text in enumerate(urls):
        try:
            out.append((index, parse(text, index)))
        except _URLError as exc:
            issues.append(ConfigIssue(f"{flag}[{index}]", str(exc)))
    return out


def _service(text: object, index: int, chained: bool) -> dict[str, object]:
    if not isinstance(text, str):
        raise _URLError(f"expected a URL string, got {type(text).__name__}")
    url = _URL(text)
    handler_type, transport = _listen_scheme(url)
    query = dict(url.query)
    listener: dict[str, object] = {"type": transport}
    listener_meta = _pick(query, _LISTENER_META)
    if listener_meta:
        listener["metadata"] = listener_meta
    tls = _pick(query, _TLS_FILES)
    if tls:
        listener["tls"] = tls
    handler: dict[str, object] = {"type": handler_type}
    if chained:
        handler["chain"] = CHAIN_NAME
    if url.user is not None:
        handler["auth"] = {"username": url.user, "password": url.password}
    handler_meta = _pick(query, _HANDLER_META)
    if handler_meta:
        handler["metadata"] = handler_meta
    service: dict[str, object] = {
        "name": f"service-{index}",
        "addr": url.hostport,
        "listener": listener,
        "handler": handler,
    }
    if url.targets:
        nodes = [{"name": f"target-{i}", "addr": t} for i, t in enumerate(url.targets)]
        service["forwarder"] = {"nodes": nodes}
    service_meta = _pick(query, _SERVICE_META)
    if service_meta:
        service["metadata"] = service_meta
    _reject_rest(query, (*_LISTENER_META, *_TLS_FILES, *_HANDLER_META, *_SERVICE_META))
    return service


def _listen_scheme(url: _URL) -> tuple[str, str]:
    """(handler, transport) of a ``-L`` scheme; two-part schemes are checked by the loader."""
    first, plus, second = url.scheme.partition("+")
    if plus:
        if "+" in second:
            raise _URLError(f"bad scheme {_show(url.scheme)}: expected handler+transport")
        return first, second
    if first == "http3":
        return "http", "http3"
    if first in LISTENER_TYPES:
        return ("forward" if url.targets else "http"), first
    if first in HANDLER_TYPES:
        return first, "tcp"
    raise _URLError(
        f"unknown scheme {_show(url.scheme)}; expected handler+transport, a handler "
        f"({', '.join(HANDLER_TYPES)}) or a transport ({', '.join(LISTENER_TYPES)})"
    )


def _hop(text: object, index: int) -> dict[str, object]:
    if not isinstance(text, str):
        raise _URLError(f"expected a URL string, got {type(text).__name__}")
    url = _URL(text)
    if url.targets:
        raise _URLError(f"a -F node takes no target path: {_show('/'.join(url.targets))}")
    connector_type, dialer_type = _forward_scheme(url)
    query = dict(url.query)
    connector: dict[str, object] = {"type": connector_type}
    if url.user is not None:
        connector["auth"] = {"username": url.user, "password": url.password}
    dialer: dict[str, object] = {"type": dialer_type}
    dialer_meta = _pick(query, _DIALER_META)
    if dialer_meta:
        dialer["metadata"] = dialer_meta
    tls = _pick(query, _DIALER_TLS)
    if tls:
        dialer["tls"] = tls
    _reject_rest(query, (*_DIALER_META, *_DIALER_TLS))
    node = {"name": f"node-{index}", "addr": url.hostport, "connector": connector, "dialer": dialer}
    return {"name": f"hop-{index}", "nodes": [node]}


def _forward_scheme(url: _URL) -> tuple[str, str]:
    """(connector, dialer) of a ``-F`` scheme; two-part schemes are checked by the loader."""
    first, plus, second = url.scheme.partition("+")
    if plus:
        if "+" in second:
            raise _URLError(f"bad scheme {_show(url.scheme)}: expected connector+transport")
        return first, second
    if first == "relay":
        return "relay", "tcp"
    if first in DIALER_TYPES:
        return "relay", first
    raise _URLError(
        f"unknown scheme {_show(url.scheme)}; expected relay+transport, relay or a transport "
        f"({', '.join(DIALER_TYPES)})"
    )


def _pick(query: dict[str, str], keys: Sequence[str]) -> dict[str, object]:
    """Remove ``keys`` from ``query``, converting integer and boolean parameters."""
    out: dict[str, object] = {}
    for key in keys:
        if key in query:
            out[key] = _convert(key, query.pop(key))
    return out


def _convert(key: str, value: str) -> object:
    if key in _INT_PARAMS and re.fullmatch(r"[0-9]+", value):
        return int(value)
    if key == "insecureSkipVerify":
        return _BOOL_PARAMS.get(value.lower(), value)  # unknown words: the loader reports them
    return value


def _reject_rest(query: dict[str, str], allowed: Sequence[str]) -> None:
    if query:
        unknown = ", ".join(sorted(query))
        raise _URLError(
            f"unknown query parameter(s) {unknown}; expected one of {', '.join(allowed)}"
        )


class _Flags:
    """Maps paths of the generated mapping back to the flag (and its index) they came from."""

    _SERVICE = re.compile(r"^services\[(\d+)\]")
    # One node per hop, so a node path is reported as its hop's flag.
    _HOP = re.compile(r"^chains\[0\]\.hops\[(\d+)\](?:\.nodes\[0\])?")

    def __init__(self, services: list[int], hops: list[int]) -> None:
        self.services = services
        self.hops = hops

    #: Paths quoted inside messages ("first at services[0]") are mapped as well.
    _QUOTED = re.compile(r"\b(?:services|chains\[0\]\.hops)\[\d+\](?:\.nodes\[0\])?")

    def issue(self, issue: ConfigIssue) -> ConfigIssue:
        message = self._QUOTED.sub(lambda m: self.path(m[0]), issue.message)
        return ConfigIssue(self.path(issue.path), message)

    def path(self, path: str) -> str:
        if match := self._SERVICE.match(path):
            return f"-L[{self.services[int(match[1])]}]{path[match.end() :]}"
        if match := self._HOP.match(path):
            return f"-F[{self.hops[int(match[1])]}]{path[match.end() :]}"
        if path == "services":
            return "-L"
        if path.startswith("chains[0].hops"):
            return "-F" + path.removeprefix("chains[0].hops")
        return path
