"""A converge with a key TabbyAPI refuses fails at the gate, fast, with the 401 text and no key."""
import os
import subprocess
import time

KEYS = ("router-WRONG-KEY-5e6f", "tabby-api-KEY-3f9c1e7d", "tabby-admin-KEY-77ab02c4")


def test_backend_runs_with_the_vault_key_only(host):
    assert host.service("tabbyapi.service").is_running
    tokens = host.check_output("cat /opt/tabbyapi/api_tokens.yml")
    assert 'api_key: "tabby-api-KEY-3f9c1e7d"' in tokens
    assert "router-WRONG-KEY-5e6f" not in tokens


def test_converge_with_wrong_key_fails_at_the_gate_within_seconds(host):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    started = time.monotonic()
    run = subprocess.run(
        ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], "--diff",
         os.path.join(env["MOLECULE_SCENARIO_DIRECTORY"], "wrong-key.yml")],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "accept the key" in output and "Invalid API key" in output, output
    assert "http://127.0.0.1:5000" in output, output
    assert took < 60, "the failing converge took %.0f s" % took
    for key in KEYS:
        assert key not in output
    # The failed gate left the service itself alone.
    assert host.service("tabbyapi.service").is_running
