#!/usr/bin/env bash
# Install what the benchmark compares against: nginx, haproxy and wrk from Debian, pproxy from PyPI.
# Run as root (or with sudo) from the repository root: bash bench/setup.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

missing=()
for tool in nginx haproxy wrk; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    # nginx-light: the small nginx build (proxy, upstream keep-alive); the bench starts its own
    # instances on loopback, so the packaged service is not needed (stop it if the package
    # started one: the bench never uses its port).
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nginx-light haproxy wrk
fi

if ! "$PY" -c 'import pproxy' 2>/dev/null; then
    "$PY" -m pip install pproxy
fi
echo "bench prerequisites ready: nginx haproxy wrk pproxy"
