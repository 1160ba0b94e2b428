"""The llamacpp role on a systemd host, with a real llama-server and a tiny real GGUF model."""
import json
import os
import re
import subprocess
import time

KEY = "llamacpp-KEY-6d2f90b1"
OLD_KEY = "llamacpp-OLD-KEY-c03e5a7f"
WRONG_KEY = "router-WRONG-KEY-41aa"
INVALID = '{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}'
PORTS = {"chat": 8080, "code": 8091}
UNIT_PROPS = ("ActiveState,UnitFileState,User,Group,NoNewPrivileges,ProtectSystem,ProtectHome,PrivateTmp,"
              "PrivateDevices,DevicePolicy,RestrictAddressFamilies,CapabilityBoundingSet,Restart,"
              "ReadWritePaths,MainPID,SystemCallArchitectures,RestrictSUIDSGID,UMask")

# Runs inside the host: every answer that tells whether the key is really checked.
PROBE = r'''
import json, sys, urllib.request, urllib.error
def call(port, path, headers=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    h = dict(headers or {})
    if data:
        h["Content-Type"] = "application/json"
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
key, old, wrong = sys.argv[1:4]
bearer = lambda k: {"Authorization": "Bearer " + k}
out = {}
for name, port in json.loads(sys.argv[4]).items():
    out[name] = {
        "health": call(port, "/health"),
        "models_nokey": call(port, "/v1/models"),
        "models_key": call(port, "/v1/models", bearer(key)),
        "props_nokey": call(port, "/props"),
        "props_wrong": call(port, "/props", bearer(wrong)),
        "props_key": call(port, "/props", bearer(key)),
        "props_old_key": call(port, "/props", bearer(old)),
        "props_x_api_key": call(port, "/props", {"X-Api-Key": key}),
        "completion_wrong": call(port, "/v1/completions", bearer(wrong), {"prompt": "hello", "max_tokens": 4}),
        "completion": call(port, "/v1/completions", bearer(key), {"prompt": "hello world", "max_tokens": 6}),
        "chat": call(port, "/v1/chat/completions", bearer(key),
                     {"messages": [{"role": "user", "content": "say hello"}], "max_tokens": 6}),
    }
print(json.dumps(out))
'''


def show(host, unit):
    out = host.check_output("systemctl show %s -p %s" % (unit, UNIT_PROPS))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def probe(host, ports=None):
    cmd = "python3 -c %s %s %s %s %s" % tuple(
        "'" + s.replace("'", "'\"'\"'") + "'" for s in (PROBE, KEY, OLD_KEY, WRONG_KEY, json.dumps(ports or PORTS)))
    return json.loads(host.check_output(cmd))


def playbook(*args, timeout=600):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    started = time.monotonic()
    run = subprocess.run(["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], *args],
                         env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return run.returncode, run.stdout + run.stderr, time.monotonic() - started


def recap(output, host_name="gpufleet-llamacpp"):
    found = re.search(re.escape(host_name) + r"\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert found, output
    return tuple(int(n) for n in found.groups())


def test_instances_run_hardened_as_llamacpp(host):
    for name in PORTS:
        p = show(host, "llamacpp@%s.service" % name)
        assert (p["ActiveState"], p["UnitFileState"]) == ("active", "enabled"), name
        assert (p["User"], p["Group"]) == ("llamacpp", "llamacpp")
        assert (p["NoNewPrivileges"], p["ProtectSystem"], p["ProtectHome"], p["PrivateTmp"]) == \
            ("yes", "strict", "yes", "yes")
        assert (p["PrivateDevices"], p["DevicePolicy"]) == ("no", "closed")
        assert set(p["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
        assert (p["CapabilityBoundingSet"], p["Restart"], p["RestrictSUIDSGID"], p["UMask"]) == \
            ("", "on-failure", "yes", "0077")
        assert p["ReadWritePaths"] == "/var/lib/llamacpp"
        assert host.check_output("ps -o user= -p %s" % p["MainPID"]).strip() == "llamacpp"


def test_command_lines_and_environment(host):
    def cmdline(name):
        """llama-server's command line: the child of the unit's main process, the key-masking launcher."""
        pid = show(host, "llamacpp@%s.service" % name)["MainPID"]
        assert host.check_output("ps -o args= -p %s" % pid).startswith(
            "/usr/bin/python3 -I /usr/local/lib/gpufleet/gpufleet_mask.py --secrets-file /etc/gpufleet/llamacpp/api-keys -- ")
        return host.check_output("ps -o args= --ppid %s" % pid)
    chat = cmdline("chat")
    code = cmdline("code")
    # /proc/<pid>/environ of the service is closed even to root here (no CAP_SYS_PTRACE): the env
    # reaching the process is proven by /v1/models naming the code instance's alias (see below).
    chat_env = host.check_output("cat /etc/gpufleet/llamacpp/chat.env").splitlines()
    code_env = host.check_output("cat /etc/gpufleet/llamacpp/code.env").splitlines()
    keyfile = "--api-key-file /etc/gpufleet/llamacpp/api-keys"
    assert chat.startswith("/usr/local/bin/llama-server --host 127.0.0.1 --port 8080 "
                           "--model /var/lib/llamacpp/models/tiny-llama.gguf --ctx-size 512 " + keyfile)
    assert chat.rstrip().endswith(keyfile + " --threads 1")
    assert " --port 8091 " in code and " --ctx-size 256 " in code
    assert code.rstrip().endswith(keyfile + " --parallel 1 --n-predict 16")
    assert 'LLAMA_ARG_ALIAS="tiny-coder"' in code_env and not [e for e in chat_env if "ALIAS" in e]
    for text in (chat, code, "\n".join(chat_env + code_env)):
        assert KEY not in text and OLD_KEY not in text


def test_listen_on_loopback_only(host):
    listeners = host.check_output("ss -ltnH")
    mine = sorted(re.findall(r"\s(\S+):(8080|8091)\s", listeners))
    assert mine == [("127.0.0.1", "8080"), ("127.0.0.1", "8091")], listeners


def test_files_owners_and_modes(host):
    stats = host.check_output(
        "stat -c '%n %U:%G %a' /etc/gpufleet/llamacpp /etc/gpufleet/llamacpp/api-keys "
        "/etc/gpufleet/llamacpp/chat.env /etc/gpufleet/llamacpp/code.env /etc/systemd/system/llamacpp@.service "
        "/usr/local/bin/llama-server /var/lib/llamacpp /var/lib/llamacpp/models "
        "/var/lib/llamacpp/models/tiny-llama.gguf")
    assert stats.splitlines() == [
        "/etc/gpufleet/llamacpp root:llamacpp 750",
        "/etc/gpufleet/llamacpp/api-keys root:llamacpp 640",
        "/etc/gpufleet/llamacpp/chat.env root:root 644",
        "/etc/gpufleet/llamacpp/code.env root:root 644",
        "/etc/systemd/system/llamacpp@.service root:root 644",
        "/usr/local/bin/llama-server root:root 755",
        "/var/lib/llamacpp llamacpp:llamacpp 750",
        "/var/lib/llamacpp/models root:llamacpp 750",
        "/var/lib/llamacpp/models/tiny-llama.gguf root:llamacpp 640",
    ]
    keys = [line for line in host.check_output("cat /etc/gpufleet/llamacpp/api-keys").splitlines()
            if not line.startswith("#")]
    assert keys == [KEY, OLD_KEY]
    visible = host.check_output("cat /etc/systemd/system/llamacpp@.service /etc/gpufleet/llamacpp/*.env")
    assert KEY not in visible and OLD_KEY not in visible
    # The service user reads the key file but may not change it, nor the binary or the model.
    assert host.run("runuser -u llamacpp -- head -c0 /etc/gpufleet/llamacpp/api-keys").rc == 0
    for path in ("/etc/gpufleet/llamacpp/api-keys", "/usr/local/bin/llama-server",
                 "/var/lib/llamacpp/models/tiny-llama.gguf"):
        assert host.run("runuser -u llamacpp -- test -w %s" % path).rc != 0, path


def test_key_is_checked_and_real_completions_answer(host):
    answers = probe(host)
    for name, a in answers.items():
        assert a["health"] == [200, '{"status":"ok"}'], name
        # /v1/models is public in older llama.cpp builds; in build 11434 only /health is.
        assert a["models_nokey"] == [401, INVALID], name
        assert a["props_nokey"] == [401, INVALID], name
        assert a["props_wrong"] == [401, INVALID], name
        assert a["completion_wrong"] == [401, INVALID], name
        for probe_name in ("props_key", "props_old_key", "props_x_api_key"):
            assert a[probe_name][0] == 200, (name, probe_name, a[probe_name])
        status, body = a["completion"]
        assert status == 200, body
        completion = json.loads(body)
        assert completion["object"] == "text_completion"
        assert completion["usage"]["completion_tokens"] >= 1
        assert isinstance(completion["choices"][0]["text"], str)
        status, body = a["chat"]
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"
    models = json.loads(answers["code"]["models_key"][1])
    assert models["data"][0]["id"] == "tiny-coder"


def test_check_diff_changes_nothing_and_shows_no_key():
    rc, output, _took = playbook("--check", "--diff", "-v",
                                 os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"))
    assert rc == 0, output
    assert recap(output) == (0, 0, 0), output
    assert KEY not in output and OLD_KEY not in output


def test_wrong_gate_key_fails_at_the_gate_within_seconds(host):
    pids = {n: show(host, "llamacpp@%s.service" % n)["MainPID"] for n in PORTS}
    rc, output, took = playbook("--diff", "-e", "llamacpp_gate_api_key=" + WRONG_KEY,
                                os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"))
    assert rc == 2, output
    assert recap(output)[1:] == (0, 1), output
    assert "accept the key at http://127.0.0.1:8080" in output, output
    assert "llamacpp at http://127.0.0.1:8080 rejected the API key sent as Authorization on /props: " \
        "401 Invalid API Key" in output, output
    # The gate itself gave up at once (the whole run includes the converge before it).
    gate = re.search(r'"elapsed": ([0-9.]+), "endpoint": "/props"', output)
    assert gate and float(gate.group(1)) < 10, output
    assert took < 300, "the failing converge took %.0f s" % took
    for key in (KEY, OLD_KEY, WRONG_KEY):
        assert key not in output
    # The failed gate left the running instances alone.
    assert {n: show(host, "llamacpp@%s.service" % n)["MainPID"] for n in PORTS} == pids


def test_a_settings_change_restarts_only_that_instance(host):
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    model = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "tiny-llama.gguf")
    before = {n: show(host, "llamacpp@%s.service" % n)["MainPID"] for n in PORTS}
    override = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "code-ctx-override.json")
    with open(override, "w", encoding="utf-8") as f:
        json.dump({"llamacpp_instances": [
            {"name": "chat", "model_src": model, "ctx_size": 512, "threads": 1},
            {"name": "code", "model_src": model, "port": 8091, "ctx_size": 384,
             "extra_args": ["--parallel", "1", "--n-predict", "16"], "env": {"LLAMA_ARG_ALIAS": "tiny-coder"}},
        ]}, f)
    try:
        rc, output, _took = playbook("-e", "@" + override, os.path.join(scenario, "converge.yml"))
        assert rc == 0, output
        after = {n: show(host, "llamacpp@%s.service" % n)["MainPID"] for n in PORTS}
        assert after["code"] != before["code"] and after["chat"] == before["chat"], (before, after)
        assert "--ctx-size 384" in host.check_output("ps -o args= -p %s" % after["code"])
    finally:
        rc, output, _took = playbook(os.path.join(scenario, "converge.yml"))
        assert rc == 0, output
