#!/usr/bin/env bash
# Installs what tests/tools/machine-packages.txt lists and this machine lacks: the one place where
# `make site`, `make test` and .ci/run install Debian packages. Quiet when nothing is missing.
# As root: apt-get update, then apt-get install of the missing packages (output in
# build/logs/machine-packages.log; its tail is shown on failure). Not root: names what is missing
# and the command that installs it, and fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=$here/machine-packages.txt

packages=$(sed -e 's/#.*//' "$list" | awk 'NF {print $1}')
missing=()
for pkg in $packages; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

if [[ $(id -u) != 0 ]]; then
  {
    echo "missing Debian packages: ${missing[*]}"
    echo "install them as root, then run this again:"
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  } >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
exec "$here/step.sh" machine-packages "installing Debian packages: ${missing[*]}" \
  bash -c 'apt-get update && apt-get install -y --no-install-recommends "$@"' apt "${missing[@]}"
