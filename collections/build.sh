#!/usr/bin/env bash
# Build the aicdn.tunnel collection artifact (aicdn-tunnel-<version>.tar.gz).
#
# collections/ansible_collections/aicdn/tunnel links the repository's plugins/ and roles/ (one
# copy of the code, which Ansible follows at run time); ansible-galaxy skips links that leave
# the collection, so this stages a dereferenced copy and builds that.
#   collections/build.sh [OUTPUT_DIR]        (default build/collection)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-build/collection}")"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dest="$stage/ansible_collections/aicdn/tunnel"
mkdir -p "$dest" "$out"
cp -rL collections/ansible_collections/aicdn/tunnel/. "$dest/"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
ansible-galaxy collection build "$dest" --output-path "$out" --force
