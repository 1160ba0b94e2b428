#!/bin/sh
# ansible-vault password client for the rotation scenario: a random password per test run, kept in
# the scenario's ephemeral directory (never in the repository).
set -eu
dir=${MOLECULE_EPHEMERAL_DIRECTORY:?run through molecule}
file="$dir/vault-password"
if [ ! -s "$file" ]; then
  mkdir -p "$dir"
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file")
fi
cat "$file"
