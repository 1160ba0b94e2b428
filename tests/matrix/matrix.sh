#!/usr/bin/env bash
# The ansible-core version matrix (`make matrix`; README.md here): the oldest version meta/runtime.yml
# claims on this machine's Python, and the newest on PyPI inside a Debian 13 image (its Python 3.13;
# ansible-core 2.20+ needs Python >= 3.12). Both run side by side, each through tests/matrix/run.sh;
# their whole output is in build/logs/matrix-VERSION.log. One line per version with its time; exits
# non-zero when any version fails (and shows the end of its log).
#   VENV           the dev venv whose pinned `ansible` package provides the dependency collections
#   MATRIX_ONLY    run one version only (2.19 or 2.21)
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-$repo/.venv}
image=${GPUFLEET_MATRIX_IMAGE:-localhost/gpufleet-matrix:trixie}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/tests/hosts/containers.conf}
logs=${GPUFLEET_LOGS:-$repo/build/logs}
mkdir -p "$logs" "$repo/build/matrix"

# The dependency collections come from the `ansible` package pinned in requirements/dev.txt.
pinned=$(grep -oE '^ansible==[^ ]+' "$repo/requirements/dev.txt" | cut -d= -f3)
site=$(find "$venv"/lib -mindepth 2 -maxdepth 2 -type d -name site-packages -path '*/python3*' 2>/dev/null | head -n 1)
if [[ -z $pinned || ! -d $site/ansible-$pinned.dist-info || ! -d $site/ansible_collections ]]; then
  echo "matrix: no ansible $pinned (requirements/dev.txt) in $venv: run make venv" >&2; exit 1
fi
bundle=$site/ansible_collections
echo "dependency collections from ansible $pinned ($bundle)"

on_this_machine() {  # 2.19: this machine's python3 (3.11)
  "$repo/tests/matrix/run.sh" 2.19 "$repo" "$bundle" "$repo/build/matrix/venv-2.19"
}
in_trixie() {  # 2.21: Python 3.13 of the trixie image; the checkout and the bundle read-only
  "$repo/tests/matrix/build-image.sh" && mkdir -p "$repo/build/matrix/venv-2.21" &&
  podman run --rm --network=host -v "$repo:/src:ro" -v "$bundle:/bundle:ro" \
    -v "$repo/build/matrix/venv-2.21:/opt/matrix-venv" "$image" \
    /src/tests/matrix/run.sh 2.21 /src /bundle /opt/matrix-venv
}

declare -A pids starts
for version in ${MATRIX_ONLY:-2.19 2.21}; do
  case $version in
    2.19) lane=on_this_machine ;;
    2.21) lane=in_trixie ;;
    *) echo "matrix: no version $version" >&2; exit 2 ;;
  esac
  starts[$version]=$(date +%s)
  $lane > "$logs/matrix-$version.log" 2>&1 &
  pids[$version]=$!
done

failed=()
for version in ${MATRIX_ONLY:-2.19 2.21}; do
  wait "${pids[$version]}"; rc=$?
  took=$(( $(date +%s) - starts[$version] ))
  if ((rc == 0)); then
    echo "ansible-core $version: passed in $took s ($(grep -o 'ansible-core [0-9.]*, Python [0-9.]*' "$logs/matrix-$version.log" | tail -n 1); log: build/logs/matrix-$version.log)"
  else
    tail -n 30 "$logs/matrix-$version.log"
    echo "ansible-core $version: FAILED after $took s (exit $rc; log: build/logs/matrix-$version.log)" >&2
    failed+=("$version")
  fi
done
((${#failed[@]} == 0)) || { echo "matrix FAILED: ${failed[*]}" >&2; exit 1; }
