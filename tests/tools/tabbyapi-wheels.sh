#!/usr/bin/env bash
# The wheels the REAL TabbyAPI needs on a CPU-only test host, built once on the controller and cached.
#
#   tests/tools/tabbyapi-wheels.sh            -> prints the wheelhouse directory
#
# Source: the unmodified TabbyAPI snapshots in ../shared/vendor/tabbyapi (both branches; GitHub is
# not reachable here). Their base dependencies (no extras: no torch, no exllamav2/v3) and the build
# backend (setuptools, packaging, wheel) are fetched once with pip into one directory, which the
# tests give the tabbyapi role as tabbyapi_pip_wheelhouse: each host then installs offline from it
# (--no-index) in seconds instead of downloading about 70 MB from PyPI per host and branch.
# Reused while the snapshots' SHA256SUMS is the same.
#
# Environment:
#   GPUFLEET_TABBYAPI_VENDOR   the snapshots (default: ../shared/vendor/tabbyapi from the checkout)
#   GPUFLEET_TABBYAPI_WHEELS   the wheelhouse (default: ~/.cache/gpufleet/tabbyapi-wheels)
# Diagnostics go to stderr; stdout carries only the wheelhouse's path.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vendor=${GPUFLEET_TABBYAPI_VENDOR:-$repo/../shared/vendor/tabbyapi}
out=${GPUFLEET_TABBYAPI_WHEELS:-$HOME/.cache/gpufleet/tabbyapi-wheels}
python=${PYTHON:-$repo/.venv/bin/python}
if [[ ! -s $vendor/SHA256SUMS ]]; then
  echo "tabbyapi-wheels: no TabbyAPI snapshots in $vendor (GPUFLEET_TABBYAPI_VENDOR)" >&2
  exit 1
fi
stamp=$(sha256sum < "$vendor/SHA256SUMS" | cut -c1-16)
if [[ -s $out/.stamp && $(cat "$out/.stamp") == "$stamp" ]]; then
  echo "$out"
  exit 0
fi
(cd "$vendor" && sha256sum --quiet -c SHA256SUMS) >&2
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
# One resolve per branch: they pin different pydantic versions; the directory holds both.
for archive in "$vendor"/tabbyAPI-*.tar.gz; do
  echo "tabbyapi-wheels: dependencies of $(basename "$archive")" >&2
  "$python" -m pip wheel --disable-pip-version-check --quiet --wheel-dir "$out.tmp" "$archive" >&2
done
"$python" -m pip download --disable-pip-version-check --quiet --only-binary=:all: --dest "$out.tmp" \
  setuptools packaging wheel >&2
# TabbyAPI itself is installed from its unpacked tree by the role, not from a wheel.
rm -f "$out.tmp"/tabbyapi-*.whl "$out.tmp"/tabbyAPI-*.whl
echo "$stamp" > "$out.tmp/.stamp"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "tabbyapi-wheels: $(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1)" >&2
echo "$out"
