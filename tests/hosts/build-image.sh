#!/usr/bin/env bash
# Builds the systemd test-host image localhost/gpufleet-host:bookworm once (debootstrap -> podman import)
# and reuses it while it exists and was built by this version of the script (label gpufleet.recipe).
# No registry is reachable here, so nothing is pulled. It also makes the controller's ssh key for the
# test hosts (build/test-hosts-ssh/id_ed25519, used through tests/hosts/ssh-proxy).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
IMAGE=${GPUFLEET_HOST_IMAGE:-localhost/gpufleet-host:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
key=${GPUFLEET_TEST_SSH_KEY:-$here/../../build/test-hosts-ssh/id_ed25519}
if [[ ! -s $key.pub ]]; then
  mkdir -p "$(dirname "$key")" && chmod 0700 "$(dirname "$key")"
  rm -f "$key" "$key.pub"
  ssh-keygen -q -t ed25519 -N '' -C gpufleet-test-hosts -f "$key"
fi
recipe=$(sha256sum "$here/build-image.sh" | cut -c1-16)
if podman image exists "$IMAGE"; then
  built=$(podman image inspect --format '{{ index .Config.Labels "gpufleet.recipe" }}' "$IMAGE" 2>/dev/null || true)
  if [[ $built == "$recipe" ]]; then
    echo "test host image $IMAGE exists"; exit 0
  fi
  [[ ${1:-} == --build ]] || echo "test host image $IMAGE was built by another version of $0: rebuilding"
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
  --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,iproute2,ca-certificates,sudo,procps,openssh-server \
  bookworm "$root" "$mirror"
# Trust the controller's CA bundle inside the host too (pip uses certifi otherwise; TLS-intercepting proxies).
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/gpufleet-controller-ca.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# sshd runs only as `sshd -i` through tests/hosts/ssh-proxy: nothing listens on port 22.
ln -sfn /dev/null "$root/etc/systemd/system/ssh.service"
ln -sfn /dev/null "$root/etc/systemd/system/ssh.socket"
# No getty on a container console; keep boot quick.
rm -f "$root"/etc/systemd/system/getty.target.wants/* 2>/dev/null || true
tar -C "$root" -c . | podman import --change 'CMD ["/sbin/init"]' --change "LABEL gpufleet.recipe=$recipe" - "$IMAGE"
echo "built $IMAGE"
