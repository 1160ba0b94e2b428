"""A converge with a key TabbyAPI refuses fails at the gate, fast, with the 401 text and no key."""
import os
import re
import subprocess
import time

API_KEY = "tabby-api-KEY-3f9c1e7d"
PREVIOUS_KEY = "tabby-previous-KEY-0d1e"
KEYS = ("router-WRONG-KEY-5e6f", API_KEY, "tabby-admin-KEY-77ab02c4", PREVIOUS_KEY)

STATUS = ("python3 -c 'import urllib.request as u, urllib.error as e, sys\n"
          "r = u.Request(\"http://127.0.0.1:5000/v1/model\", headers={\"x-api-key\": sys.argv[1]})\n"
          "try: print(u.urlopen(r, timeout=5).status)\n"
          "except e.HTTPError as x: print(x.code)' %s")


def playbook(name):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], "--diff",
         os.path.join(env["MOLECULE_SCENARIO_DIRECTORY"], name)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    output = run.stdout + run.stderr
    for key in KEYS:
        assert key not in output
    return run.returncode, output


def test_backend_runs_with_the_vault_key_only(host):
    assert host.service("tabbyapi.service").is_running
    tokens = host.check_output("cat /opt/tabbyapi/api_tokens.yml")
    assert 'api_key: "tabby-api-KEY-3f9c1e7d"' in tokens
    assert "router-WRONG-KEY-5e6f" not in tokens


def test_main_branch_takes_a_key_list_and_rereads_it(host):
    rc, output = playbook("main-branch.yml")
    assert rc == 0, output
    tokens = host.check_output("cat /opt/tabbyapi/api_tokens.yml")
    assert 'api_key: ["%s", "%s"]' % (API_KEY, PREVIOUS_KEY) in tokens
    assert host.check_output(STATUS % PREVIOUS_KEY) == "200"
    pid = host.check_output("systemctl show -p MainPID --value tabbyapi.service")
    host.check_output("sed -i 's/, \"%s\"//' /opt/tabbyapi/api_tokens.yml" % PREVIOUS_KEY)
    deadline = time.time() + 6
    while host.check_output(STATUS % PREVIOUS_KEY) != "401" and time.time() < deadline:
        time.sleep(0.5)
    assert host.check_output(STATUS % PREVIOUS_KEY) == "401"
    assert host.check_output(STATUS % API_KEY) == "200"
    assert host.check_output("systemctl show -p MainPID --value tabbyapi.service") == pid


def test_state_stopped_configures_without_start_or_gate(host):
    # the gate would refuse this key: a passing run proves that no gate ran
    rc, output = playbook("stopped.yml")
    assert rc == 0, output
    assert host.run("systemctl is-active tabbyapi.service").stdout.strip() == "inactive"
    assert host.check_output("systemctl is-enabled tabbyapi.service") == "enabled"
    assert host.file("/opt/tabbyapi/api_tokens.yml").mode == 0o640


def test_converge_with_wrong_key_fails_at_the_gate_within_seconds(host):
    rc, output = playbook("wrong-key.yml")
    assert rc == 2, output
    assert "accept the key" in output and "Invalid API key" in output, output
    assert "http://127.0.0.1:5000" in output, output
    # The gate's own time (the service was stopped: it includes the start and the model load).
    waited = re.search(r'fatal: .*"elapsed": ([0-9.]+)', output)
    assert waited and float(waited.group(1)) < 20, output
    # The failed gate left the service itself alone.
    assert host.service("tabbyapi.service").is_running
