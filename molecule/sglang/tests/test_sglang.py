"""Checks of the sglang role on a systemd host running the SGLang test double."""
import json
import os
import re
import subprocess

KEY = "sglang-KEY-a81c44e0"

PROBE = r'''
import json, urllib.request, urllib.error
def call(port, path, headers=None):
    req = urllib.request.Request("http://127.0.0.1:%%d%%s" %% (port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
K = "%s"
out = {}
for port in (30000, 30007):
    out[port] = {
        "health": call(port, "/health"),
        "models_nokey": call(port, "/v1/models"),
        "models_wrong": call(port, "/v1/models", {"Authorization": "Bearer wrong-key"}),
        "models_bearer": call(port, "/v1/models", {"Authorization": "Bearer " + K}),
        "models_x_api_key": call(port, "/v1/models", {"x-api-key": K}),
    }
print(json.dumps(out))
''' % KEY


def show(host, unit):
    props = "ActiveState,UnitFileState,User,NoNewPrivileges,ProtectSystem,ProtectHome,PrivateTmp," \
            "PrivateDevices,DevicePolicy,RestrictAddressFamilies,CapabilityBoundingSet,Restart,ReadWritePaths,MainPID"
    out = host.check_output("systemctl show %s -p %s" % (unit, props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_instances_run_hardened(host):
    for unit in ("sglang@chat.service", "sglang@code.service"):
        p = show(host, unit)
        assert p["ActiveState"] == "active", unit
        assert p["UnitFileState"] == "enabled", unit
        assert p["User"] == "sglang"
        assert (p["NoNewPrivileges"], p["ProtectSystem"], p["ProtectHome"], p["PrivateTmp"]) == \
            ("yes", "strict", "yes", "yes")
        assert (p["PrivateDevices"], p["DevicePolicy"]) == ("no", "closed")
        assert set(p["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
        assert p["CapabilityBoundingSet"] == "" and p["Restart"] == "on-failure"
        assert "/var/lib/sglang" in p["ReadWritePaths"]
        assert host.check_output("ps -o user= -p %s" % p["MainPID"]).strip() == "sglang"
    # the one GPU device list, MIG (char-nvidia-caps) included
    unit = host.file("/etc/systemd/system/sglang@.service").content_string
    assert "DeviceAllow=char-nvidia-caps rw" in unit.splitlines()
    args = host.check_output("cat /proc/%s/cmdline | tr '\\0' ' '" % show(host, "sglang@code.service")["MainPID"])
    assert "--port 30007 --tp 2" in args and "--served-model-name coder --mem-fraction-static 0.8" in args


def test_listen_on_loopback_only(host):
    listeners = host.check_output("ss -ltnH")
    found = sorted(re.findall(r"\s(\S+):(30000|30007)\s", listeners))
    assert found == [("127.0.0.1", "30000"), ("127.0.0.1", "30007")], listeners


def test_files_owners_modes_and_no_key_in_unit(host):
    stats = host.check_output(
        "stat -c '%n %U:%G %a' /etc/sglang/chat.key /etc/sglang/code.key /etc/sglang/chat.env "
        "/etc/systemd/system/sglang@.service /opt/sglang-venv/pip.conf")
    assert stats.splitlines() == [
        "/etc/sglang/chat.key root:root 600",
        "/etc/sglang/code.key root:root 600",
        "/etc/sglang/chat.env root:root 644",
        "/etc/systemd/system/sglang@.service root:root 644",
        "/opt/sglang-venv/pip.conf root:root 644",
    ]
    unit = host.check_output("cat /etc/systemd/system/sglang@.service /etc/sglang/chat.env /etc/sglang/code.env")
    assert KEY not in unit
    assert KEY not in host.check_output("journalctl --no-pager -o cat")
    assert "--api-key" not in unit and "EnvironmentFile=/etc/sglang/%i.key" in unit
    assert "/opt/sglang-venv/bin/python /usr/local/lib/gpufleet/sglang-launch.py --model-path" in unit
    assert host.check_output("stat -c '%U:%G %a' /usr/local/lib/gpufleet/sglang-launch.py") == "root:root 755"
    assert host.check_output("cat /etc/sglang/chat.key").strip().endswith('SGLANG_API_KEY="%s"' % KEY)


def test_installed_offline_from_the_wheelhouse(host):
    """The host has no network but loopback: pip could only use the wheelhouse copied from the controller."""
    assert host.check_output("ls /sys/class/net").split() == ["lo"]
    pip_conf = host.check_output("cat /opt/sglang-venv/pip.conf")
    assert "no-index = true" in pip_conf and "find-links = /opt/sglang-venv.wheelhouse" in pip_conf
    assert "index-url" not in pip_conf
    wheels = host.check_output("ls /opt/sglang-venv.wheelhouse").split()
    assert len(wheels) == 1 and wheels[0].startswith("setuptools-") and wheels[0].endswith(".whl"), wheels
    # The double's sdist was built (its build backend from the wheelhouse) and installed in the venv.
    show_pkg = host.check_output("/opt/sglang-venv/bin/python -m pip show sglang")
    assert "Version: 0.0.0+gpufleet.double" in show_pkg
    # Without the venv's pip.conf (PIP_CONFIG_FILE=/dev/null loads no config file) pip goes to PyPI,
    # and finds nothing: no index is reachable from this host.
    fetch = host.run("PIP_CONFIG_FILE=/dev/null /opt/sglang-venv/bin/python -m pip download --no-deps --retries 0 "
                     "--timeout 5 -d /tmp/offline-probe setuptools")
    assert fetch.rc != 0 and "No matching distribution found for setuptools" in fetch.stderr, fetch.stdout + fetch.stderr


def test_key_is_checked_from_inside_the_host(host):
    answers = json.loads(host.check_output("python3 -c '%s'" % PROBE.replace("'", "'\"'\"'")))
    for port, model in (("30000", "/srv/models/chat-model"), ("30007", "coder")):
        a = answers[port]
        assert a["health"][0] == 200
        assert a["models_nokey"] == [401, '{"error": "Unauthorized"}']
        assert a["models_wrong"] == [401, '{"error": "Unauthorized"}']
        for name in ("models_bearer", "models_x_api_key"):
            assert a[name][0] == 200 and json.loads(a[name][1])["data"][0]["id"] == model


def test_check_diff_changes_nothing_and_shows_no_key():
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], "--check", "--diff", "-v",
         os.path.join(env["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    recap = re.search(r"gpufleet-sglang\s*:.*changed=(\d+).*failed=(\d+)", output)
    assert recap and recap.groups() == ("0", "0"), output
    assert KEY not in output


def _main_pids(host):
    return [show(host, unit)["MainPID"] for unit in ("sglang@chat.service", "sglang@code.service")]


def test_no_key_on_any_command_line(host):
    """Command lines are world-readable: /proc/PID/cmdline, ps."""
    pids = _main_pids(host)
    assert all(int(pid) > 0 for pid in pids)
    cmdlines = host.check_output("for p in /proc/[0-9]*; do printf '%s ' ${p#/proc/}; tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
    assert all(re.search(r"^%s .*sglang-launch\.py --model-path" % pid, cmdlines, re.M) for pid in pids), cmdlines
    assert [line.split(" ", 1)[0] for line in cmdlines.splitlines() if KEY in line] == [], "key on a command line"
    assert KEY not in host.check_output("ps -eo args=")
    assert "--api-key" not in cmdlines


def test_no_key_in_systemctl_status():
    """systemctl status shows the processes of the unit with their command lines, to every user."""
    for user in ("root", "nobody"):
        run = subprocess.run(["podman", "exec", "gpufleet-sglang", "runuser", "-u", user, "--", "systemctl", "status",
                              "--no-pager", "--full", "--lines=0", "sglang@chat.service", "sglang@code.service"],
                             capture_output=True, text=True, timeout=60, check=False)
        text = run.stdout + run.stderr
        assert "sglang-launch.py --model-path" in text, text
        assert KEY not in text, "systemctl status shows the key to %s" % user


def test_no_key_in_the_journal_fields(host):
    """-o verbose includes journald's trusted fields, e.g. _CMDLINE of every process that logged."""
    journal = host.check_output("journalctl --no-pager -o verbose")
    # SGLang's output reaches journald through the key-masking launcher, which logs it.
    assert ("_CMDLINE=/usr/bin/python3 -I /usr/local/lib/gpufleet/gpufleet_mask.py --secrets-env SGLANG_API_KEY -- "
            "/opt/sglang-venv/bin/python /usr/local/lib/gpufleet/sglang-launch.py") in journal
    assert KEY not in journal
    # SGLang logs its server_args, the key included, at every start: masked.
    assert "server_args=ServerArgs(model_path=" in journal and "api_key='***'" in journal


def test_environment_of_the_service_is_private(host):
    """The key reaches SGLang through the environment: readable by root and sglang, not by others."""
    for pid in _main_pids(host):
        assert host.run("runuser -u nobody -- cat /proc/%s/environ" % pid).rc != 0
