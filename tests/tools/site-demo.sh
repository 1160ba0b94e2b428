#!/usr/bin/env bash
# `make site` with no INVENTORY: converge a local systemd test host with playbooks/site.yml and end
# with a real chat request through the router, answered by a real llama-server with a tiny model.
#
#   1. the test-host image (debootstrap, once), the llama-server build and the tiny GGUF model
#      (once, cached in ~/.cache/gpufleet), the TabbyAPI/SGLang stand-ins packed into build/demo/
#   2. the podman container gpufleet-demo (systemd as PID 1), router port published on 127.0.0.1
#   3. ansible-playbook gpufleet.llm.site -i inventories/local (demo vault, DEMO password)
#   4. a request through the router; the URL and a curl line that works are printed.
# No key is printed: the curl line reads the client key from a 0600 header file.
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
# Stand-ins: TabbyAPI's source is on GitHub (not reachable here) and SGLang needs CUDA.
tar -C tests/doubles --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ \
  -c tabbyapi | gzip -n > "$DEMO/tabbyapi-double.tar.gz"
tar -C tests/doubles --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ \
  --transform 's,^sglang,sglang-0.0.0,' -c sglang | gzip -n > "$DEMO/sglang-0.0.0.tar.gz"
echo "STAND-IN: TabbyAPI = tests/doubles/tabbyapi (archive install method), SGLang = tests/doubles/sglang"

say "2/4 test host $NAME (podman, systemd as PID 1, router on 127.0.0.1:$PORT)"
# A demo host made from an older test-host image (e.g. one without the sshd Ansible now reaches it
# through) is replaced: it holds nothing that the converge does not put back.
if podman container exists "$NAME" &&
   [[ $(podman inspect -f '{{.Image}}' "$NAME") != "$(podman image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
  podman rm -f "$NAME" >/dev/null
  echo "removed $NAME: it was made from an older $IMAGE"
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

say "4/4 a real request through the router"
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
  stopped:  TabbyAPI and SGLang -- no GPU here: installed and configured, NOT started
            (and both are STAND-INS from tests/doubles/, not the real servers)
  try it:
    curl -sS -H @$DEMO/router-auth.header -H 'Content-Type: application/json' \\
      -d '$body' $url/v1/chat/completions
  (the header file holds the demo client key; it is 0600 and never printed)
  remove:   make site-remove   (the demo host, the test-host image, caches, venv, build/)
EOF
