#!/usr/bin/env bash
# Builds localhost/gpufleet-matrix:trixie once (debootstrap minbase of Debian 13 trixie: python3 3.13,
# python3-venv, ca-certificates; then `podman import`) and reuses it while it exists. ansible-core
# 2.20 and later need Python >= 3.12 and this machine (bookworm) has 3.11, so the newest ansible-core
# of the matrix runs in this image. No registry is reachable here, so nothing is pulled.
#   podman image rm localhost/gpufleet-matrix:trixie   forces a rebuild (about 1-3 min).
set -euo pipefail
IMAGE=${GPUFLEET_MATRIX_IMAGE:-localhost/gpufleet-matrix:trixie}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/../hosts" && pwd)/containers.conf}
if podman image exists "$IMAGE"; then
  echo "matrix image $IMAGE exists"; exit 0
fi
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/gpufleet-matrix.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $IMAGE from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates trixie "$root" "$mirror"
# pip inside trusts certifi's bundle, not the system's: give it the controller's (PIP_CERT points at it).
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/gpufleet-controller-ca.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import \
  --change 'ENV PIP_CERT=/usr/local/share/gpufleet-controller-ca.crt' \
  --change 'CMD ["/bin/bash"]' - "$IMAGE"
echo "built $IMAGE"
