"""Contenders: what sits between the client and the origin, with generated configs.

Each contender is started fresh from configs written to its own temp directory, on loopback
ephemeral ports, and exposes one entry port that speaks HTTP/1.1 towards the origin. Every proxy
runs as one process (one nginx worker, one haproxy thread, one relay process) per hop, so the
comparison is per core. ``Running.pids()`` includes worker processes for CPU and RSS accounting.

Adding QUIC between relay hops: ``relay-2hop-quic`` is already declared; it is skipped with the
relay's own start-up error for as long as the relay refuses ``quic`` listeners. Once QUIC lands
it runs with no change here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.pki import Pki, make_pki
from bench.procs import Proc
from bench.system import descendants, free_port, http_get, wait_http_ok, wait_listening

APT_HINT = "apt-get install -y nginx-light haproxy wrk   (or: bash bench/setup.sh)"
#: ``maxStreams`` for QUIC hops: above the most streams any scenario holds (fd limit / 2).
QUIC_MAX_STREAMS = 65536
RELAY_AUTH = {"username": "bench-edge", "password": "bench-secret"}


class StartError(Exception):
    """A contender could not be started; the message says why (log tail included)."""


@dataclass
class Env:
    """What every contender start needs: where to write, where the origin listens."""

    workdir: Path
    origin_port: int
    fd_limit: int
    python: str = sys.executable
    _pki: Pki | None = None

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            pki_dir = self.workdir / "pki"
            pki_dir.mkdir(exist_ok=True)
            self._pki = make_pki(pki_dir)
        return self._pki


@dataclass
class Running:
    """A started contender: its entry port and the processes behind it (entry hop first)."""

    name: str
    port: int
    procs: list[Proc] = field(default_factory=list)
    #: Relay only: rewrites each config file with a new ``version`` and sends SIGHUP.
    reloader: Callable[[int], None] | None = None
    #: Relay only: metrics ports, to read ``aicdn_config_version`` back.
    metrics_ports: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return descendants([p.pid for p in self.procs])

    def dead(self) -> str | None:
        """None while every process runs, else which one exited (with its log tail)."""
        for proc in self.procs:
            if not proc.alive():
                return f"{proc.name} exited ({proc.popen.returncode}): {proc.log_tail()}"
        return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str
    hops: int
    variant: str
    description: str
    #: Relay only: ``workers`` of each relay process (the edge and the core).
    workers: int = 1

    def missing(self) -> str | None:
        """What must be installed before this contender can run, or None."""
        return MISSING[self.kind](self)

    def start(self, env: Env, tag: str) -> Running:
        directory = env.workdir / f"{self.name}-{tag}"
        directory.mkdir(parents=True, exist_ok=True)
        running = STARTERS[self.kind](self, env, directory)
        try:
            if self.kind != "direct":
                wait_http_ok(running.port, "/healthz", 20, lambda: running.dead() is None)
        except (TimeoutError, ChildProcessError) as exc:
            time.sleep(0.2)  # let a dying process finish writing its error
            why = running.dead() or f"not ready: {exc}"
            running.stop()
            raise StartError(why) from None
        return running


# --- direct -------------------------------------------------------------------------------------


def _start_direct(contender: Contender, env: Env, directory: Path) -> Running:
    return Running(contender.name, env.origin_port)


# --- the relay ----------------------------------------------------------------------------------


def _relay_process(
    name: str, config: dict[str, Any], env: Env, directory: Path, workers: int = 1
) -> tuple[Proc, int, Callable[[int], None]]:
    api, metrics = free_port(), free_port()
    config = {
        **config,
        **({"workers": workers} if workers > 1 else {}),
        "log": {"level": "warn"},
        "shutdownTimeout": "1s",
        "api": {"addr": f"127.0.0.1:{api}"},
        "metrics": {"addr": f"127.0.0.1:{metrics}", "path": "/metrics"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = Proc(name, [env.python, "-m", "relay", "run", "-C", str(path)], directory)

    def reload(version: int) -> None:
        path.write_text(yaml.safe_dump({**config, "version": version}, sort_keys=False))
        proc.signal(1)  # SIGHUP

    try:
        wait_http_ok(api, "/healthz", 20, proc.alive)
    except (TimeoutError, ChildProcessError) as exc:
        time.sleep(0.2)
        alive = proc.alive()
        proc.stop()
        if alive:
            raise StartError(f"{name} not ready: {exc}: {proc.log_tail()}") from None
        raise StartError(f"{name} exited: {proc.log_tail(1)}") from None
    return proc, metrics, reload


def _tls_listener(env: Env) -> dict[str, str]:
    return {"certFile": str(env.pki.cert_file), "keyFile": str(env.pki.key_file)}


def _start_relay(contender: Contender, env: Env, directory: Path) -> Running:
    origin = {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{env.origin_port}"}]}
    entry = free_port()
    edge_service: dict[str, Any] = {
        "name": "edge",
        "addr": f"127.0.0.1:{entry}",
        "listener": {"type": "tcp"},
        "handler": {"type": "http"},
    }
    running = Running(contender.name, entry)
    reloaders: list[Callable[[int], None]] = []
    try:
        if contender.hops == 2:
            transport = contender.variant
            core_port = free_port()
            listener: dict[str, Any] = {"type": transport}
            dialer: dict[str, Any] = {"type": transport}
            if transport in ("tls", "wss", "mtls", "quic"):
                listener["tls"] = _tls_listener(env)
                dialer["tls"] = {"caFile": str(env.pki.ca_file), "serverName": "localhost"}
            if transport in ("ws", "wss"):
                listener["metadata"] = {"path": "/tunnel"}
                dialer["metadata"] = {"path": "/tunnel"}
            if transport == "quic":
                # One QUIC connection carries every tunnel: allow as many concurrent streams as
                # the largest scenario opens (the relay's default is 1,024).
                listener["metadata"] = {"maxStreams": QUIC_MAX_STREAMS}
                dialer["metadata"] = {"maxStreams": QUIC_MAX_STREAMS}
            core = {
                "services": [
                    {
                        "name": "core",
                        "addr": f"127.0.0.1:{core_port}",
                        "listener": listener,
                        "handler": {"type": "relay", "auth": dict(RELAY_AUTH)},
                        "forwarder": origin,
                    }
                ]
            }
            core_proc, core_api, core_reload = _relay_process(
                "core", core, env, directory, contender.workers
            )
            running.procs.append(core_proc)
            running.metrics_ports.append(core_api)
            reloaders.append(core_reload)
            edge_service["handler"]["chain"] = "to-core"
            node = {
                "name": "core-1",
                "addr": f"127.0.0.1:{core_port}",
                "connector": {"type": "relay", "auth": dict(RELAY_AUTH)},
                "dialer": dialer,
            }
            edge = {
                "services": [edge_service],
                "chains": [{"name": "to-core", "hops": [{"name": "core", "nodes": [node]}]}],
            }
        else:
            edge_service["forwarder"] = origin
            edge = {"services": [edge_service]}
        edge_proc, edge_api, edge_reload = _relay_process(
            "edge", edge, env, directory, contender.workers
        )
    except StartError:
        running.stop()
        raise
    running.procs.insert(0, edge_proc)
    running.metrics_ports.insert(0, edge_api)
    reloaders.insert(0, edge_reload)

    def reload_all(version: int) -> None:
        for reload in reloaders:
            reload(version)

    running.reloader = reload_all
    return running


def relay_config_versions(running: Running) -> list[int]:
    """``aicdn_config_version`` of each relay process of ``running`` (-1 when unreadable)."""
    versions = []
    for port in running.metrics_ports:
        value = -1
        try:
            for line in http_get(port, "/metrics").decode().splitlines():
                if line.startswith("aicdn_config_version"):
                    value = int(float(line.rsplit(" ", 1)[1]))
        except (OSError, ValueError):
            pass
        versions.append(value)
    return versions


def _missing_relay(contender: Contender) -> str | None:
    return None


# --- nginx --------------------------------------------------------------------------------------

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fd};
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {conns};
}}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream up {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def _nginx_instance(name: str, port: int, upstream: int, env: Env, directory: Path) -> Proc:
    home = directory / name
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            fd=env.fd_limit,
            conns=env.fd_limit - 100,
            user="user root;" if os.geteuid() == 0 else "",
            dir=home,
            upstream=upstream,
            port=port,
        )
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return Proc(
        name, [nginx, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")], directory
    )


def _start_chain(
    contender: Contender,
    env: Env,
    directory: Path,
    instance: Callable[[str, int, int, Env, Path], Proc],
) -> Running:
    """``hops`` instances in a row, the last one in front of the origin."""
    ports = [free_port() for _ in range(contender.hops)]
    upstreams = [*ports[1:], env.origin_port]
    running = Running(contender.name, ports[0])
    names = ["edge", "core"] if contender.hops == 2 else ["edge"]
    # From the origin side outwards, each listening before the next starts: no hop ever
    # sees its upstream refuse (which would only add noise to the error logs).
    hops = list(zip(names, ports, upstreams, strict=True))
    for name, port, upstream in reversed(hops):
        proc = instance(name, port, upstream, env, directory)
        running.procs.insert(0, proc)
        try:
            wait_listening(port, 20, proc.alive)
        except (TimeoutError, ChildProcessError):
            break  # Contender.start reports it, with the log tail
    return running


def _start_nginx(contender: Contender, env: Env, directory: Path) -> Running:
    return _start_chain(contender, env, directory, _nginx_instance)


def _missing_binary(binary: str) -> str | None:
    if shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists():
        return None
    return f"{binary} not installed: {APT_HINT}"


# --- haproxy ------------------------------------------------------------------------------------

_HAPROXY_CONF = """\
global
    maxconn {maxconn}
    nbthread 1
defaults
    mode {mode}
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
{http_options}
frontend fe
    bind 127.0.0.1:{port} backlog 4096
    default_backend be
backend be
    server s1 127.0.0.1:{upstream}
"""

# Keep-alive on both sides (haproxy's default) and no MSG_MORE coalescing, which would hold back
# SSE events: the streaming-friendly settings, as proxy_buffering off is for nginx.
_HAPROXY_HTTP = """\
    timeout http-keep-alive 300s
    option http-keep-alive
    option http-no-delay
    http-reuse always"""


def _haproxy_instance(
    name: str, port: int, upstream: int, env: Env, directory: Path, mode: str
) -> Proc:
    conf = directory / f"{name}.cfg"
    conf.write_text(
        _HAPROXY_CONF.format(
            maxconn=(env.fd_limit - 200) // 2,
            mode=mode,
            http_options=_HAPROXY_HTTP if mode == "http" else "",
            port=port,
            upstream=upstream,
        )
    )
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return Proc(name, [haproxy, "-db", "-f", str(conf)], directory)


def _start_haproxy(contender: Contender, env: Env, directory: Path) -> Running:
    def instance(name: str, port: int, upstream: int, env: Env, directory: Path) -> Proc:
        return _haproxy_instance(name, port, upstream, env, directory, contender.variant)

    return _start_chain(contender, env, directory, instance)


# --- pproxy -------------------------------------------------------------------------------------


def _start_pproxy(contender: Contender, env: Env, directory: Path) -> Running:
    """One hop: an L4 tunnel to the origin. Two hops: the edge tunnels via a socks5 core."""
    entry = free_port()
    target = f"tunnel{{127.0.0.1:{env.origin_port}}}://127.0.0.1:{entry}"
    running = Running(contender.name, entry)
    edge_argv = [env.python, "-m", "bench.pproxy_shim", "-l", target]
    if contender.hops == 2:
        core = free_port()
        running.procs.append(
            Proc(
                "core",
                [env.python, "-m", "bench.pproxy_shim", "-l", f"socks5://127.0.0.1:{core}"],
                directory,
            )
        )
        edge_argv += ["-r", f"socks5://127.0.0.1:{core}"]
    running.procs.insert(0, Proc("edge", edge_argv, directory))
    return running


# --- the minimal Python relay (the yardstick) -------------------------------------------


def _start_minimal(contender: Contender, env: Env, directory: Path) -> Running:
    def instance(name: str, port: int, upstream: int, env: Env, directory: Path) -> Proc:
        argv = [env.python, "-m", "bench.minimal_relay", str(port), str(upstream)]
        return Proc(name, argv, directory)

    return _start_chain(contender, env, directory, instance)


def pproxy_installed() -> bool:
    return importlib.util.find_spec("pproxy") is not None


def install_pproxy() -> str | None:
    """``pip install pproxy`` into this interpreter's environment; None on success."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "pproxy"],
        capture_output=True,
        text=True,
    )
    importlib.invalidate_caches()
    if done.returncode == 0 and pproxy_installed():
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"pip exited {done.returncode}"


def _missing_pproxy(contender: Contender) -> str | None:
    if pproxy_installed():
        return None
    return f"pproxy not installed: {sys.executable} -m pip install pproxy"


# --- the registry -------------------------------------------------------------------------------

STARTERS: dict[str, Callable[[Contender, Env, Path], Running]] = {
    "direct": _start_direct,
    "relay": _start_relay,
    "nginx": _start_nginx,
    "haproxy": _start_haproxy,
    "pproxy": _start_pproxy,
    "minimal": _start_minimal,
}
MISSING: dict[str, Callable[[Contender], str | None]] = {
    "direct": lambda c: None,
    "relay": _missing_relay,
    "nginx": lambda c: _missing_binary("nginx"),
    "haproxy": lambda c: _missing_binary("haproxy"),
    "pproxy": _missing_pproxy,
    "minimal": lambda c: None,
}

CONTENDERS: tuple[Contender, ...] = (
    Contender("direct", "direct", 0, "", "client -> origin, no proxy (the baseline)"),
    Contender("relay-1hop", "relay", 1, "", "relay http service -> origin (forwarder)"),
    Contender("relay-2hop-tcp", "relay", 2, "tcp", "relay edge (http) -> core (relay) over tcp"),
    Contender(
        "relay-2hop-tcp-w2", "relay", 2, "tcp", "as relay-2hop-tcp, each relay with workers: 2", 2
    ),
    Contender(
        "relay-2hop-mtcp", "relay", 2, "mtcp", "relay edge (http) -> core, multiplexed on tcp"
    ),
    Contender("relay-2hop-tls", "relay", 2, "tls", "relay edge (http) -> core (relay) over TLS"),
    Contender(
        "relay-2hop-mtls", "relay", 2, "mtls", "relay edge (http) -> core, multiplexed on TLS"
    ),
    Contender("relay-2hop-wss", "relay", 2, "wss", "relay edge (http) -> core (relay) over wss"),
    Contender("relay-2hop-quic", "relay", 2, "quic", "relay edge (http) -> core over QUIC"),
    Contender("nginx-1hop", "nginx", 1, "", "nginx, proxy_buffering off, upstream keep-alive"),
    Contender("nginx-2hop", "nginx", 2, "", "nginx -> nginx, as above"),
    Contender("haproxy-http-1hop", "haproxy", 1, "http", "haproxy mode http, keep-alive"),
    Contender("haproxy-http-2hop", "haproxy", 2, "http", "haproxy http -> haproxy http"),
    Contender("haproxy-tcp-1hop", "haproxy", 1, "tcp", "haproxy mode tcp"),
    Contender("haproxy-tcp-2hop", "haproxy", 2, "tcp", "haproxy tcp -> haproxy tcp"),
    Contender("pproxy-1hop", "pproxy", 1, "", "pproxy tunnel (L4) -> origin"),
    Contender("pproxy-2hop", "pproxy", 2, "", "pproxy tunnel -> pproxy socks5 -> origin"),
    Contender("minimal-1hop", "minimal", 1, "", "bench/minimal_relay.py: L4 asyncio Protocols"),
    Contender("minimal-2hop", "minimal", 2, "", "minimal relay -> minimal relay -> origin"),
)
BY_NAME = {c.name: c for c in CONTENDERS}


def start_origin(env_python: str, port: int, directory: Path) -> Proc:
    """The LLM-like dev origin, in its own process."""
    proc = Proc(
        "origin",
        [env_python, "-m", "relay", "dev-origin", "--listen", f"127.0.0.1:{port}"],
        directory,
    )
    try:
        wait_http_ok(port, "/healthz", 20, proc.alive)
    except (TimeoutError, ChildProcessError) as exc:
        proc.stop()
        raise StartError(f"dev origin: {exc}: {proc.log_tail()}") from None
    time.sleep(0.05)
    return proc
