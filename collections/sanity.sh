#!/usr/bin/env bash
# ansible-test sanity on a staged copy of the aicdn.tunnel collection, without containers
# (--local). Every test runs except changelog (no antsibull-changelog fragments here); the tools
# the tests need are installed by ansible-test into its own venvs from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dest="$stage/ansible_collections/aicdn/tunnel"
mkdir -p "$dest"
cp -rL collections/ansible_collections/aicdn/tunnel/. "$dest/"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
python="$(command -v python3.11 || command -v python3)"
# ansible-test bootstraps pip in its venvs with a get-pip.py it downloads from a host other than
# PyPI, which is unreachable here: stand in for it with the interpreter's own ensurepip, then
# let pip install what ansible-test asks for from the configured package index.
for version in 24.2 "${AICDN_GET_PIP_VERSION:-}"; do
  [ -n "$version" ] || continue
  shim="$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
  if [ ! -s "$shim" ]; then
    mkdir -p "$(dirname "$shim")"
    cat >"$shim" <<'PY'
"""Offline stand-in for get-pip.py (written by aicdn collections/sanity.sh)."""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ansible-test runs pip without the user's pip config: give the venv the system CA bundle and
# the machine's pip settings as its site config.
conf = ["[global]"]
if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
    conf.append("cert = /etc/ssl/certs/ca-certificates.crt")
with open(os.path.join(sys.prefix, "pip.conf"), "w") as stream:
    stream.write("\n".join(conf) + "\n")
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
cert = ["--cert", "/etc/ssl/certs/ca-certificates.crt"] if len(conf) > 1 else []
subprocess.check_call([sys.executable, "-m", "pip", "install", *cert, *args])
PY
  fi
done
cd "$dest"
skip=(${AICDN_SANITY_SKIP:-changelog})
args=()
for test in "${skip[@]}"; do args+=(--skip-test "$test"); done
ansible-test sanity --local --python "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" "${args[@]}" "$@"
