# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""No key leaks: every key value of the session is looked for in the whole output of every
ansible-playbook run of the suite (site.yml with -vvv and --diff; check mode; a run with a wrong gate
key and an unreachable host; the fault runs of test_faults.py; the failing and the repairing
rotate_keys.yml runs of test_rotation_faults.py, whose old and new keys are in the list), in the host's journal, in every file
under /etc, /opt and /var/log except the key files themselves, and in every process's command line.
The key files are readable only by root and the one service that needs them."""

import re

from conftest import KEY_FILES, files_holding, hits, journal_hits, new_key

SERVICE_USERS = ('tabbyapi', 'llamacpp', 'sglang', 'llm-router')


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


def test_zz_no_key_in_the_journal(converged):
    """-o verbose: also journald's trusted fields, e.g. _CMDLINE of every process that logged."""
    assert journal_hits(converged.name, converged.secrets()) == []


def test_zz_no_key_in_any_file_but_the_key_files(converged):
    for path in KEY_FILES:
        assert converged.sh('test -f %s' % path, check=False).returncode == 0, '%s missing' % path
    assert files_holding(converged.name, converged.secrets()) == []      # /var/log/journal/* included


def test_zz_key_files_are_readable_only_by_their_service(converged):
    for path, (owner, group, mode) in KEY_FILES.items():
        assert converged.sh("stat -c '%U %G %a' " + path).stdout.split() == [owner, group, mode], path
    for path, (_ign, group, _ign) in KEY_FILES.items():
        for user in SERVICE_USERS:
            allowed = user == group
            proc = converged.sh('runuser -u %s -- cat %s >/dev/null' % (user, path), check=False)
            assert (proc.returncode == 0) == allowed, '%s reading %s: rc %d' % (user, path, proc.returncode)


def test_zz_no_key_in_any_process_command_line(converged):
    """Command lines are world-readable (/proc/PID/cmdline, ps, systemctl status)."""
    cmdlines = converged.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done").stdout
    assert '-m llm_router --config ' in cmdlines                          # the router is among them
    leaking = [line for line in cmdlines.splitlines() if hits(line, converged.secrets())]
    masked = [re.sub(r'(--api-key )\S+', r'\1<KEY>', line) for line in leaking]
    assert masked == [], 'keys on command lines'


def test_zz_no_key_visible_to_an_unprivileged_user_through_systemctl(converged):
    proc = converged.sh('runuser -u nobody -- systemctl status --no-pager --full --lines=0 '
                        'tabbyapi.service llamacpp@tiny.service sglang@chat.service llm-router.service', check=False)
    text = proc.stdout + proc.stderr
    assert 'llm-router.service' in text
    assert hits(text, converged.secrets()) == [], 'systemctl status shows a key to every user'
