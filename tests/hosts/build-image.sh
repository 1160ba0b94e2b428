#!/usr/bin/env bash
# Builds the systemd test-host image localhost/gpufleet-host:bookworm once (debootstrap -> podman import)
# and reuses it while it exists. No registry is reachable here, so nothing is pulled.
set -euo pipefail
IMAGE=${GPUFLEET_HOST_IMAGE:-localhost/gpufleet-host:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}
if podman image exists "$IMAGE"; then
  echo "test host image $IMAGE exists"; exit 0
fi
if [[ ${1:-} != --build ]]; then
  exec "$(dirname "$0")/../tools/step.sh" hosts-image "test host image $IMAGE (debootstrap, about 1-3 min)" "$0" --build
fi
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/gpufleet-host.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building $IMAGE from $mirror"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,iproute2,ca-certificates,sudo,procps \
  bookworm "$root" "$mirror"
# Trust the controller's CA bundle inside the host too (pip uses certifi otherwise; TLS-intercepting proxies).
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/gpufleet-controller-ca.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# No getty on a container console; keep boot quick.
rm -f "$root"/etc/systemd/system/getty.target.wants/* 2>/dev/null || true
tar -C "$root" -c . | podman import --change 'CMD ["/sbin/init"]' - "$IMAGE"
echo "built $IMAGE"
