#!/usr/bin/env bash
# Runs `ansible-test sanity` on the files git tracks (plus untracked, unignored ones), laid out under
# build/sanity/ansible_collections/gpufleet/llm as ansible-test requires, with no ignore file.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
dest="$top/build/sanity/ansible_collections/gpufleet/llm"
rm -rf "$dest" && mkdir -p "$dest"
cd "$top"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | rsync -a --from0 --files-from=- ./ "$dest/"
cd "$dest"
git init -q && git add -A && git -c user.email=ci@localhost -c user.name=ci commit -qm sanity
# ansible-test downloads a pip bootstrap script; this host cannot reach it, so provide our own.
pipver=$(python - <<'PY'
import ansible_test._internal.python_requirements as r, inspect, re
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(r)).group(1))
PY
)
mkdir -p ~/.ansible/test/cache
cp "$top/tests/tools/get_pip_offline.py" ~/.ansible/test/cache/"get_pip_${pipver//./_}.py"
if [ -e "$dest/tests/sanity" ] && ls "$dest"/tests/sanity/ignore-*.txt >/dev/null 2>&1; then
  echo "sanity ignore files are not allowed" >&2; exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ansible-test sanity --local --python 3.11 --requirements "$@" 2>&1 | tee "$out"
# ansible-test skips a test whose program is missing with only a warning: that is not a pass.
if grep -E 'Required program ".*" not found' "$out" >&2; then
  echo "a sanity test was skipped: install the program (tests/tools/machine-packages.txt)" >&2; exit 1
fi
