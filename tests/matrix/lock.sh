#!/usr/bin/env bash
# Refreshes the hash-pinned lock of one matrix version from its .in file:
#   tests/matrix/lock.sh 2.19     requirements/matrix-core-2.19.in -> .txt (this machine's python3)
#   tests/matrix/lock.sh 2.21     the same inside localhost/gpufleet-matrix:trixie (Python 3.13)
# pip-tools 7.6.2 runs from a throwaway venv, as `make lock` does for requirements/dev.txt.
set -euo pipefail
version=${1:?usage: tests/matrix/lock.sh 2.19|2.21}
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/tests/hosts/containers.conf}
# shellcheck disable=SC2016  # expanded by the bash -c that runs it (REPO, VERSION from its environment)
compile='python3 -m venv /tmp/gpufleet-piptools && /tmp/gpufleet-piptools/bin/pip install -q --disable-pip-version-check pip-tools==7.6.2 \
  && cd "$REPO" && /tmp/gpufleet-piptools/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links -o requirements/matrix-core-$VERSION.txt requirements/matrix-core-$VERSION.in'
case $version in
  2.19) REPO=$repo VERSION=$version bash -c "rm -rf /tmp/gpufleet-piptools && $compile" ;;
  2.21) "$repo/tests/matrix/build-image.sh"
        podman run --rm -v "$repo:/src" -e REPO=/src -e VERSION="$version" localhost/gpufleet-matrix:trixie bash -c "$compile" ;;
  *) echo "no matrix version $version" >&2; exit 2 ;;
esac
echo "wrote requirements/matrix-core-$version.txt"
