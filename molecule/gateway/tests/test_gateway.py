"""The gateway after gpufleet.llm.site: HAProxy on gpufleet-gw-1 routes by the model of each request
to the router hosts that serve it (tiny-shared on gw-2 and gw-3, tiny-gw2 and tiny-gw3 on one each),
passes the client's key through, takes a stopped router out and keeps serving the shared model, keeps
a drained router drained through a reload and a restart of HAProxy, a rolling site.yml that restarts
both routers under a steady streaming load fails no client request, and so does a rotation of the
gateways' health key (rotate_keys.yml, Ansible Vault), with every health check passing throughout.
Tests run in file order; the stopped router, the rolling run and the rotation come last."""
import json
import os
import re
import secrets
import subprocess
import time

import yaml

KEYS = {
    "client": "gw-test-client-KEY-b27e40",
    "health": "gw-test-health-KEY-90d1e7c4a2",
    "llamacpp": "gw-test-llamacpp-KEY-3f9a1c",
}
WRONG_KEY = "gw-test-WRONG-KEY-5510aa"
GATEWAY = "gpufleet-gw-1"
ROUTERS = {"gpufleet-gw-2": "tiny-gw2", "gpufleet-gw-3": "tiny-gw3"}
MODELS = ["tiny-gw2", "tiny-gw3", "tiny-shared"]
PLAIN = "http://127.0.0.1:8000"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Requests from inside the gateway host (the test hosts publish no ports), standard library only:
# argv[1] is a JSON list of [name, method, url, key or null, body or null]; prints one JSON object
# name -> {status, body, type}.
ASK = r"""
import json, ssl, sys, urllib.error, urllib.request
out = {}
ctx = ssl._create_unverified_context()
for name, method, url, key, body in json.loads(sys.argv[1]):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = body.encode() if isinstance(body, str) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:
            out[name] = {"status": resp.status, "body": resp.read().decode(), "type": resp.headers.get("Content-Type")}
    except urllib.error.HTTPError as err:
        out[name] = {"status": err.code, "body": err.read().decode(), "type": err.headers.get("Content-Type")}
print(json.dumps(out))
"""


def chat(model, stream=False, **extra):
    return dict({"model": model, "max_tokens": 4, "stream": stream,
                 "messages": [{"role": "user", "content": "Say hello"}]}, **extra)


def ask(host, **requests):
    """requests: name -> (method, path or URL, key, body)."""
    args = [[name, m, u if u.startswith("http") else PLAIN + u, k, b] for name, (m, u, k, b) in requests.items()]
    return json.loads(host.check_output("python3 -c %s %s", ASK, json.dumps(args)))


def stat(host):
    """HAProxy's `show stat`: {(proxy, server): row as a dict}."""
    out = host.check_output("echo 'show stat' | socat - UNIX-CONNECT:/run/haproxy/admin.sock")
    lines = out.strip().splitlines()
    fields = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(fields, line.split(","))) for line in lines[1:] if line]
    return {(r["pxname"], r["svname"]): r for r in rows}


def model_backends(host):
    """model -> HAProxy backend, from the map the role wrote."""
    out = host.check_output("grep -v '^#' /etc/haproxy/gpufleet/models.map")
    return dict(line.split() for line in out.strip().splitlines())


def router_state(host, server):
    return stat(host)[("be_router_" + server, server)]["status"]


def wait_state(host, server, want, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        state = router_state(host, server)
        if state.startswith(want):
            return time.monotonic() - (deadline - timeout)
        assert time.monotonic() < deadline, "%s stayed %s (wanted %s)" % (server, state, want)
        time.sleep(0.5)


def playbook(*extra, check=False, name="converge.yml", env_extra=None):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **(env_extra or {}))
    cmd = ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], *extra,
           os.path.join(env["MOLECULE_SCENARIO_DIRECTORY"], name)]
    if check:
        cmd[1:1] = ["--check", "--diff"]
    run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=1200, check=False)
    return run.returncode, ANSI.sub("", run.stdout)


def recap(output, name):
    match = re.search(r"^%s\s*:\s*(.*)$" % re.escape(name), output, re.M)
    assert match, "no recap line for %s" % name
    return dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1)))


def test_haproxy_runs_hardened_with_its_files_private(hosts):
    gw = hosts[GATEWAY]
    assert gw.service("haproxy.service").is_running and gw.service("haproxy.service").is_enabled
    props = gw.check_output("systemctl show haproxy.service -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
                            "-p PrivateTmp -p CapabilityBoundingSet")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props and "ProtectHome=yes" in props, props
    assert "cap_sys_admin" not in props.lower(), props
    # Worker as the user haproxy; listeners where the variables say, metrics on loopback only.
    assert "haproxy" in gw.check_output("ps -o user= -C haproxy")
    listening = gw.check_output("ss -Htlnp")
    for address in ("0.0.0.0:8000", "0.0.0.0:8443", "127.0.0.1:8405"):
        assert address in listening, listening
    health = gw.file("/etc/haproxy/gpufleet/health.cfg")
    assert (health.user, health.group, health.mode) == ("root", "root", 0o600)
    assert not gw.file("/etc/haproxy/gpufleet/env").exists
    pem = gw.file("/etc/haproxy/gpufleet/gateway.pem")
    assert (pem.user, pem.group, pem.mode) == ("root", "haproxy", 0o640)
    config = gw.file("/etc/haproxy/haproxy.cfg").content_string
    assert "${LLM_GATEWAY_HEALTH_KEY}" in config
    for key in list(KEYS.values()):
        assert key not in config
    # The routers' backends stay on their hosts' loopback; only the routers face the network.
    for name in ROUTERS:
        assert "127.0.0.1:8081" in hosts[name].check_output("ss -Htln")


def test_each_model_reaches_a_host_that_serves_it(hosts):
    gw = hosts[GATEWAY]
    backends = model_backends(gw)
    assert sorted(backends) == MODELS
    servers = {model: sorted(s for (px, s) in stat(gw) if px == be and s != "BACKEND") for model, be in backends.items()}
    assert servers == {"tiny-gw2": ["gpufleet-gw-2"], "tiny-gw3": ["gpufleet-gw-3"],
                       "tiny-shared": ["gpufleet-gw-2", "gpufleet-gw-3"]}
    before = stat(gw)
    answers = ask(gw, **{"%s-%d" % (model, i): ("POST", "/v1/chat/completions", KEYS["client"], chat(model))
                         for model in MODELS for i in range(4)})
    assert {a["status"] for a in answers.values()} == {200}, answers
    assert all(json.loads(a["body"])["object"] == "chat.completion" for a in answers.values())
    after = stat(gw)
    sent = {(px, s): int(after[(px, s)]["stot"]) - int(before[(px, s)]["stot"])
            for (px, s) in after if px in backends.values() and s != "BACKEND"}
    assert sent[(backends["tiny-gw2"], "gpufleet-gw-2")] == 4
    assert sent[(backends["tiny-gw3"], "gpufleet-gw-3")] == 4
    # least connections over the two replicas of the shared model: both took requests
    shared = [sent[(backends["tiny-shared"], s)] for s in ROUTERS]
    assert sum(shared) == 4 and min(shared) >= 1, shared


def test_models_answer_errors_and_tls(hosts):
    gw = hosts[GATEWAY]
    big = json.dumps(chat("tiny-shared", padding="x" * 70000))
    a = ask(gw,
            models=("GET", "/v1/models", KEYS["client"], None),
            models_tls=("GET", "https://127.0.0.1:8443/v1/models", KEYS["client"], None),
            chat_tls=("POST", "https://127.0.0.1:8443/v1/chat/completions", KEYS["client"], chat("tiny-gw3")),
            models_wrong_key=("GET", "/v1/models", WRONG_KEY, None),
            models_no_key=("GET", "/v1/models", None, None),
            chat_wrong_key=("POST", "/v1/chat/completions", WRONG_KEY, chat("tiny-shared")),
            chat_health_key=("POST", "/v1/chat/completions", KEYS["health"], chat("tiny-gw2")),
            unknown=("POST", "/v1/chat/completions", KEYS["client"], chat("no-such-model")),
            too_big=("POST", "/v1/chat/completions", KEYS["client"], big))
    assert a["models"]["status"] == 200, a["models"]
    assert sorted(m["id"] for m in json.loads(a["models"]["body"])["data"]) == MODELS
    assert a["models_tls"]["status"] == 200 and a["models_tls"]["body"] == a["models"]["body"]
    assert a["chat_tls"]["status"] == 200, a["chat_tls"]
    # client keys pass through: the routers refuse a key they do not know, on every path
    for name in ("models_wrong_key", "models_no_key", "chat_wrong_key"):
        assert a[name]["status"] == 401, (name, a[name])
    # the health key is accepted by the routers (the gateway's checks prove the key check), as the client key
    # named gateway, whose scope holds no model: a chat with it is a 404, as for a model that does not exist
    assert a["chat_health_key"]["status"] == 404, a["chat_health_key"]
    assert json.loads(a["chat_health_key"]["body"])["error"]["code"] == "model_not_found"
    assert a["unknown"]["status"] == 404 and a["unknown"]["type"] == "application/json"
    assert json.loads(a["unknown"]["body"]) == {"error": {
        "message": "The model 'no-such-model' does not exist", "type": "invalid_request_error",
        "param": "model", "code": "model_not_found"}}
    assert a["too_big"]["status"] == 413, a["too_big"]
    error = json.loads(a["too_big"]["body"])["error"]
    assert error["code"] == "request_too_large" and "65536" in error["message"], error
    metrics = gw.check_output("python3 -c %s", "import urllib.request; print(urllib.request.urlopen("
                              "'http://127.0.0.1:8405/metrics', timeout=10).read().decode())")
    assert "haproxy_server_status" in metrics or "haproxy_backend_status" in metrics


def test_check_diff_run_changes_nothing_and_prints_no_key():
    rc, output = playbook(check=True)
    assert rc == 0, output
    for name in ("gpufleet-gw-1", "gpufleet-gw-2", "gpufleet-gw-3"):
        stats = recap(output, name)
        assert stats["changed"] == 0 and stats["failed"] == 0, (name, stats)
    for key in list(KEYS.values()):
        assert key not in output
    assert "PRIVATE KEY" not in output


def test_a_router_stopped_by_hand_is_taken_out_and_its_shared_model_keeps_being_served(hosts):
    gw, three = hosts[GATEWAY], hosts["gpufleet-gw-3"]
    assert router_state(gw, "gpufleet-gw-3") == "UP"
    three.check_output("systemctl stop llm-router.service")
    try:
        seconds = wait_state(gw, "gpufleet-gw-3", "DOWN", timeout=15)
        print("router of gpufleet-gw-3 taken out after %.1f s" % seconds)
        a = ask(gw, **{"shared-%d" % i: ("POST", "/v1/chat/completions", KEYS["client"], chat("tiny-shared"))
                       for i in range(6)},
                own=("POST", "/v1/chat/completions", KEYS["client"], chat("tiny-gw3")))
        assert {a["shared-%d" % i]["status"] for i in range(6)} == {200}, a
        assert a["own"]["status"] == 503, a["own"]         # its only host is out
    finally:
        three.check_output("systemctl start llm-router.service")
    wait_state(gw, "gpufleet-gw-3", "UP", timeout=60)
    assert ask(gw, own=("POST", "/v1/chat/completions", KEYS["client"], chat("tiny-gw3")))["own"]["status"] == 200


def test_a_drained_router_stays_drained_through_a_reload_and_a_restart_of_haproxy(hosts):
    """HAProxy forgets a drain set through its runtime API when it reloads or restarts, unless the
    unit saved the servers' state first (server-state-file): a host drained by a failed run must not
    come back when the gateway's config changes."""
    gw = hosts[GATEWAY]
    config = gw.file("/etc/haproxy/haproxy.cfg").content_string
    assert "timeout check 3s" in config
    gw.check_output("echo 'set server be_router_gpufleet-gw-3/gpufleet-gw-3 state drain' | "
                    "socat - UNIX-CONNECT:/run/haproxy/admin.sock")
    try:
        assert router_state(gw, "gpufleet-gw-3") == "DRAIN"
        # A config change and a reload (what the role's handler does), then a restart.
        worker = gw.check_output("pgrep -P $(systemctl show -p MainPID --value haproxy.service)")
        gw.check_output("sed -i 's/timeout check 3s/timeout check 4s/' /etc/haproxy/haproxy.cfg")
        gw.check_output("systemctl reload haproxy.service")
        # The old worker stops (the master may signal it: CAP_KILL), so the runtime API reaches the new one.
        deadline = time.monotonic() + 30
        while gw.check_output("pgrep -P $(systemctl show -p MainPID --value haproxy.service) || true") in ("", worker) \
                or "\n" in gw.check_output("pgrep -P $(systemctl show -p MainPID --value haproxy.service) || true"):
            assert time.monotonic() < deadline, "the old HAProxy worker did not stop after the reload"
            time.sleep(0.5)
        rows = stat(gw)
        assert rows[("be_router_gpufleet-gw-3", "gpufleet-gw-3")]["status"] == "DRAIN", rows
        # ... and every model backend's server that tracks it
        assert rows[("be_any", "gpufleet-gw-3")]["status"] == "DRAIN", rows
        assert rows[("be_router_gpufleet-gw-2", "gpufleet-gw-2")]["status"] == "UP", rows
        a = ask(gw, **{"shared-%d" % i: ("POST", "/v1/chat/completions", KEYS["client"], chat("tiny-shared"))
                       for i in range(4)})
        assert {x["status"] for x in a.values()} == {200}, a
        after = stat(gw)
        backend = model_backends(gw)["tiny-shared"]
        assert int(after[(backend, "gpufleet-gw-3")]["stot"]) == 0, after[(backend, "gpufleet-gw-3")]
        gw.check_output("systemctl restart haproxy.service")
        deadline = time.monotonic() + 30
        while gw.run("echo 'show stat' | socat - UNIX-CONNECT:/run/haproxy/admin.sock").rc != 0:
            assert time.monotonic() < deadline, "HAProxy did not come back after the restart"
            time.sleep(0.5)
        assert router_state(gw, "gpufleet-gw-3") == "DRAIN"
    finally:
        gw.check_output("sed -i 's/timeout check 4s/timeout check 3s/' /etc/haproxy/haproxy.cfg")
        gw.check_output("echo 'set server be_router_gpufleet-gw-3/gpufleet-gw-3 state ready' | "
                        "socat - UNIX-CONNECT:/run/haproxy/admin.sock")
        gw.check_output("systemctl reload haproxy.service")
    wait_state(gw, "gpufleet-gw-3", "UP", timeout=30)
    assert gw.file("/etc/haproxy/haproxy.cfg").content_string == config


# A bounded steady load ON the gateway host (python3, standard library): 4 workers stream chat
# completions for the shared model, one after the other with a 0.1 s pause (the tiny model answers
# in milliseconds; without the pause the load would take the test machine's cores from the run it
# tests), until /root/load.stop exists. A request counts as failed unless
# it got 200 and its stream ended with data: [DONE] and carried no error event.
LOAD = r'''
import http.client, json, os, sys, threading, time
body = json.dumps({"model": "tiny-shared", "stream": True, "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Tell me a story"}]})
counts, failures, lock = {"ok": 0, "failed": 0}, [], threading.Lock()
def worker():
    while not os.path.exists("/root/load.stop"):
        try:
            c = http.client.HTTPConnection("127.0.0.1", 8000, timeout=120)
            c.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer " + sys.argv[1],
                                                            "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read().decode(errors="replace")
            c.close()
            ok = r.status == 200 and "data: [DONE]" in data and '"error"' not in data
            what = "%d %s" % (r.status, data[-300:])
        except Exception as e:
            ok, what = False, "error %s %s" % (type(e).__name__, e)
        with lock:
            counts["ok" if ok else "failed"] += 1
            if not ok:
                failures.append(what)
        time.sleep(0.1)
threads = [threading.Thread(target=worker) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"counts": counts, "failures": failures[:20]}))
'''


def test_rolling_run_restarting_both_routers_under_load_fails_no_client_request(hosts):
    gw = hosts[GATEWAY]
    pids = {name: hosts[name].check_output("systemctl show -p MainPID --value llm-router.service") for name in ROUTERS}
    gw.check_output("rm -f /root/load.stop")
    load = subprocess.Popen(["podman", "exec", GATEWAY, "python3", "-c", LOAD, KEYS["client"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        # A config change on both router hosts: each router restarts, one host at a time.
        rc, output = playbook("-e", "gpufleet_serial=1", "-e", "llm_router_client_timeout=70")
        time.sleep(3)
    finally:
        gw.check_output("touch /root/load.stop")
        out, err = load.communicate(timeout=300)
    assert rc == 0, output[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    print("client requests during the rolling run: %d ok, %d failed" % (result["counts"]["ok"], result["counts"]["failed"]))
    for name in ROUTERS:
        assert hosts[name].check_output("systemctl show -p MainPID --value llm-router.service") != pids[name], name
        assert "Drain this router host on the gateways" in output
    assert result["counts"]["ok"] > 0, (result, err)
    assert result["counts"]["failed"] == 0, result
    assert [router_state(gw, name) for name in ROUTERS] == ["UP", "UP"]
    for key in list(KEYS.values()):
        assert key not in output


# Every 0.2 s until /root/load.stop exists: the status of each router host's server in HAProxy
# (the runtime API, as root, inside the gateway host); prints status -> number of times seen.
MONITOR = r'''
import collections, json, os, socket, time
seen = collections.Counter()
while not os.path.exists("/root/load.stop"):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect("/run/haproxy/admin.sock")
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        for line in data.decode().splitlines():
            f = line.split(",")
            if line.startswith("be_router_") and f[1] != "BACKEND":
                seen[f[1] + " " + f[17]] += 1
    except OSError as e:
        seen["socket " + type(e).__name__] += 1
    time.sleep(0.2)
print(json.dumps(seen))
'''


def test_rotating_the_health_key_under_load_keeps_every_router_in_and_fails_no_request(hosts):
    """rotate_keys.yml with rotate_scope [gateway], from an Ansible Vault file holding the scenario's
    keys: the routers accept old and new, the gateway switches (HAProxy reloads), the routers drop
    the old key; under the steady streaming load, with HAProxy's view of each router polled."""
    gw = hosts[GATEWAY]
    eph = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    password, vault_file = os.path.join(eph, "vault-password"), os.path.join(eph, "gateway-vault.yml")
    with open(os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    env = {"ANSIBLE_VAULT_PASSWORD_FILE": password}
    vault_env = dict(os.environ, **env)
    subprocess.run(["ansible-vault", "encrypt", "--output", vault_file, "-"], env=vault_env, check=True,
                   capture_output=True, text=True, input=json.dumps({
                       "vault_llamacpp_api_key": KEYS["llamacpp"],
                       "vault_llm_router_client_api_keys": [KEYS["client"]],
                       "vault_llm_gateway_health_key": KEYS["health"]}))
    gw.check_output("rm -f /root/load.stop")
    load = subprocess.Popen(["podman", "exec", GATEWAY, "python3", "-c", LOAD, KEYS["client"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = subprocess.Popen(["podman", "exec", GATEWAY, "python3", "-c", MONITOR],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        time.sleep(3)
        # llm_router_client_timeout as the rolling run above left it: only the keys may change here.
        rc, output = playbook("-e", "gpufleet_ansible_vault_file=" + vault_file, "-e", '{"rotate_scope": ["gateway"]}',
                              "-e", "llm_router_client_timeout=70", name="rotate.yml", env_extra=env)
        seconds = time.monotonic() - started - 3
        time.sleep(3)
    finally:
        gw.check_output("touch /root/load.stop")
        out, err = load.communicate(timeout=300)
        seen, dummy = monitor.communicate(timeout=60)
    assert rc == 0, output[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    seen = json.loads(seen.strip().splitlines()[-1])
    print("health key rotation: %.0f s; client requests %d ok, %d failed; router states seen %s"
          % (seconds, result["counts"]["ok"], result["counts"]["failed"], seen))
    assert result["counts"]["ok"] > 0 and result["counts"]["failed"] == 0, result
    # never DRAIN, DOWN or "UP 1/2" (a failed check): the routers stayed in throughout
    assert set(seen) == {"gpufleet-gw-2 UP", "gpufleet-gw-3 UP"}, seen
    stored = yaml.safe_load(subprocess.run(["ansible-vault", "view", vault_file], env=vault_env, check=True,
                                           capture_output=True, text=True).stdout)
    new = stored["vault_llm_gateway_health_key"]
    assert len(new) == 48 and new != KEYS["health"]
    assert stored["vault_gpufleet_rotation_pending"] == [] and stored["vault_llm_gateway_health_key_previous"] == []
    assert stored["vault_llamacpp_api_key"] == KEYS["llamacpp"]                # only the gateway scope rotated
    KEYS["health_new"] = new                                                  # looked for in the journals
    for key in list(KEYS.values()):
        assert key not in output
    # Each router: the new health key accepted, the old one refused; the gateway's checks send the new one.
    for name in ROUTERS:
        a = ask(hosts[name], old=("GET", "http://127.0.0.1:4000/v1/models", KEYS["health"], None),
                new=("GET", "http://127.0.0.1:4000/v1/models", new, None))
        assert (a["old"]["status"], a["new"]["status"]) == (401, 200), (name, a["old"]["status"], a["new"]["status"])
    health = gw.file("/etc/haproxy/gpufleet/health.cfg")
    assert (health.user, health.group, health.mode) == ("root", "root", 0o600)
    assert [router_state(gw, name) for name in ROUTERS] == ["UP", "UP"]


def test_no_key_in_the_journals(hosts):
    for name, host in hosts.items():
        log = host.check_output("journalctl --no-pager -u haproxy.service -u llm-router.service -u 'llamacpp@*'")
        for key in list(KEYS.values()):
            assert key not in log, name
