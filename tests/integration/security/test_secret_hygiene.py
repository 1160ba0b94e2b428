# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""No key leaks: every key value of the session is looked for in the whole output of every
ansible-playbook run of the suite (site.yml with -vvv and --diff; check mode; a run with a wrong gate
key and an unreachable host; the fault runs of test_faults.py; the failing and the repairing
rotate_keys.yml runs of test_rotation_faults.py, whose old and new keys are in the list), in the
journal of each host, in every file under /etc, /opt and /var/log except the key files themselves, in
every process's command line and in what systemctl shows every user. The key files are readable only by
root and the one service that needs them.

The suite's host runs the REAL TabbyAPI, which prints its API key and its admin key at every start, to
its console (the journal) and to its loguru log files (/var/log/tabbyapi): the greps below are what
prove that the roles' launcher (gpufleet_mask.py, tabbyapi_launch.py) masks them. The double host
(conftest.py: the TabbyAPI double, which prints them too, where the model-load faults ran) is grepped
the same way.
"""

import json
import re

import pytest

from conftest import KEY_FILES, files_holding, hits, journal_hits, new_key

SERVICE_USERS = ('tabbyapi', 'llamacpp', 'sglang', 'llm-router')
# TabbyAPI's process, the child of the key-masking launcher (the unit's MainPID).
SERVER = '/opt/tabbyapi-venv/bin/python /usr/local/lib/gpufleet/tabbyapi_launch.py'
DOUBLE_HOST_KEY_FILES = {path: who for path, who in KEY_FILES.items() if not path.startswith('/etc/sglang/')}


@pytest.fixture(params=['suite-host', 'double-host'])
def each_host(request, converged):
    """(host, its key files, its service users, its units): the suite's host, then the double host."""
    if request.param == 'suite-host':
        return (converged, KEY_FILES, SERVICE_USERS,
                'tabbyapi.service llamacpp@tiny.service sglang@chat.service llm-router.service')
    double = request.getfixturevalue('double_host')
    return (double, DOUBLE_HOST_KEY_FILES, tuple(u for u in SERVICE_USERS if u != 'sglang'),
            'tabbyapi.service llamacpp@tiny.service llm-router.service')


def test_the_suite_host_runs_the_real_tabbyapi_which_printed_both_keys_masked(converged):
    """What makes the greps below mean something: the real server (its tree, its answers with no model)
    started under the launcher, and its start message with both keys reached the journal and its log
    files masked."""
    host = converged
    assert host.sh('test -f /opt/tabbyapi/common/auth.py -a -f /opt/tabbyapi/main.py', check=False).returncode == 0
    status, body = host.http('http://127.0.0.1:5000/health')
    assert status == 200 and json.loads(body)['status'] == 'healthy', (status, body)
    status, body = host.http('http://127.0.0.1:5000/v1/model', key=host.keys['tabbyapi_api_key'], header='x-api-key')
    assert status == 503 and json.loads(body) == {'detail': 'No models are currently loaded.'}, (status, body)
    status, body = host.http('http://127.0.0.1:5000/v1/model')
    assert status == 401 and json.loads(body) == {'detail': 'Please provide an API key'}, (status, body)
    pid = host.sh('systemctl show -p MainPID --value tabbyapi.service').stdout.strip()
    launcher = host.sh("tr '\\0' ' ' < /proc/%s/cmdline" % pid).stdout
    assert 'gpufleet_mask.py' in launcher, launcher
    children = host.sh("for c in $(cat /proc/%s/task/*/children); do tr '\\0' ' ' < /proc/$c/cmdline; echo; done" % pid).stdout
    assert re.search(r'^%s ' % re.escape(SERVER), children, re.M), children   # TabbyAPI, the launcher's child
    journal = host.sh('journalctl --no-pager -o cat -u tabbyapi.service').stdout
    assert 'Your API key is: ***' in journal and 'Your admin key is: ***' in journal, journal[-3000:]
    logs = host.sh("find /var/log/tabbyapi -name '*.log' -type f").stdout.split()
    assert logs, 'TabbyAPI wrote no log file under /var/log/tabbyapi'
    text = host.sh('cat %s' % ' '.join(logs)).stdout
    assert 'Your API key is: ***' in text and 'Your admin key is: ***' in text
    assert hits(journal + text, host.secrets()) == []


def test_converge_with_vvv_and_diff_succeeded_without_printing_a_key(converged):
    rc, output, _ign = converged.converge
    assert rc == 0
    assert re.search(r'ESTABLISH .*CONNECTION', output) and '--- before' in output, 'not a -vvv --diff run'
    assert 'running, passed its readiness gate' in output
    assert hits(output, converged.secrets()) == []


def test_check_mode_diff_run_prints_no_key(converged):
    rc, output, _ign = converged.play('check-diff', '--check', '--diff', '-vvv')
    assert rc == 0, output[-4000:]
    assert hits(output, converged.secrets()) == []


def test_failing_run_wrong_gate_key_prints_no_key(converged):
    wrong = new_key('wrong')
    converged.extra_secrets.append(wrong)
    rc, output, _ign = converged.play('wrong-key', '-vvv', '--diff', '--tags', 'tabbyapi', overrides={'tabbyapi_gate_api_key': wrong})
    assert rc != 0
    assert 'rejected the API key sent as x-api-key' in output, output[-4000:]
    assert hits(output, converged.secrets()) == []


def test_failing_run_unreachable_host_prints_no_key(converged):
    """site.yml's rollout has max_fail_percentage 0: the unreachable host ends the batch."""
    missing = converged.name + '-gone'
    rc, output, _ign = converged.play('unreachable', '-vvv', '--diff', extra_hosts=[missing])
    assert rc != 0
    assert re.search(r'%s.*UNREACHABLE|UNREACHABLE.*%s' % (re.escape(missing), re.escape(missing)), output), output[-4000:]
    assert hits(output, converged.secrets()) == []


def test_zz_every_run_of_the_suite_printed_no_key(converged):
    """Runs last in this file: by then test_faults.py's runs are in the list too."""
    assert len(converged.outputs) >= 3
    leaks = [(label, hits(output, converged.secrets())) for label, _ign, output in converged.outputs]
    assert [x for x in leaks if x[1]] == [], 'keys printed by: %s' % [x[0] for x in leaks if x[1]]


def test_zz_no_key_in_the_journal(each_host):
    """-o verbose: also journald's trusted fields, e.g. _CMDLINE of every process that logged."""
    host = each_host[0]
    assert journal_hits(host.name, host.secrets()) == []


def test_zz_no_key_in_any_file_but_the_key_files(each_host):
    host, key_files = each_host[:2]
    for path in key_files:
        assert host.sh('test -f %s' % path, check=False).returncode == 0, '%s missing' % path
    assert files_holding(host.name, host.secrets()) == []      # /var/log/journal/* included


def test_zz_key_files_are_readable_only_by_their_service(each_host):
    host, key_files, users = each_host[:3]
    for path, (owner, group, mode) in key_files.items():
        assert host.sh("stat -c '%U %G %a' " + path).stdout.split() == [owner, group, mode], path
    for path, (_ign, group, _ign) in key_files.items():
        for user in users:
            allowed = user == group
            proc = host.sh('runuser -u %s -- cat %s >/dev/null' % (user, path), check=False)
            assert (proc.returncode == 0) == allowed, '%s reading %s: rc %d' % (user, path, proc.returncode)


def test_zz_no_key_in_any_process_command_line(each_host):
    """Command lines are world-readable (/proc/PID/cmdline, ps, systemctl status)."""
    host = each_host[0]
    cmdlines = host.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done").stdout
    assert '-m llm_router --config ' in cmdlines                          # the router is among them
    assert re.search(r'^%s ' % re.escape(SERVER), cmdlines, re.M)       # so is TabbyAPI
    leaking = [line for line in cmdlines.splitlines() if hits(line, host.secrets())]
    masked = [re.sub(r'(--api-key )\S+', r'\1<KEY>', line) for line in leaking]
    assert masked == [], 'keys on command lines'


def test_zz_no_key_visible_to_an_unprivileged_user_through_systemctl(each_host):
    host, units = each_host[0], each_host[3]
    proc = host.sh('runuser -u nobody -- systemctl status --no-pager --full --lines=0 ' + units, check=False)
    text = proc.stdout + proc.stderr
    assert 'llm-router.service' in text and 'tabbyapi.service' in text
    assert hits(text, host.secrets()) == [], 'systemctl status shows a key to every user'
