#!/usr/bin/env bash
# `make site` with no INVENTORY: converge a local systemd test host with playbooks/site.yml and end
# with a real chat request through the router, answered by a real llama-server with a tiny model,
# next to the real TabbyAPI, running with no model (CPU only).
#
#   1. the test-host image (debootstrap, once), the llama-server build and the tiny GGUF model
#      (once, cached in ~/.cache/gpufleet); TabbyAPI's source: the archive of the pinned commit from
#      the unmodified snapshot ../shared/vendor/tabbyapi (GPUFLEET_TABBYAPI_VENDOR) with the wheelhouse
#      of tests/tools/tabbyapi-wheels.sh (cached), put in build/demo/tabbyapi/; without the snapshot
#      the role clones GitHub at the pinned commit (its git method); the SGLang stand-in packed there
#   2. the podman container gpufleet-demo (systemd as PID 1), router port published on 127.0.0.1
#   3. ansible-playbook gpufleet.llm.site -i inventories/local (demo vault, DEMO password)
#   4. TabbyAPI on the host answers 200 with its key and 401 without; a request through the router;
#      the URL and a curl line that works are printed.
# No key is printed: the curl line reads the client key from a 0600 header file, and the TabbyAPI
# check reads TabbyAPI's key inside the host.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
NAME=${GPUFLEET_DEMO_HOST:-gpufleet-demo}
PORT=${GPUFLEET_DEMO_PORT:-14000}
IMAGE=${GPUFLEET_HOST_IMAGE:-localhost/gpufleet-host:bookworm}
INV=inventories/local
DEMO=build/demo
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/tests/hosts/containers.conf}
export ANSIBLE_CONFIG=${ANSIBLE_CONFIG:-$here/ansible.cfg}
export ANSIBLE_VAULT_PASSWORD_FILE=$here/$INV/DEMO-vault-password.txt
started=$(date +%s)
say() { printf '\n=== %s\n' "$*"; }

say "1/4 what the demo host needs (built once, then cached)"
# The Debian packages (tests/tools/machine-packages.txt) and the venv came with `make site`.
tests/hosts/build-image.sh
mkdir -p "$DEMO"
chmod 0700 "$DEMO"
# llama.cpp: a real llama-server binary and a tiny real GGUF model, both for the controller to copy.
tests/tools/step.sh llama-server "llama-server (a cold build takes 8-15 min; then cached)" tests/tools/build-llama-server.sh
llama_server=$(tests/tools/build-llama-server.sh 2>/dev/null | tail -n 1)
test -x "$llama_server" || { echo "build-llama-server.sh did not print a binary path" >&2; exit 1; }
cmp -s "$llama_server" "$DEMO/llama-server" || install -m 0755 "$llama_server" "$DEMO/llama-server"
if [[ ! -s $DEMO/tiny.gguf ]]; then
  python3 tests/tools/make-tiny-gguf.py "$DEMO/tiny.gguf"
fi
echo "llama-server: $llama_server"
echo "tiny model:   $DEMO/tiny.gguf ($(du -h "$DEMO/tiny.gguf" | cut -f1))"
# TabbyAPI: the REAL server, at the commit the role pins (tabbyapi_git_version). GitHub is not
# reachable from every machine: with the unmodified snapshot (../shared/vendor/tabbyapi, the one
# `make test` uses) the demo installs that commit's archive with the role's archive method and pip
# offline from the wheelhouse of tests/tools/tabbyapi-wheels.sh; inventories/local takes both from
# build/demo/tabbyapi/. Without it, the role's default: a git clone from GitHub and pip from PyPI.
rm -f "$DEMO/tabbyapi-double.tar.gz"  # the stand-in earlier demos installed
pinned=$(sed -n 's/^tabbyapi_git_version: *//p' roles/tabbyapi/defaults/main.yml)
[[ $pinned =~ ^[0-9a-f]{40}$ ]] || { echo "tabbyapi_git_version in roles/tabbyapi/defaults/main.yml is not a commit" >&2; exit 1; }
vendor=$(realpath -m "${GPUFLEET_TABBYAPI_VENDOR:-$here/../shared/vendor/tabbyapi}")
if [[ -s $vendor/SHA256SUMS ]]; then
  archive=$(compgen -G "$vendor/tabbyAPI-*-${pinned:0:12}.tar.gz" | head -n 1 || true)
  [[ -n $archive ]] || { echo "no archive of TabbyAPI's pinned commit ${pinned:0:12} in $vendor" >&2; exit 1; }
  (cd "$vendor" && sha256sum --quiet --ignore-missing -c SHA256SUMS)
  export GPUFLEET_TABBYAPI_VENDOR=$vendor
  tests/tools/step.sh site-tabbyapi-wheels "TabbyAPI's wheels (fetched once from PyPI, then cached)" \
    tests/tools/tabbyapi-wheels.sh
  wheels=$(tests/tools/tabbyapi-wheels.sh 2>/dev/null | tail -n 1)
  test -d "$wheels" || { echo "tabbyapi-wheels.sh did not print a directory" >&2; exit 1; }
  mkdir -p "$DEMO/tabbyapi"
  cmp -s "$archive" "$DEMO/tabbyapi/tabbyAPI.tar.gz" || install -m 0644 "$archive" "$DEMO/tabbyapi/tabbyAPI.tar.gz"
  ln -sfn "$wheels" "$DEMO/tabbyapi/wheels"
  tabbyapi_source="the snapshot $archive (archive method, pip offline from $wheels)"
else
  if [[ -n ${GPUFLEET_TABBYAPI_VENDOR:-} ]]; then
    echo "GPUFLEET_TABBYAPI_VENDOR=$vendor holds no TabbyAPI snapshot (no SHA256SUMS)" >&2
    exit 1
  fi
  rm -rf "$DEMO/tabbyapi"
  echo "no TabbyAPI snapshot in $vendor: the role clones it from GitHub (the host needs GitHub and PyPI)"
  tabbyapi_source="GitHub at commit ${pinned:0:12} (git method, pip from PyPI)"
fi
echo "TabbyAPI: the REAL server, from $tabbyapi_source"
# SGLang needs CUDA: a stand-in, installed and configured but left stopped.
tar -C tests/doubles --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ \
  --transform 's,^sglang,sglang-0.0.0,' -c sglang | gzip -n > "$DEMO/sglang-0.0.0.tar.gz"
echo "STAND-IN: SGLang = tests/doubles/sglang (needs CUDA; installed, configured, not started)"

say "2/4 test host $NAME (podman, systemd as PID 1, router on 127.0.0.1:$PORT)"
# A demo host made from an older test-host image (e.g. one without the sshd Ansible now reaches it
# through) is replaced: it holds nothing that the converge does not put back.
if podman container exists "$NAME" &&
   [[ $(podman inspect -f '{{.Image}}' "$NAME") != "$(podman image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
  podman rm -f "$NAME" >/dev/null
  echo "removed $NAME: it was made from an older $IMAGE"
fi
# podman can still call a container running whose init is gone (e.g. after the machine was
# suspended): "cannot exec in a stopped container". It is replaced the same way.
if podman container exists "$NAME" && [[ $(podman inspect -f '{{.State.Running}}' "$NAME") == true ]] &&
   ! podman exec "$NAME" true >/dev/null 2>&1; then
  podman rm -f "$NAME" >/dev/null
  echo "removed $NAME: podman called it running, but nothing could run in it"
fi
if ! podman container exists "$NAME"; then
  podman run -d --name "$NAME" --hostname "$NAME" --systemd=always \
    -p "127.0.0.1:$PORT:4000" "$IMAGE" /sbin/init >/dev/null
  echo "created $NAME"
elif [[ $(podman inspect -f '{{.State.Running}}' "$NAME") != true ]]; then
  podman start "$NAME" >/dev/null
  echo "started $NAME"
else
  echo "$NAME is running (reused)"
fi
for _ in $(seq 60); do
  state=$(podman exec "$NAME" systemctl is-system-running 2>/dev/null || true)
  [[ $state == running || $state == degraded ]] && break
  sleep 1
done
echo "systemd in $NAME: $state"

say "3/4 ansible-playbook gpufleet.llm.site -i $INV"
status=0
tests/tools/step.sh site-converge "converge (whole output in the log)" \
  ansible-playbook -i "$INV" gpufleet.llm.site "$@" || status=$?
# The recap: what changed and what failed, per host.
sed -n '/^PLAY RECAP/,$p' build/logs/site-converge.log
((status == 0)) || exit "$status"

say "4/4 TabbyAPI on the host, then a real request through the router"
# TabbyAPI's keys are read inside the host from the api_tokens.yml the role wrote (0640
# root:tabbyapi; one JSON value per line) and used there: they never reach this terminal.
# 127.0.0.1:5000 is tabbyapi_host:tabbyapi_port (the role's defaults; only the router listens outside).
# TabbyAPI prints both keys at every start; the role's unit masks them in its journal and log files:
# neither value may be found there.
podman exec -i "$NAME" python3 - <<'PY'
import glob, json, subprocess, sys, urllib.error, urllib.request
url = "http://127.0.0.1:5000/v1/models"
with open("/opt/tabbyapi/api_tokens.yml") as f:
    tokens = {k: json.loads(v) for k, v in (line.split(":", 1) for line in f if line[:1].isalpha())}
api_keys = tokens["api_key"] if isinstance(tokens["api_key"], list) else [tokens["api_key"]]
key = api_keys[0]
def get(headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
with_key, models = get({"Authorization": "Bearer " + key})
without, _ = get({})
names = [m.get("id") for m in (models or {}).get("data", [])]
print("TabbyAPI: GET %s -> %d with its key (models: %s), %d without a key" % (url, with_key, names, without))
if (with_key, without) != (200, 401):
    sys.exit("TabbyAPI should answer 200 with its key and 401 without one")
seen = subprocess.run(["journalctl", "-u", "tabbyapi", "--no-pager", "-o", "cat"],
                      capture_output=True, text=True, check=True).stdout
for log in glob.glob("/var/log/tabbyapi/*.log"):
    with open(log, errors="replace") as f:
        seen += f.read()
if any(k in seen for k in api_keys + [tokens["admin_key"]]):
    sys.exit("a TabbyAPI key value is in its journal or log files (not masked)")
print("TabbyAPI: its keys are masked in its journal and log files (neither key value is there)")
PY
# The client key goes from the demo vault into a 0600 header file, never to the terminal.
umask 077
ansible-vault view "$INV/group_vars/all/vault.yml" | python3 -c '
import sys, yaml
keys = yaml.safe_load(sys.stdin)["vault_llm_router_client_api_keys"]
sys.stdout.write("Authorization: Bearer %s\n" % keys[0])' > "$DEMO/router-auth.header"
url="http://127.0.0.1:$PORT"
# The router names a llama.cpp model after its GGUF file (inventories/local: tiny.gguf).
model=tiny
body=$(printf '{"model": "%s", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}' "$model")
answer=$(curl -sS --fail-with-body -m 120 -H @"$DEMO/router-auth.header" -H 'Content-Type: application/json' \
  -d "$body" "$url/v1/chat/completions")
python3 - "$answer" <<'PY'
import json, sys
reply = json.loads(sys.argv[1])
print("model:   %s" % reply.get("model"))
print("answer:  %r  (noise: the tiny model has random weights)" % reply["choices"][0]["message"]["content"])
print("usage:   %s" % json.dumps(reply.get("usage", {})))
PY
cat <<EOF

gpufleet demo is up in $(( $(date +%s) - started )) s.
  router:   $url   (OpenAI-compatible; host $NAME, port 4000 inside)
  serving:  llama.cpp (real llama-server, tiny GGUF model "$model", CPU)
  running:  TabbyAPI, the REAL server, under the role's hardened unit, with NO model: CPU only,
            none can load without a GPU. On 127.0.0.1:5000 inside the host it checks keys (200
            with its key, 401 without) and lists no model; the router has no TabbyAPI model to
            offer. Its keys are masked (***) in its journal and log files. See it:
              podman exec $NAME systemctl status tabbyapi
              podman exec $NAME journalctl -u tabbyapi
            source: $tabbyapi_source
  stopped:  SGLang -- needs CUDA: installed and configured, NOT started, and a STAND-IN
            (tests/doubles/sglang, not the real server)
  try it:
    curl -sS -H @$DEMO/router-auth.header -H 'Content-Type: application/json' \\
      -d '$body' $url/v1/chat/completions
  (the header file holds the demo client key; it is 0600 and never printed)
  remove:   make site-remove   (the demo host, the test-host image, caches, venv, build/)
EOF
