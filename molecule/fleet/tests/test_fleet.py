"""The fleet after gpufleet.llm.site: each host runs what its groups say, the routers answer real
requests, the router-managed backends of fleet-1 (exclusive swap, two backends) run one at a time,
and a rolling run with one wrong key stops at that host's gate while the host before it keeps
serving. Tests run in file order; the wrong-key run is last."""
import json
import os
import re
import subprocess

import pytest

KEYS = {
    "tabby_api": "fleet-tabby-api-KEY-5d2b91c07e",
    "tabby_admin": "fleet-tabby-admin-KEY-0a64f1e3",
    "llamacpp": "fleet-llamacpp-KEY-c3e8a0957b",
    "sglang": "fleet-sglang-KEY-71fd0b2e46",
    "client": "fleet-client-KEY-9e04c6b1a8",
    "wrong": "fleet-WRONG-KEY-66a0c2d9",
}
ROUTER = "http://127.0.0.1:4000"

# One chat request from inside a host (the test hosts publish no ports); prints status, then body.
CHAT = r"""
import json, sys, urllib.error, urllib.request
url, key, model = sys.argv[1:4]
body = json.dumps({"model": model, "max_tokens": 8,
                   "messages": [{"role": "user", "content": "Say hello"}]}).encode()
req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
    "Authorization": "Bearer " + key, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=120) as resp:
        print(resp.status)
        print(resp.read().decode())
except urllib.error.HTTPError as err:
    print(err.code)
    print(err.read().decode())
"""


def chat(host, url, key, model):
    out = host.check_output("python3 -c %s %s %s %s", CHAT, url, key, model)
    status, _sep, body = out.partition("\n")
    return int(status), json.loads(body) if body.strip().startswith("{") else body


def active(host, unit):
    return host.run("systemctl is-active %s", unit).stdout.strip()


def unit_exists(host, unit):
    return host.run("systemctl cat %s", unit).rc == 0


def enabled(host, unit):
    return host.run("systemctl is-enabled %s", unit).stdout.strip()


ROUTER_MANAGED = ("llamacpp@tiny.service", "sglang@chat.service")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_site(*extra, check=False):
    env = dict(os.environ)
    # Plain text, and stderr (where ansible-core 2.19 writes [ERROR] lines) in order with stdout.
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    scenario = env["MOLECULE_SCENARIO_DIRECTORY"]
    cmd = ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"], *extra,
           os.path.join(scenario, "converge.yml")]
    if check:
        cmd[1:1] = ["--check", "--diff"]
    run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=900, check=False)
    return run.returncode, ANSI.sub("", run.stdout)


def recap(output, name):
    match = re.search(r"^%s\s*:\s*(.*)$" % re.escape(name), output, re.M)
    assert match, "no recap line for %s" % name
    return dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1)))


def test_each_host_runs_what_its_groups_say(hosts):
    one, two, three = hosts["gpufleet-fleet-1"], hosts["gpufleet-fleet-2"], hosts["gpufleet-fleet-3"]
    # fleet-1: two backends behind an exclusive-swap router: router-managed, never enabled, and the
    # readiness proof through the router left exactly one of them running.
    assert active(one, "llm-router.service") == "active"
    assert [enabled(one, unit) for unit in ROUTER_MANAGED] == ["disabled", "disabled"]
    assert sorted(active(one, unit) for unit in ROUTER_MANAGED) == ["active", "inactive"]
    assert not unit_exists(one, "tabbyapi.service")
    assert active(two, "tabbyapi.service") == "active"
    assert active(two, "llm-router.service") == "active"
    assert not unit_exists(two, "llamacpp@tiny.service")
    assert active(three, "sglang@chat.service") == "active"
    assert active(three, "llamacpp@tiny.service") == "active"
    assert not unit_exists(three, "llm-router.service")
    assert not unit_exists(three, "tabbyapi.service")
    # Without a router the same backends are plain services, started at boot.
    assert [enabled(three, unit) for unit in ROUTER_MANAGED] == ["enabled", "enabled"]
    assert enabled(two, "tabbyapi.service") == "enabled"
    for name in ("gpufleet-fleet-1", "gpufleet-fleet-2"):
        assert enabled(hosts[name], "llm-router.service") == "enabled"


def test_router_answers_from_the_real_llama_server(hosts):
    status, reply = chat(hosts["gpufleet-fleet-1"], ROUTER, KEYS["client"], "tiny")
    assert status == 200, reply
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] >= 1


def test_router_managed_backends_run_one_at_a_time(hosts):
    one = hosts["gpufleet-fleet-1"]
    status, reply = chat(one, ROUTER, KEYS["client"], "Qwen2.5-7B-Instruct")
    assert status == 200, reply
    assert (active(one, "sglang@chat.service"), active(one, "llamacpp@tiny.service")) == ("active", "inactive")
    status, reply = chat(one, ROUTER, KEYS["client"], "tiny")
    assert status == 200, reply
    assert (active(one, "llamacpp@tiny.service"), active(one, "sglang@chat.service")) == ("active", "inactive")


def test_router_of_the_tabbyapi_host_answers_for_its_model(hosts):
    status, reply = chat(hosts["gpufleet-fleet-2"], ROUTER, KEYS["client"], "double-model-exl2")
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"]


def test_routers_refuse_a_wrong_client_key(hosts):
    for name in ("gpufleet-fleet-1", "gpufleet-fleet-2"):
        status, _answer = chat(hosts[name], ROUTER, KEYS["wrong"], "tiny")
        assert status == 401, name


def test_backends_without_a_router_take_only_their_key(hosts):
    three = hosts["gpufleet-fleet-3"]
    assert chat(three, "http://127.0.0.1:8080", KEYS["llamacpp"], "tiny")[0] == 200
    assert chat(three, "http://127.0.0.1:8080", KEYS["sglang"], "tiny")[0] == 401
    assert chat(three, "http://127.0.0.1:30000", KEYS["sglang"], "Qwen2.5-7B-Instruct")[0] == 200
    assert chat(three, "http://127.0.0.1:30000", KEYS["llamacpp"], "Qwen2.5-7B-Instruct")[0] == 401


def test_check_diff_run_changes_nothing_and_prints_no_key():
    rc, output = run_site(check=True)
    assert rc == 0, output
    assert "started on demand by the router" in output
    for name in ("gpufleet-fleet-1", "gpufleet-fleet-2", "gpufleet-fleet-3"):
        stats = recap(output, name)
        assert stats["changed"] == 0 and stats["failed"] == 0, (name, stats)
    for key in KEYS.values():
        assert key not in output


def test_limit_converges_only_the_named_host():
    rc, output = run_site("--limit", "gpufleet-fleet-3")
    assert rc == 0, output
    assert recap(output, "gpufleet-fleet-3")["changed"] == 0
    assert "gpufleet-fleet-1" not in output and "gpufleet-fleet-2" not in output


def test_rolling_run_with_a_wrong_key_stops_at_that_host_and_the_host_before_keeps_serving(hosts):
    wrong_key = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "inventory", "wrong-key.yml")
    rc, output = run_site("-i", wrong_key, "-e", "gpufleet_serial=1")
    assert rc == 2, output
    rolling = output[output.index("PLAY [Rolling rollout"):output.index("PLAY RECAP")]
    # fleet-1 went first and passed its gates; fleet-2 failed at its TabbyAPI gate with the 401 text.
    assert "ok: [gpufleet-fleet-1]" in rolling
    failed = re.search(r"(fatal|failed): \[gpufleet-fleet-2\]", rolling)
    assert failed, rolling[-3000:]
    fatal = rolling[max(0, failed.start() - 1500):]
    assert "401" in fatal and "Invalid API key" in fatal, fatal
    assert "http://127.0.0.1:5000" in fatal
    # The rollout stopped there: fleet-3 was never touched by the rolling play.
    assert "gpufleet-fleet-3" not in rolling
    assert recap(output, "gpufleet-fleet-1")["failed"] == 0
    assert recap(output, "gpufleet-fleet-2")["failed"] == 1
    for key in KEYS.values():
        assert key not in output
    # ...and the hosts before it (and the failed host's own backend) keep serving.
    status, reply = chat(hosts["gpufleet-fleet-1"], ROUTER, KEYS["client"], "tiny")
    assert status == 200, reply
    assert active(hosts["gpufleet-fleet-2"], "tabbyapi.service") == "active"
    assert active(hosts["gpufleet-fleet-3"], "llamacpp@tiny.service") == "active"


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_keys_in_units(hosts):
    """Keys live in 0600/0640 files, never in unit files or command lines."""
    yield
    for name, host in hosts.items():
        units = host.run("cat /etc/systemd/system/*.service 2>/dev/null").stdout
        for key in KEYS.values():
            assert key not in units, name
