# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Key rotation on two converged systemd hosts (the real TabbyAPI, main on one and exl2-checkpoint on the
other, no model; the real llama-server; the router) with a
real OpenBao dev server and a real ansible-vault file. The tests run in file order and build on
each other: rotate from OpenBao, interrupt a rotation after the store step and finish it with a
re-run, rotate from Ansible Vault, then look for every key value ever stored in every -vvv output
and in the hosts' journals.

No key value is printed: keys reach the playbooks through 0600 extra-vars files, and the checks
count matches instead of showing them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import hvac
import yaml

EPHEMERAL = Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])
SCENARIO = Path(os.environ['MOLECULE_SCENARIO_DIRECTORY'])
PROJECT = Path(os.environ['MOLECULE_PROJECT_DIRECTORY'])
INVENTORY = os.environ.get('MOLECULE_INVENTORY_FILE', str(EPHEMERAL / 'inventory'))
VAULT_FILE = SCENARIO / 'group_vars' / 'all' / 'vault.yml'
KV_PATH = 'gpufleet/molecule'
SCOPES = ('tabbyapi', 'llamacpp', 'sglang', 'router')
HOSTS = ('gpufleet-rotation-1', 'gpufleet-rotation-2')
LOGS = EPHEMERAL / 'rotation-logs'
BIN = Path(sys.executable).parent


def env():
    e = dict(os.environ)
    e.update({
        'ANSIBLE_CONFIG': str(EPHEMERAL / 'ansible.cfg'),
        'ANSIBLE_ROLES_PATH': str(PROJECT / 'roles'),
        'ANSIBLE_VAULT_PASSWORD_FILE': str(SCENARIO / 'vault-pass.sh'),
        'ANSIBLE_NOCOLOR': '1',
        'PATH': '%s:%s' % (BIN, e.get('PATH', '')),
    })
    return e


def playbook(name, *args, log=None):
    """Run a playbook; with log, at -vvv and kept under LOGS for the final search."""
    cmd = [str(BIN / 'ansible-playbook'), '-i', INVENTORY, name] + list(args)
    if log:
        cmd.insert(1, '-vvv')
    proc = subprocess.run(cmd, cwd=str(PROJECT), env=env(), capture_output=True, text=True,
                          timeout=3600, check=False)
    out = proc.stdout + proc.stderr
    if log:
        LOGS.mkdir(exist_ok=True)
        (LOGS / (log + '.log')).write_text(out)
    return proc.returncode, out


def rotate(log, **extra):
    args = ['playbooks/rotate_keys.yml']
    for k, v in extra.items():
        args += ['-e', json.dumps({k: v})]
    return playbook(*args, log=log)


def bao():
    return hvac.Client(url=(EPHEMERAL / 'bao-addr').read_text(), token=(EPHEMERAL / 'bao-token').read_text())


def kv(scope, version=None):
    answer = bao().secrets.kv.v2.read_secret_version(path='%s/%s' % (KV_PATH, scope), version=version,
                                                     raise_on_deleted_version=True)
    return answer['data']['data'], answer['data']['metadata']['version']


def vault_vars(path=VAULT_FILE):
    proc = subprocess.run([str(BIN / 'ansible-vault'), 'view', str(path)], capture_output=True,
                          text=True, env=env(), check=False)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def keys_of(secret_by_scope):
    """{scope: [current keys]} from {scope: KV secret}."""
    out = {}
    for scope, data in secret_by_scope.items():
        keys = []
        for field in ('api_key', 'admin_key', 'client_api_keys'):
            value = data.get(field)
            if value:
                keys.extend(value if isinstance(value, list) else [value])
        out[scope] = keys
    return out


def keys_of_vault(data):
    return {
        'tabbyapi': [data['vault_tabbyapi_api_key'], data['vault_tabbyapi_admin_key']],
        'llamacpp': [data['vault_llamacpp_api_key']],
        'sglang': [data['vault_sglang_api_key']],
        'router': list(data['vault_llm_router_client_api_keys']),
    }


def check(accept, refuse):
    """Every host accepts every key in accept and refuses (401) every key in refuse."""
    extra = EPHEMERAL / 'check-keys.yml'
    extra.write_text(yaml.safe_dump({'check_keys': {'accept': accept, 'refuse': refuse}}))
    extra.chmod(0o600)
    try:
        rc, out = playbook(str(SCENARIO / 'check_keys.yml'), '-e', '@' + str(extra))
    finally:
        extra.unlink()
    assert rc == 0, out[-4000:]
    return out


def every_stored_key():
    values = set()
    for scope in SCOPES:
        latest = kv(scope)[1]
        for version in range(1, latest + 1):
            for keys in keys_of({scope: kv(scope, version)[0]}).values():
                values.update(keys)
            data = kv(scope, version)[0]
            for name, value in data.items():
                if name.endswith('_previous'):
                    values.update(value)
    for path in VAULT_FILE.parent.glob('vault.yml*'):
        data = vault_vars(path)
        for name, value in data.items():
            if 'key' in name and not name.startswith('vault_gpufleet'):
                values.update(value if isinstance(value, list) else [value])
    return {v for v in values if v}


STATE = {}


def test_converged_hosts_accept_the_openbao_keys():
    current = {scope: kv(scope)[0] for scope in SCOPES}
    STATE['first'] = keys_of(current)
    out = check(accept=STATE['first'], refuse={s: ['not-a-key-' + s] for s in ('tabbyapi', 'llamacpp', 'router')})
    # per host: 2 TabbyAPI keys, 1 llama.cpp key and 2 client keys accepted, 3 wrong keys refused
    assert 'checked 8 answers' in out


def test_interrupted_rotation_from_openbao_is_finished_by_a_rerun():
    before = {scope: kv(scope) for scope in SCOPES}
    rc, out = rotate('openbao-interrupted', rotate_fail_after_store=True)
    assert rc != 0
    assert 'Stopped after storing the new keys of tabbyapi, llamacpp, router' in out
    pending = {scope: kv(scope) for scope in ('tabbyapi', 'llamacpp', 'router')}
    for scope, (data, version) in pending.items():
        assert data['rotation_pending'] is True and version == before[scope][1] + 1
        assert kv(scope, before[scope][1])[0] == before[scope][0]   # the older version is kept
    stored = keys_of({s: pending[s][0] for s in pending})
    for scope in stored:
        assert not set(stored[scope]) & set(STATE['first'][scope])
        assert all(len(k) == 48 and k.isalnum() for k in stored[scope])
    # No host has seen the stored keys yet; every host still works with the keys it had.
    check(accept={s: STATE['first'][s] for s in stored}, refuse=stored)

    rc, out = rotate('openbao-resumed')
    assert rc == 0, out[-4000:]
    assert 'interrupted rotation finished: tabbyapi, llamacpp, router' in out
    assert 'keys rotated: tabbyapi_api_key, tabbyapi_admin_key, llamacpp_api_key, llm_router_client_api_keys' in out
    assert 'hosts: gpufleet-rotation-1, gpufleet-rotation-2' in out
    after = {scope: kv(scope) for scope in SCOPES}
    for scope in stored:
        assert after[scope][1] == pending[scope][1] + 1              # only the final write
        assert after[scope][0]['rotation_pending'] is False
        assert keys_of({scope: after[scope][0]})[scope] == stored[scope]   # the stored keys, no new ones
    assert after['sglang'] == before['sglang']                       # no host runs SGLang here
    check(accept=stored, refuse={s: STATE['first'][s] for s in stored})
    STATE['second'] = stored


def test_rotation_from_ansible_vault():
    first = vault_vars()
    rc, out = rotate('ansible-vault-rotation', gpufleet_key_source='ansible_vault',
                     rotate_scope=['llamacpp'], rotate_serial='2')
    assert rc == 0, out[-4000:]
    assert 'key source: ansible_vault' in out
    assert 'keys rotated: llamacpp_api_key' in out
    final = vault_vars()
    assert VAULT_FILE.read_text().startswith('$ANSIBLE_VAULT;')
    assert final['vault_gpufleet_rotation_pending'] == []
    assert final['vault_unrelated_setting'] == 'kept as it is'
    for name in ('vault_tabbyapi_api_key', 'vault_llm_router_client_api_keys'):
        assert final[name] == first[name]                            # outside the scope
    assert final['vault_llamacpp_api_key'] != first['vault_llamacpp_api_key']
    backups = sorted(VAULT_FILE.parent.glob('vault.yml.*.bak'))
    assert len(backups) == 2                                         # before the pending write, before the final
    assert all(b.read_text().startswith('$ANSIBLE_VAULT;') for b in backups)
    assert vault_vars(backups[0]) == first
    assert vault_vars(backups[1])['vault_gpufleet_rotation_pending'] == ['llamacpp']
    check(accept={'llamacpp': [final['vault_llamacpp_api_key']]},
          refuse={'llamacpp': [first['vault_llamacpp_api_key']] + STATE['second']['llamacpp']})


def test_no_key_value_in_any_output_or_journal(host):
    values = every_stored_key()
    assert len(values) >= 15
    logs = sorted(LOGS.glob('*.log'))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert 'ESTABLISH' in text or '<127.0.0.1>' in text or 'EXEC' in text   # it is a -vvv log
        hits = sum(1 for v in values if v in text)
        assert hits == 0, '%d key values in %s' % (hits, log.name)
    journal = host.run('journalctl --no-pager -o cat').stdout
    assert len(journal) > 0
    hits = sum(1 for v in values if v in journal)
    assert hits == 0, '%d key values in the journal of %s' % (hits, host.backend.get_hostname())
    # TabbyAPI logs its keys at every start (and exl2-checkpoint restarts for a key change): masked in
    # the journal and in TabbyAPI's own log files, for every key of every rotation.
    files = host.run('cat /var/log/tabbyapi/*.log').stdout
    for text in (journal, files):
        assert 'Your API key is: ***' in text and 'Your admin key is: ***' in text
    hits = sum(1 for v in values if v in files)
    assert hits == 0, '%d key values in the TabbyAPI log files of %s' % (hits, host.backend.get_hostname())
