#!/usr/bin/env bash
# One ansible-core version of the matrix (tests/matrix/matrix.sh runs them all; README.md there):
#   tests/matrix/run.sh VERSION SRC BUNDLE VENV
#     VERSION  2.19 | 2.21: installs requirements/matrix-core-VERSION.txt (hashes, no resolving)
#     SRC      the collection's source tree (only read)
#     BUNDLE   ansible_collections/ of the pinned `ansible` package: where the collections that
#              galaxy.yml declares as dependencies come from (no Galaxy server is reachable)
#     VENV     the venv to use: made from the lock alone, remade when the lock changes, and checked
#              to hold exactly the lock's packages (ansible-core and its own dependencies)
# Runs on any machine whose python3 the version supports (2.21 inside the trixie image).
# Steps: build the tarball, install it and its declared dependencies offline into an empty path,
# then from an unrelated directory with that path alone: ansible-doc of the module and the roles,
# --syntax-check of both playbooks and of every task file of every role (so every module a role
# names must resolve), the module against loopback backends, the argument-spec failure plays.
set -eEuo pipefail
failed_at() {  # the ERR trap: name the line of this script that failed (once: not inside run's subshell)
  local rc=$1 line=$2
  ((BASH_SUBSHELL == 0)) || return 0
  [[ ${FUNCNAME[1]:-} != run ]] || line=${BASH_LINENO[1]}
  echo "MATRIX FAILURE [$version]: exit $rc at tests/matrix/run.sh line $line: $(sed -n "${line}p" "$0")" >&2
}
trap 'failed_at $? $LINENO' ERR
version=$1 src=$(cd "$2" && pwd) bundle=$(realpath -m "$3") venv=$(realpath -m "$4")
here=$(cd "$(dirname "$0")" && pwd)
lock=$src/requirements/matrix-core-$version.txt
step() { printf '\n=== [%s] %s\n' "$version" "$*"; }
fail() { echo "MATRIX FAILURE [$version]: $*" >&2; exit 1; }

step "venv $venv from $(basename "$lock")"
stamp="$(sha256sum "$lock" | cut -d' ' -f1) $(python3 -VV | tr -d '\n')"
if [[ ! -f $venv/.matrix-stamp || $(cat "$venv/.matrix-stamp") != "$stamp" ]]; then
  python3 -m venv --clear "$venv"  # (--clear empties it: in a container it is a mount point)
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$lock"
  echo "$stamp" > "$venv/.matrix-stamp"
fi
# Exactly the lock's packages: nothing else (no `ansible` bundle) may hide a missing dependency.
want=$(grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' "$lock" | tr 'A-Z_' 'a-z-' | sort)
have=$("$venv/bin/pip" --disable-pip-version-check list --format=freeze | tr 'A-Z_' 'a-z-' | grep -vE '^(pip|setuptools|wheel)==' | sort)
[[ $want == "$have" ]] || fail "venv $venv differs from $lock:
$(diff <(echo "$want") <(echo "$have") || true)"

# Everything below runs in a scratch directory outside the checkout, with a clean environment:
# no ansible.cfg, no ANSIBLE_* from the caller, HOME empty, the fresh collections path alone.
scratch=$(mktemp -d /tmp/gpufleet-matrix-"$version".XXXXXX)
fakes=()
cleanup() {
  local pid
  for pid in "${fakes[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT
mkdir -p "$scratch"/{home,run,dist,collections}
run() {
  (cd "$scratch/run" && env -i PATH="$venv/bin:/usr/bin:/bin" HOME="$scratch/home" LANG=C.UTF-8 \
    ANSIBLE_COLLECTIONS_PATH="$scratch/collections" ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false \
    ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_RETRY_FILES_ENABLED=false \
    "$@")
}
run ansible --version > "$scratch/version.txt"
head -n 2 "$scratch/version.txt"
grep -q 'config file = None' "$scratch/version.txt" || fail "an ansible.cfg was found: $(sed -n 2p "$scratch/version.txt")"

step "build the collection tarball (from a copy of the source: the build must not write into it)"
mkdir "$scratch/src"
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./build -c . | tar -C "$scratch/src" -x
run ansible-galaxy collection build --output-path "$scratch/dist" "$scratch/src"
tarball=$(ls "$scratch"/dist/gpufleet-llm-*.tar.gz)

step "install it offline with the dependencies galaxy.yml declares, from the pinned ansible bundle"
# The collections galaxy.yml declares (and theirs, from their MANIFEST.json), each from the bundle,
# are offered to ansible-galaxy next to the tarball. It resolves the tarball's declared dependencies
# against them (versions included) and fails when one is missing or too old; nothing undeclared is
# installed, so content that needs an undeclared collection fails the steps after this one.
mapfile -t deps < <("$venv/bin/python" - "$scratch/src/galaxy.yml" "$bundle" <<'EOF'
import json, os, sys, yaml
declared = yaml.safe_load(open(sys.argv[1])).get('dependencies') or {}
todo, seen = list(declared), []
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.append(name)
    path = os.path.join(sys.argv[2], *name.split('.'))
    manifest = os.path.join(path, 'MANIFEST.json')
    if not os.path.isfile(manifest):  # ansible-galaxy will refuse to install without it
        sys.stderr.write('not in the pinned ansible bundle: %s (declared in galaxy.yml)\n' % name)
        continue
    print(path)
    todo += list(json.load(open(manifest))['collection_info'].get('dependencies') or {})
EOF
)
printf 'dependency source: %s\n' "${deps[@]:-none declared}"
run ansible-galaxy collection install --offline -p "$scratch/collections" "$tarball" "${deps[@]}"

step "ansible-doc of the module and of the public roles"
run ansible-doc gpufleet.llm.wait_for_backend > "$scratch/doc.txt"
grep -q 'reject_statuses' "$scratch/doc.txt" || fail "ansible-doc of the module has no reject_statuses"
roles=(tabbyapi sglang llamacpp llm_router)
run ansible-doc -t role "${roles[@]/#/gpufleet.llm.}" > "$scratch/doc.txt"
for role in "${roles[@]}"; do
  grep -q "${role}_service_state" "$scratch/doc.txt" || fail "ansible-doc -t role gpufleet.llm.$role lacks ${role}_service_state"
done
echo "ansible-doc -t role ${roles[*]/#/gpufleet.llm.}: $(wc -l < "$scratch/doc.txt") lines"

step "--syntax-check of both playbooks and of every task file of every role (as installed)"
# import_role of each task file parses it statically, so every module or action a role names
# (community.hashi_vault.* in the keys role too) must resolve from the declared collections.
{
  echo '- name: Every task file of every role parses and its modules resolve'
  echo '  hosts: all'
  echo '  gather_facts: false'
  echo '  tasks:'
  for f in "$scratch"/collections/ansible_collections/gpufleet/llm/roles/*/tasks/*.yml; do
    role=$(basename "$(dirname "$(dirname "$f")")") entry=$(basename "$f" .yml)
    echo "    - {name: $role $entry, ansible.builtin.import_role: {name: gpufleet.llm.$role, tasks_from: $entry}}"
  done
} > "$scratch/run/task_files.yml"
run ansible-playbook -i "$here/inventory.yml" --syntax-check gpufleet.llm.site gpufleet.llm.rotate_keys \
  "$scratch/run/task_files.yml"

step "the module against loopback backends (tests/support/fake_backend.py)"
right=matrix-right-$RANDOM$RANDOM wrong=matrix-wrong-$RANDOM$RANDOM
declare -A urls
for kind in tabbyapi llamacpp; do
  port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$venv/bin/python" "$scratch/src/tests/support/fake_backend.py" --kind "$kind" --port "$port" \
    --key "$right" --model matrix-model > "$scratch/fake-$kind.log" 2>&1 &
  fakes+=($!)
  urls[$kind]=http://127.0.0.1:$port
done
for kind in tabbyapi llamacpp; do
  for _ in $(seq 50); do grep -q serving "$scratch/fake-$kind.log" && break; sleep 0.1; done
  grep -q serving "$scratch/fake-$kind.log" || fail "the $kind double did not start: $(cat "$scratch/fake-$kind.log")"
done
run ansible-playbook -v -i localhost, "$here/module.yml" -e "right_key=$right wrong_key=$wrong" \
  -e "tabbyapi_url=${urls[tabbyapi]} llamacpp_url=${urls[llamacpp]}" > "$scratch/module.out" 2>&1 ||
  { cat "$scratch/module.out"; fail "the module play failed"; }
cat "$scratch/module.out"
! grep -qE "$right|$wrong" "$scratch/module.out" || fail "a key appears in the module's output"

step "argument-spec failure plays (each case refused, naming the variable)"
run ansible-playbook -i "$here/argspec-inventory.yml" "$here/argspec.yml" --check --tags matrix > "$scratch/argspec.out" 2>&1 ||
  { cat "$scratch/argspec.out"; fail "an argument-spec case was not refused as it should be"; }
cat "$scratch/argspec.out"
grep -q 'ok: \[baseline\]' "$scratch/argspec.out" || fail "the baseline did not run"

echo
echo "MATRIX PASSED [$version]: $("$venv/bin/python" -c 'import ansible.release as r, platform as p; print("ansible-core %s, Python %s" % (r.__version__, p.python_version()))')"
