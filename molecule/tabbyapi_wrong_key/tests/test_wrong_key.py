"""The REAL TabbyAPI (the vendored snapshots, no model: none can load without a GPU) under the role's
unit: a converge with a key it refuses fails at the gate, fast, with its 401 text and no key; the keys
it logs at every start and the keys it reloads live (main) never reach the journal or its log files."""
import os
import re
import subprocess
import time

API_KEY = "tabby-api-KEY-3f9c1e7d"
PREVIOUS_KEY = "tabby-previous-KEY-0d1e"
KEYS = ("router-WRONG-KEY-5e6f", API_KEY, "tabby-admin-KEY-77ab02c4", PREVIOUS_KEY)

# /v1/models: 200 with a good key (an empty list: no model), 401 without ("-": no header) or a wrong key.
STATUS = ("python3 -c 'import urllib.request as u, urllib.error as e, sys\n"
          "k = sys.argv[1]\n"
          "r = u.Request(\"http://127.0.0.1:5000/v1/models\", headers={\"x-api-key\": k} if k != \"-\" else {})\n"
          "try: print(u.urlopen(r, timeout=5).status)\n"
          "except e.HTTPError as x: print(x.code, x.read().decode())' %s")


def no_key_anywhere(host):
    """No key value in the journal, TabbyAPI's log files or systemctl status; returns the journal of
    tabbyapi.service and the text of the log files, for the caller's own checks."""
    journal = host.check_output("journalctl --no-pager -o cat")
    files = host.check_output("find /var/log/tabbyapi /opt/tabbyapi/logs/ -type f").split()
    assert files, "TabbyAPI wrote no log file"
    text = host.check_output("cat %s" % " ".join(sorted(set(files))))
    status = host.run("systemctl status --no-pager -l tabbyapi.service").stdout
    for key in KEYS:
        assert key not in journal and key not in text and key not in status
    return host.check_output("journalctl --no-pager -o cat -u tabbyapi.service"), text


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
    # the real exl2-checkpoint code, with the pydantic it pins
    assert "def entrypoint(" in host.check_output("cat /opt/tabbyapi/main.py")
    assert host.check_output("/opt/tabbyapi-venv/bin/python -c 'import pydantic; print(pydantic.VERSION)'") == "2.11.0"
    assert host.check_output(STATUS % API_KEY) == "200"
    assert host.check_output(STATUS % "-") == '401 {"detail":"Please provide an API key"}'
    assert host.check_output(STATUS % "wrong-key-123") == '401 {"detail":"Invalid API key"}'


def test_the_keys_tabbyapi_logs_at_start_are_masked(host):
    journal, files = no_key_anywhere(host)
    for text in (journal, files):
        assert "Your API key is: ***" in text and "Your admin key is: ***" in text


def test_main_branch_takes_a_key_list_and_rereads_it(host):
    rc, output = playbook("main-branch.yml")
    assert rc == 0, output
    tokens = host.check_output("cat /opt/tabbyapi/api_tokens.yml")
    assert 'api_key: ["%s", "%s"]' % (API_KEY, PREVIOUS_KEY) in tokens
    assert host.check_output(STATUS % PREVIOUS_KEY) == "200"
    pid = host.check_output("systemctl show -p MainPID --value tabbyapi.service")
    host.check_output("sed -i 's/, \"%s\"//' /opt/tabbyapi/api_tokens.yml" % PREVIOUS_KEY)
    deadline = time.time() + 10
    while not host.check_output(STATUS % PREVIOUS_KEY).startswith("401") and time.time() < deadline:
        time.sleep(0.5)
    assert host.check_output(STATUS % PREVIOUS_KEY) == '401 {"detail":"Invalid API key"}'
    assert host.check_output(STATUS % API_KEY) == "200"
    assert host.check_output("systemctl show -p MainPID --value tabbyapi.service") == pid
    # main reloaded the file without a restart; neither the removed key nor the others were printed
    journal, _files = no_key_anywhere(host)
    assert "Reloaded auth keys from api_tokens.yml (1 API key(s))." in journal


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
    assert waited and float(waited.group(1)) < 150, output   # tabbyapi_gate_timeout is 300
    # The failed gate left the service itself alone.
    assert host.service("tabbyapi.service").is_running
    no_key_anywhere(host)
