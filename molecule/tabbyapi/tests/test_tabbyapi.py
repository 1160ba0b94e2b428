"""Checks of the tabbyapi role on a systemd host running the REAL TabbyAPI (the vendored exl2-checkpoint
snapshot at the commit the role pins, installed with the git method; no model: none loads without a GPU)."""
import json
import os
import re
import subprocess
import time

API_KEY = "tabby-api-KEY-3f9c1e7d"
ADMIN_KEY = "tabby-admin-KEY-77ab02c4"
PREVIOUS_KEY = "tabby-previous-KEY-0d1e"
KEYS = (API_KEY, ADMIN_KEY, PREVIOUS_KEY)

# Runs ON the host: every request the key checks need, answered as JSON lines.
PROBE = r'''
import json, urllib.request, urllib.error
def call(method, path, headers=None, body=None):
    headers = dict(headers or {}, **({"Content-Type": "application/json"} if body is not None else {}))
    req = urllib.request.Request("http://127.0.0.1:5000" + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
A, M = "%s", "%s"
print(json.dumps({
  "health": call("GET", "/health"),
  "model_nokey": call("GET", "/v1/model"),
  "model_key": call("GET", "/v1/model", {"x-api-key": A}),
  "model_bearer": call("GET", "/v1/model", {"Authorization": "Bearer " + A}),
  "model_wrong": call("GET", "/v1/model", {"x-api-key": "wrong-key"}),
  "models_admin": call("GET", "/v1/models", {"x-api-key": M}),
  "load_apikey": call("POST", "/v1/model/load", {"x-api-key": A}, {"model_name": "nope"}),
  "load_unknown": call("POST", "/v1/model/load", {"x-admin-key": M}, {"model_name": "nope"}),
  "chat": call("POST", "/v1/chat/completions", {"Authorization": "Bearer " + A},
               {"messages": [{"role": "user", "content": "hi"}], "stream": False}),
}))
''' % (API_KEY, ADMIN_KEY)


GPU_DEVICES = ["/dev/nvidiactl rw", "/dev/nvidia-uvm rw", "/dev/nvidia-uvm-tools rw", "/dev/nvidia-modeset rw",
               "char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps rw"]


def show(host, unit="tabbyapi.service"):
    props = "ActiveState,UnitFileState,User,Group,WorkingDirectory,ExecStart,NoNewPrivileges,ProtectSystem," \
            "ProtectHome,PrivateTmp,PrivateDevices,DevicePolicy,DeviceAllow,ReadWritePaths," \
            "RestrictAddressFamilies,CapabilityBoundingSet,Restart,StartLimitBurst,MainPID"
    out = host.check_output("systemctl show %s -p %s" % (unit, props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_service_runs_hardened_as_tabbyapi(host):
    p = show(host)
    assert p["ActiveState"] == "active"
    assert p["UnitFileState"] == "enabled"
    assert (p["User"], p["Group"]) == ("tabbyapi", "tabbyapi")
    assert p["WorkingDirectory"] == "/opt/tabbyapi"
    # TabbyAPI runs under the key-masking launcher (its output) and tabbyapi_launch.py (its logger).
    assert ("argv[]=/usr/bin/python3 -I /usr/local/lib/gpufleet/gpufleet_mask.py --secrets-file "
            "/opt/tabbyapi/api_tokens.yml -- /opt/tabbyapi-venv/bin/python /usr/local/lib/gpufleet/tabbyapi_launch.py "
            "--config /opt/tabbyapi/config.yml ;") in p["ExecStart"], p["ExecStart"]
    assert p["NoNewPrivileges"] == "yes"
    assert p["ProtectSystem"] == "strict"
    assert p["ProtectHome"] == "yes"
    assert p["PrivateTmp"] == "yes"
    assert p["PrivateDevices"] == "no"  # the GPU must stay reachable ...
    assert p["DevicePolicy"] == "closed"  # ... but only the devices listed
    assert set(p["ReadWritePaths"].split()) == {"/var/lib/tabbyapi", "/var/log/tabbyapi"}
    assert set(p["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert p["CapabilityBoundingSet"] == ""
    assert p["Restart"] == "on-failure"
    owner = host.check_output("ps -o user= -p %s" % p["MainPID"])
    assert owner.strip() == "tabbyapi"
    unit = host.file("/etc/systemd/system/tabbyapi.service").content_string
    assert unit.startswith("#") and "Ansible managed" in unit
    # the one GPU device list, MIG (char-nvidia-caps) included
    assert [line for line in unit.splitlines() if line.startswith("DeviceAllow=")] == [
        "DeviceAllow=%s" % d for d in GPU_DEVICES]
    journal = host.check_output("journalctl --no-pager -o cat")
    for key in KEYS:
        assert key not in unit
        assert key not in journal


def test_the_keys_it_prints_at_start_are_masked_in_the_journal_and_its_log_files(host):
    """TabbyAPI logs both keys at every start, to the console (journald) and to logs/<time>.log."""
    journal = host.check_output("journalctl --no-pager -o cat -u tabbyapi.service")
    assert "Your API key is: ***" in journal and "Your admin key is: ***" in journal, journal[-3000:]
    logs = host.check_output("find /var/log/tabbyapi -name '*.log' -type f").split()
    assert logs, "TabbyAPI wrote no log file under /var/log/tabbyapi"
    text = host.check_output("cat %s" % " ".join(logs))
    assert "Your API key is: ***" in text
    for key in KEYS:
        assert key not in journal and key not in text


def test_the_real_server_takes_the_config_the_role_wrote_without_a_warning(host):
    """TabbyAPI validates config.yml at start (an invalid value stops it) and ignores an unknown
    setting silently (the role refuses one before anything changes). Its only warnings here are the
    two that developer.unsafe_launch costs."""
    journal = host.check_output("journalctl --no-pager -o cat -u tabbyapi.service")
    assert "Config file override detected in args." in journal   # it read the role's config.yml
    warnings = [line for line in journal.splitlines() if "WARNING" in line]
    expected = ("UNSAFE: Skipping ExllamaV2 version check.", "If you aren't a developer, please keep this off!")
    assert warnings and all(any(text in line for text in expected) for line in warnings), warnings


def test_listens_on_loopback_only(host):
    listeners = host.check_output("ss -ltnH")
    addresses = re.findall(r"\s(\S+):5000\s", listeners)
    assert addresses == ["127.0.0.1"], listeners


def test_files_owners_modes_and_content(host):
    stats = host.check_output(
        "stat -c '%n %U:%G %a' /opt/tabbyapi/config.yml /opt/tabbyapi/api_tokens.yml "
        "/opt/tabbyapi /opt/tabbyapi-venv/pip.conf /var/lib/tabbyapi /etc/systemd/system/tabbyapi.service "
        "/var/log/tabbyapi /etc/tmpfiles.d/gpufleet-tabbyapi.conf /usr/local/lib/gpufleet "
        "/usr/local/lib/gpufleet/gpufleet_mask.py /usr/local/lib/gpufleet/tabbyapi_launch.py")
    assert stats.splitlines() == [
        "/opt/tabbyapi/config.yml root:tabbyapi 640",
        "/opt/tabbyapi/api_tokens.yml root:tabbyapi 640",
        "/opt/tabbyapi root:root 755",
        "/opt/tabbyapi-venv/pip.conf root:root 644",
        "/var/lib/tabbyapi tabbyapi:tabbyapi 750",
        "/etc/systemd/system/tabbyapi.service root:root 644",
        "/var/log/tabbyapi tabbyapi:tabbyapi 750",
        "/etc/tmpfiles.d/gpufleet-tabbyapi.conf root:root 644",
        "/usr/local/lib/gpufleet root:root 755",
        "/usr/local/lib/gpufleet/gpufleet_mask.py root:root 644",
        "/usr/local/lib/gpufleet/tabbyapi_launch.py root:root 644",
    ]
    # TabbyAPI's logs/ (under its read-only working directory) is the log directory, kept 7 days.
    assert host.file("/opt/tabbyapi/logs").linked_to == "/var/log/tabbyapi"
    assert "d /var/log/tabbyapi 0750 tabbyapi tabbyapi 7d" in host.check_output(
        "cat /etc/tmpfiles.d/gpufleet-tabbyapi.conf")
    config = host.check_output("cat /opt/tabbyapi/config.yml")
    # first-class settings, deep-merged with tabbyapi_config_extra (model.cache_mode overridden)
    assert re.search(r"^network:\n(  .*\n)*  host: 127\.0\.0\.1$", config, re.M)
    assert "disable_auth: false" in config
    assert "cache_mode: Q8" in config and "gpu_split_auto: true" in config
    assert "max_seq_len: 8192" in config and "model_name" not in config   # no model: none loads without a GPU
    assert "unsafe_launch: true" in config and "log_prompt: false" in config
    assert not re.search(r"^auth:", config, re.M)
    tokens = host.check_output("cat /opt/tabbyapi/api_tokens.yml")
    # exl2-checkpoint: a single string, never a list; previous keys are not written
    assert 'api_key: "%s"' % API_KEY in tokens
    assert PREVIOUS_KEY not in tokens
    assert 'admin_key: "%s"' % ADMIN_KEY in tokens
    pip_conf = host.check_output("cat /opt/tabbyapi-venv/pip.conf")
    assert "cert = /usr/local/share/gpufleet-test-proxy-ca.crt" in pip_conf
    assert "index-url = https://127.0.0.1:8443/simple/" in pip_conf
    assert "extra-index-url = https://127.0.0.1:8443/extra/simple/" in pip_conf
    # the service user cannot change its own code or config
    denied = host.run("runuser -u tabbyapi -- touch /opt/tabbyapi/api_tokens.yml /opt/tabbyapi/x")
    assert denied.rc != 0


def test_key_is_checked_from_inside_the_host(host):
    """TabbyAPI's own answers (compact JSON), with no model loaded."""
    answers = json.loads(host.check_output("python3 -c '%s'" % PROBE.replace("'", "'\"'\"'")))
    no_model = [503, '{"detail":"No models are currently loaded."}']
    assert answers["health"] == [200, '{"status":"healthy","issues":[]}']
    assert answers["model_nokey"] == [401, '{"detail":"Please provide an API key"}']
    assert answers["model_wrong"] == [401, '{"detail":"Invalid API key"}']
    assert answers["model_key"] == answers["model_bearer"] == no_model
    assert answers["models_admin"][0] == 200 and json.loads(answers["models_admin"][1])["data"] == []
    assert answers["load_apikey"] == [401, '{"detail":"Please provide an admin key"}']
    assert answers["load_unknown"][0] == 400
    assert answers["chat"] == no_model


def test_stop_stays_stopped_and_a_crash_restarts(host):
    host.check_output("systemctl stop tabbyapi.service")
    time.sleep(6)  # longer than RestartSec
    assert host.run("systemctl is-active tabbyapi.service").stdout.strip() == "inactive"
    host.check_output("systemctl start tabbyapi.service")
    pid = show(host)["MainPID"]   # the key-masking launcher; TabbyAPI is its child
    # TabbyAPI crashes: the launcher dies of the same signal, and systemd restarts the unit.
    host.check_output("for i in $(seq 50); do pkill -9 -P %s && exit 0; sleep 0.2; done; exit 1" % pid)
    deadline = time.time() + 20
    while time.time() < deadline:
        p = show(host)
        if p["ActiveState"] == "active" and p["MainPID"] not in ("0", pid):
            break
        time.sleep(1)
    assert p["ActiveState"] == "active" and p["MainPID"] != pid


def converge(*args):
    """ansible-playbook converge.yml with extra arguments; returns (rc, output, changed, failed)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], *args,
         os.path.join(env["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    recap = re.search(r"gpufleet-tabbyapi\s*:.*changed=(\d+).*failed=(\d+)", output)
    assert recap, output
    return run.returncode, output, int(recap.group(1)), int(recap.group(2))


def test_check_diff_changes_nothing_and_shows_no_key():
    rc, output, changed, failed = converge("--check", "--diff", "-v")
    assert rc == 0, output
    assert (changed, failed) == (0, 0), output
    for key in KEYS:
        assert key not in output


def test_pip_used_the_https_index_and_its_ca(host):
    index = host.check_output("find /srv/pypi-index -name '*.whl' -printf '%P\\n'").split()
    installed = host.check_output("/opt/tabbyapi-venv/bin/python -c 'import pydantic; print(pydantic.VERSION)'")
    assert installed == "2.11.0"   # what exl2-checkpoint pins (the index also holds main's newer one)
    pydantic = [w for w in index if w.startswith("simple/pydantic/pydantic-2.11.0-")]
    setuptools = [w for w in index if w.startswith("extra/simple/setuptools/")]
    assert len(pydantic) == 1 and len(setuptools) == 1, index
    # The index server's log: pip asked the index for pydantic, the extra index for setuptools (the
    # build backend), and downloaded both wheels from them.
    log = host.check_output("journalctl --no-pager -o cat -u gpufleet-test-index.service")
    for path in ("/simple/pydantic/", "/" + pydantic[0], "/extra/simple/setuptools/", "/" + setuptools[0]):
        assert re.search(r'"GET %s HTTP/1\.1" 200 ' % re.escape(path), log), (path, log)
    # The index's certificate is trusted only through tabbyapi_pip_cert: pip without the venv's
    # pip.conf (PIP_CONFIG_FILE=/dev/null loads no config file) refuses the index.
    untrusted = host.run("PIP_CONFIG_FILE=/dev/null /opt/tabbyapi-venv/bin/python -m pip download --no-deps --retries 0 "
                         "--index-url https://127.0.0.1:8443/simple/ -d /tmp/untrusted-probe pydantic")
    assert untrusted.rc != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout + untrusted.stderr, \
        untrusted.stdout + untrusted.stderr


def checkout(host):
    return host.check_output("git -C /opt/tabbyapi rev-parse HEAD")


def models_answer(host, key):
    """The status of GET /v1/models with key (200: accepted, with no model loaded; 401: refused)."""
    probe = ("import urllib.request, urllib.error\n"
             "req = urllib.request.Request('http://127.0.0.1:5000/v1/models', headers={'x-api-key': '%s'})\n"
             "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
             "except urllib.error.HTTPError as e:\n    print(e.code)\n") % key
    return host.check_output("python3 -c \"%s\"" % probe).strip()


# The commits of the vendored snapshots: the role's default pins the first.
EXL2_COMMIT = "79126f904c2e00aece026b36bb70bbb87e4892b2"
MAIN_COMMIT = "e632af41eba68abeadc3437c62674360f2f8cbf1"


def test_git_version_is_pinned_by_default_and_main_is_an_explicit_choice(host):
    """The default is a commit (exl2-checkpoint's snapshot), not a moving branch; main updates the
    checkout and the code that runs, and the role writes main's key list."""
    refs = {ref: host.check_output("git --git-dir=/srv/git/tabbyAPI.git rev-parse %s^{commit}" % ref)
            for ref in ("exl2-checkpoint", "main")}
    assert refs == {"exl2-checkpoint": EXL2_COMMIT, "main": MAIN_COMMIT}
    assert host.check_output("git -C /opt/tabbyapi remote get-url origin") == "file:///srv/git/tabbyAPI.git"
    assert checkout(host) == EXL2_COMMIT
    assert models_answer(host, PREVIOUS_KEY) == "401"  # exl2-checkpoint: one key only
    try:
        rc, output, changed, _failed = converge("-e", "tabbyapi_git_version=main")
        assert rc == 0 and changed > 0, output
        # main: its code runs and the role wrote a key list with the previous key.
        assert checkout(host) == MAIN_COMMIT
        assert "TabbyAPI inference server (main)" in host.check_output("systemctl show -p Description tabbyapi")
        assert "\"%s\"" % PREVIOUS_KEY in host.check_output("cat /opt/tabbyapi/api_tokens.yml")
        assert models_answer(host, PREVIOUS_KEY) == "200"
        assert models_answer(host, API_KEY) == "200"
    finally:
        rc, output, _changed, _failed = converge()
        assert rc == 0, output
    assert checkout(host) == EXL2_COMMIT
    assert models_answer(host, PREVIOUS_KEY) == "401"
