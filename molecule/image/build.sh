#!/usr/bin/env bash
# Build (or reuse) the local podman image the molecule scenarios boot, and their network: Debian bookworm with
# systemd as PID 1 and what Ansible needs on a target. No registry is involved: debootstrap
# from the mirror apt already uses, then `podman import`.
#
# The root filesystem tarball is cached under $AICDN_IMAGE_CACHE (default /var/tmp/aicdn-molecule)
# keyed by the package list, and the image carries the key as a label, so a second run on the
# same machine costs well under a second.
set -euo pipefail

IMAGE="${AICDN_MOLECULE_IMAGE:-localhost/aicdn-debian-systemd:bookworm}"
CACHE="${AICDN_IMAGE_CACHE:-/var/tmp/aicdn-molecule}"
SUITE=bookworm
# python3-packaging: ansible-core 2.19's pip module imports it on the target.
# python3-apt: apt tasks report ok for installed packages without lists or network.
# prometheus: the monitoring role's package, preinstalled because instances have no network
# (the role still asks apt for it; promtool then checks the alert rules for real).
PACKAGES="python3,python3-venv,python3-apt,python3-packaging,systemd,systemd-sysv,dbus,sudo,iproute2,ca-certificates,procps,prometheus"

mirror() {
  local src=/etc/apt/sources.list.d/debian.sources
  if [[ -r $src ]]; then
    awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$src"
  elif [[ -r /etc/apt/sources.list ]]; then
    awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list
  fi
}

# The private network of the rollout scenario: --internal, so instances reach each other and
# nothing else.
NETWORK="${AICDN_MOLECULE_NETWORK:-aicdn-rollout}"
if ! podman network exists "$NETWORK"; then
  podman network create --internal --subnet 10.231.77.0/24 "$NETWORK" >/dev/null
  echo "network $NETWORK created"
fi

key="$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)"
if podman image exists "$IMAGE" &&
  [[ "$(podman image inspect --format '{{index .Labels "aicdn.image.key"}}' "$IMAGE")" == "$key" ]]; then
  echo "image $IMAGE is up to date ($key)"
  exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/debian-$SUITE-systemd-$key.tar"
if [[ ! -s $tarball ]]; then
  url="$(mirror)"
  url="${url:-http://deb.debian.org/debian}"
  rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $SUITE from $url (first run only: a few minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$url" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -30 "$CACHE/debootstrap.log"; exit 1; }
  : >"$rootfs/etc/machine-id"
  echo localhost >"$rootfs/etc/hostname"
  # Services the image brings along stay off until a role asks for them.
  rm -f "$rootfs"/etc/systemd/system/multi-user.target.wants/prometheus*.service
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL aicdn.image.key=$key" \
  "$tarball" "$IMAGE" >/dev/null
echo "image $IMAGE built ($key)"
