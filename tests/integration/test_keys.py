# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key sources and the key store of gpufleet.llm.keys against a REAL OpenBao dev server (started
here on a free loopback port) and REAL ansible-vault files: KV v2 versions, the pending-rotation
marker, resuming an interrupted rotation, re-encryption with an encrypted backup, `ansible-vault
rekey`, and that no key value ever reaches the output of a run, not even at -vvv.

The playbooks run on localhost only; the roll-out to hosts is tested by molecule/rotation.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import hvac
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'support'))
from openbao import DevServer  # noqa: E402
import router_package  # noqa: E402  pylint: disable=wrong-import-position

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = shutil.which('ansible-playbook', path=str(VENV_BIN)) or 'ansible-playbook'
ANSIBLE_VAULT = shutil.which('ansible-vault', path=str(VENV_BIN)) or 'ansible-vault'
COLLECTIONS = ROOT / 'build' / 'collections'
SCOPES = ('tabbyapi', 'llamacpp', 'sglang', 'router')
KV_PATH = 'gpufleet/test'

# Runs the keys role the way rotate_keys.yml does, minus the roll-out to hosts.
STORE_PLAYBOOK = """
- name: Key store test
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the keys
      ansible.builtin.include_role:
        name: gpufleet.llm.keys
    - name: Begin the rotation
      ansible.builtin.include_role:
        name: gpufleet.llm.keys
        tasks_from: rotate_begin
      vars:
        keys_rotate_scope: "{{ rotate_scope | default('all') }}"
        keys_rotate_client_keys: "{{ rotate_client_keys | default([]) }}"
        keys_fail_after_store: "{{ rotate_fail_after_store | default(false) }}"
      when: rotate | default(true) | bool
    - name: End the rotation
      ansible.builtin.include_role:
        name: gpufleet.llm.keys
        tasks_from: rotate_end
      when: rotate | default(true) | bool and finish | default(true) | bool
    - name: Report what the play sees, without values
      ansible.builtin.copy:
        dest: "{{ report }}"
        mode: "0600"
        content: "{{ {'names': names, 'lengths': names | map('extract', vars) | map('length') | list,
                      'previous': previous | map('extract', vars) | map('length') | list} | to_json }}"
      vars:
        names: "{{ report_names | default(['tabbyapi_api_key', 'tabbyapi_admin_key', 'llamacpp_api_key',
                                           'sglang_api_key', 'llm_router_client_api_keys']) }}"
        previous: "{{ report_previous | default(['tabbyapi_api_key_previous', 'llamacpp_api_key_previous',
                                                 'llm_router_client_api_keys_previous']) }}"
      delegate_to: localhost
"""

INVENTORY = """
all:
  hosts:
    node:
      ansible_connection: local
      ansible_python_interpreter: {python}
  children:
    tabbyapi: {{hosts: {{node: {{}}}}}}
    llamacpp: {{hosts: {{node: {{}}}}}}
    sglang: {{hosts: {{node: {{}}}}}}
    llm_router: {{hosts: {{node: {{}}}}}}
"""

# The Ansible Vault layout of docs/keys.md: key variables point at vault_* variables.
MAPPING = """
tabbyapi_api_key: "{{ vault_tabbyapi_api_key }}"
tabbyapi_admin_key: "{{ vault_tabbyapi_admin_key }}"
tabbyapi_api_key_previous: "{{ vault_tabbyapi_api_key_previous | default([]) }}"
llamacpp_api_key: "{{ vault_llamacpp_api_key }}"
llamacpp_api_key_previous: "{{ vault_llamacpp_api_key_previous | default([]) }}"
sglang_api_key: "{{ vault_sglang_api_key }}"
llm_router_client_api_keys: "{{ vault_llm_router_client_api_keys }}"
llm_router_client_api_keys_previous: "{{ vault_llm_router_client_api_keys_previous | default([]) }}"
"""


def new_key():
    return secrets.token_hex(20)


def first_secrets():
    return {
        'tabbyapi': {'api_key': new_key(), 'admin_key': new_key()},
        'llamacpp': {'api_key': new_key()},
        'sglang': {'api_key': new_key()},
        'router': {'client_api_keys': [new_key(), new_key()]},
    }


def key_values(data):
    """Every key value in a secret or vault vars dict (strings longer than 30 under *key* names)."""
    values = set()
    for name, value in data.items():
        if 'key' not in name:
            continue
        if isinstance(value, dict):                                  # named client keys
            value = [k for v in value.values() for k in (v if isinstance(v, list) else [v])]
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and len(v) >= 30:
                values.add(v)
    return values


@pytest.fixture(scope='module')
def bao(tmp_path_factory):
    """A real OpenBao dev server on 127.0.0.1 (in memory, KV v2 at secret/), stopped afterwards."""
    server = DevServer(tmp_path_factory.mktemp('bao'))
    yield {'url': server.url, 'token': server.token, 'client': server.client}
    server.stop()


@pytest.fixture
def kv(bao, request):
    """A fresh KV path per test, seeded with first keys (version 1 of every scope)."""
    path = '%s/%s' % (KV_PATH, request.node.name.replace('[', '_').replace(']', ''))
    client = bao['client']
    first = first_secrets()
    for scope, data in first.items():
        client.secrets.kv.v2.create_or_update_secret(path='%s/%s' % (path, scope), secret=data)
    return {'path': path, 'first': first, 'client': client, 'url': bao['url'], 'token': bao['token']}


def kv_read(kv, scope, version=None):
    answer = kv['client'].secrets.kv.v2.read_secret_version(
        path='%s/%s' % (kv['path'], scope), version=version, raise_on_deleted_version=True)
    return answer['data']['data'], answer['data']['metadata']['version']


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / 'inventory' / 'group_vars' / 'all').mkdir(parents=True)
    (tmp_path / 'inventory' / 'hosts.yml').write_text(INVENTORY.format(python=sys.executable))
    (tmp_path / 'store.yml').write_text(STORE_PLAYBOOK)
    password = tmp_path / 'vault-password'
    password.write_text(secrets.token_urlsafe(24) + '\n')
    password.chmod(0o600)
    return tmp_path


def env_for(workdir, password=None):
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': str(COLLECTIONS),
        'ANSIBLE_VAULT_PASSWORD_FILE': str(password or workdir / 'vault-password'),
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_RETRY_FILES_ENABLED': '0',
        'PATH': '%s:%s' % (VENV_BIN, env.get('PATH', '')),
    })
    env.pop('VAULT_ADDR', None)
    env.pop('VAULT_TOKEN', None)
    return env


def run_playbook(workdir, extra, password=None, logs=None):
    """ansible-playbook -vvv; returns (rc, output, report). Extra vars go through a 0600 file so no
    key or token is on a command line."""
    extra = dict(extra, report=str(workdir / 'report.json'))
    extra_file = workdir / 'extra.yml'
    extra_file.write_text(yaml.safe_dump(extra))
    extra_file.chmod(0o600)
    report = workdir / 'report.json'
    if report.exists():
        report.unlink()
    proc = subprocess.run(
        [ANSIBLE_PLAYBOOK, '-vvv', '-i', str(workdir / 'inventory' / 'hosts.yml'),
         str(workdir / 'store.yml'), '-e', '@' + str(extra_file)],
        cwd=str(workdir), env=env_for(workdir, password), capture_output=True, text=True, timeout=600,
        check=False)
    output = proc.stdout + proc.stderr
    if logs is not None:
        logs.append(output)
    data = yaml.safe_load(report.read_text()) if report.exists() else None
    return proc.returncode, output, data


def hashi_extra(kv, **more):
    extra = {'gpufleet_key_source': 'hashi_vault', 'gpufleet_vault_url': kv['url'],
             'gpufleet_vault_token': kv['token'], 'gpufleet_vault_path': kv['path']}
    extra.update(more)
    return extra


def assert_no_key_in(outputs, values):
    assert values, 'nothing to look for'
    for output in outputs:
        leaked = [v for v in values if v in output]
        # Counted, never shown: the assertion message must not carry a key either.
        assert len(leaked) == 0, '%d key values appear in the output of a run' % len(leaked)


def all_kv_values(kv):
    values = set()
    for scope in SCOPES:
        try:
            latest = kv_read(kv, scope)[1]
        except hvac.exceptions.InvalidPath:
            continue
        for version in range(1, latest + 1):
            values |= key_values(kv_read(kv, scope, version)[0])
    return values


# --- OpenBao / HashiCorp Vault --------------------------------------------------------------

def test_hashi_read_sets_the_key_variables(kv, workdir):
    logs = []
    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate=False), logs=logs)
    assert rc == 0, out[-3000:]
    assert report['lengths'] == [40, 40, 40, 40, 2]
    assert report['previous'] == [0, 0, 0]
    assert_no_key_in(logs, all_kv_values(kv) | {kv['token']})


def test_hashi_rotation_writes_new_versions_and_keeps_the_old(kv, workdir):
    logs = []
    rc, out, report = run_playbook(workdir, hashi_extra(kv, finish=False), logs=logs)
    assert rc == 0, out[-3000:]
    for scope in SCOPES:
        pending, version = kv_read(kv, scope)
        assert version == 2
        assert pending['rotation_pending'] is True
        old, old_version = kv_read(kv, scope, version=1)
        assert old_version == 1 and old == kv['first'][scope]        # the older version is kept
        for field, value in kv['first'][scope].items():
            assert pending[field + '_previous'] == (value if isinstance(value, list) else [value])
            new = pending[field]
            for k in new if isinstance(new, list) else [new]:
                assert len(k) == 48 and k.isalnum()
                assert k not in key_values(kv['first'][scope])
    assert len(all_kv_values(kv)) == 2 * 6                          # every new key is unique
    # The play sees the new keys and, where the contract has a list, the old ones as previous.
    assert report['lengths'] == [48, 48, 48, 48, 2]
    assert report['previous'] == [1, 1, 2]

    rc, out, report = run_playbook(workdir, hashi_extra(kv), logs=logs)
    assert rc == 0, out[-3000:]
    for scope in SCOPES:
        final, version = kv_read(kv, scope)
        pending, dummy = kv_read(kv, scope, version=2)
        assert version == 3                                          # resumed: no third key made
        assert final['rotation_pending'] is False
        for field in kv['first'][scope]:
            assert final[field] == pending[field]
            assert final[field + '_previous'] == []
    assert report['previous'] == [0, 0, 0]
    assert 'interrupted rotation finished' not in out  # the summary belongs to rotate_keys.yml
    assert_no_key_in(logs, all_kv_values(kv) | {kv['token']})


def test_hashi_interrupted_rotation_is_finished_by_the_next_run(kv, workdir):
    logs = []
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate_fail_after_store=True), logs=logs)
    assert rc != 0
    assert 'Stopped after storing the new keys' in out
    stored = {scope: kv_read(kv, scope) for scope in SCOPES}
    assert all(data['rotation_pending'] and version == 2 for data, version in stored.values())

    rc, out, dummy = run_playbook(workdir, hashi_extra(kv), logs=logs)
    assert rc == 0, out[-3000:]
    for scope in SCOPES:
        final, version = kv_read(kv, scope)
        assert version == 3
        assert final['rotation_pending'] is False
        for field in kv['first'][scope]:
            assert final[field] == stored[scope][0][field]           # the stored keys, not new ones
    assert_no_key_in(logs, all_kv_values(kv) | {kv['token']})


def test_hashi_rotation_scope_limits_what_changes(kv, workdir):
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate_scope=['router']))
    assert rc == 0, out[-3000:]
    assert kv_read(kv, 'router')[1] == 3
    for scope in ('tabbyapi', 'llamacpp', 'sglang'):
        assert kv_read(kv, scope) == (kv['first'][scope], 1)


def test_hashi_unknown_scope_is_refused(kv, workdir):
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate_scope=['vllm']))
    assert rc != 0
    assert 'rotate_scope must be all or a list of scopes' in out
    assert all(kv_read(kv, scope)[1] == 1 for scope in SCOPES)


def test_hashi_missing_secret_is_named(kv, workdir):
    kv['client'].secrets.kv.v2.delete_metadata_and_all_versions(path='%s/sglang' % kv['path'])
    logs = []
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate=False), logs=logs)
    assert rc != 0
    assert 'Could not read secret/%s/sglang' % kv['path'] in out
    assert_no_key_in(logs, all_kv_values(kv) | {kv['token']})


def test_hashi_secret_lacking_a_field_is_named(kv, workdir):
    kv['client'].secrets.kv.v2.create_or_update_secret(
        path='%s/tabbyapi' % kv['path'], secret={'api_key': new_key()})
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate=False))
    assert rc != 0
    assert 'the key secret of scope tabbyapi lacks admin_key' in out


# --- Ansible Vault ---------------------------------------------------------------------------

def write_vault_file(workdir, data, password=None):
    target = workdir / 'inventory' / 'group_vars' / 'all' / 'vault.yml'
    subprocess.run([ANSIBLE_VAULT, 'encrypt', '--output', str(target), '-'],
                   input=yaml.safe_dump(data), text=True, check=True, capture_output=True,
                   env=env_for(workdir, password))
    (workdir / 'inventory' / 'group_vars' / 'all' / 'keys.yml').write_text(MAPPING)
    return target


def vault_view(workdir, path, password=None):
    proc = subprocess.run([ANSIBLE_VAULT, 'view', str(path)], capture_output=True, text=True,
                          env=env_for(workdir, password), check=False)
    return proc.returncode, (yaml.safe_load(proc.stdout) if proc.returncode == 0 else None), proc.stderr


def first_vault_vars():
    first = first_secrets()
    return {
        'vault_tabbyapi_api_key': first['tabbyapi']['api_key'],
        'vault_tabbyapi_admin_key': first['tabbyapi']['admin_key'],
        'vault_llamacpp_api_key': first['llamacpp']['api_key'],
        'vault_sglang_api_key': first['sglang']['api_key'],
        'vault_llm_router_client_api_keys': first['router']['client_api_keys'],
        'vault_unrelated': 'kept as it is',
    }


def all_vault_values(workdir, target):
    values = set()
    for path in target.parent.glob('vault.yml*'):
        rc, data, err = vault_view(workdir, path)
        assert rc == 0, err
        values |= key_values(data)
    return values


def test_ansible_vault_rotation_reencrypts_in_place_with_encrypted_backups(workdir):
    first = first_vault_vars()
    target = write_vault_file(workdir, first)
    logs = []
    rc, out, report = run_playbook(workdir, {'finish': False}, logs=logs)
    assert rc == 0, out[-3000:]
    assert target.read_text().startswith('$ANSIBLE_VAULT;1.1;AES256')
    assert oct(target.stat().st_mode & 0o777) == '0o600'
    rc, pending, err = vault_view(workdir, target)
    assert rc == 0, err
    assert pending['vault_gpufleet_rotation_pending'] == sorted(SCOPES)
    assert pending['vault_llamacpp_api_key_previous'] == [first['vault_llamacpp_api_key']]
    assert pending['vault_llm_router_client_api_keys_previous'] == first['vault_llm_router_client_api_keys']
    assert pending['vault_tabbyapi_admin_key_previous'] == [first['vault_tabbyapi_admin_key']]
    assert pending['vault_llamacpp_api_key'] != first['vault_llamacpp_api_key']
    assert pending['vault_unrelated'] == 'kept as it is'
    backups = sorted(target.parent.glob('vault.yml.*.bak'))
    assert len(backups) == 1
    assert backups[0].read_text().startswith('$ANSIBLE_VAULT;')      # the backup is encrypted
    assert oct(backups[0].stat().st_mode & 0o777) == '0o600'
    assert vault_view(workdir, backups[0])[1] == first               # ... and holds the previous file
    assert not list(target.parent.glob('vault.yml.new'))
    assert report['previous'] == [1, 1, 2]

    rc, out, report = run_playbook(workdir, {}, logs=logs)          # resumes, then finishes
    assert rc == 0, out[-3000:]
    rc, final, err = vault_view(workdir, target)
    assert rc == 0, err
    assert final['vault_gpufleet_rotation_pending'] == []
    for name in ('vault_tabbyapi_api_key', 'vault_tabbyapi_admin_key', 'vault_llamacpp_api_key',
                 'vault_sglang_api_key', 'vault_llm_router_client_api_keys'):
        assert final[name] == pending[name]                          # no third key
        assert final[name + '_previous'] == []
    assert len(sorted(target.parent.glob('vault.yml.*.bak'))) == 2
    assert report['previous'] == [0, 0, 0]
    assert_no_key_in(logs, all_vault_values(workdir, target))


def test_ansible_vault_interrupted_rotation_is_finished_by_the_next_run(workdir):
    target = write_vault_file(workdir, first_vault_vars())
    logs = []
    rc, out, dummy = run_playbook(workdir, {'rotate_fail_after_store': True}, logs=logs)
    assert rc != 0
    assert 'Stopped after storing the new keys' in out
    stored = vault_view(workdir, target)[1]
    assert sorted(stored['vault_gpufleet_rotation_pending']) == sorted(SCOPES)
    rc, out, dummy = run_playbook(workdir, {}, logs=logs)
    assert rc == 0, out[-3000:]
    final = vault_view(workdir, target)[1]
    assert final['vault_gpufleet_rotation_pending'] == []
    assert final['vault_llamacpp_api_key'] == stored['vault_llamacpp_api_key']
    assert final['vault_llm_router_client_api_keys'] == stored['vault_llm_router_client_api_keys']
    assert_no_key_in(logs, all_vault_values(workdir, target))


def test_ansible_vault_missing_key_variable_is_named(workdir):
    data = first_vault_vars()
    del data['vault_sglang_api_key']
    target = write_vault_file(workdir, data)
    logs = []
    rc, out, dummy = run_playbook(workdir, {'rotate': False}, logs=logs)
    assert rc != 0
    assert 'vault_sglang_api_key' in out
    assert_no_key_in(logs, all_vault_values(workdir, target))


def test_ansible_vault_plaintext_key_file_is_refused(workdir):
    target = write_vault_file(workdir, first_vault_vars())
    plain = vault_view(workdir, target)[1]
    target.write_text(yaml.safe_dump(plain))
    rc, out, dummy = run_playbook(workdir, {})
    assert rc != 0
    assert 'must exist and be encrypted with ansible-vault' in out
    assert yaml.safe_load(target.read_text()) == plain               # left as it was
    assert not list(target.parent.glob('vault.yml.*.bak'))


def test_ansible_vault_rekey(workdir):
    """Rotating the vault password itself: rekey, the new password decrypts, the old one fails,
    and a playbook reads the key variables with the new password."""
    first = first_vault_vars()
    target = write_vault_file(workdir, first)
    old_password = workdir / 'vault-password'
    new_password = workdir / 'vault-password-new'
    new_password.write_text(secrets.token_urlsafe(24) + '\n')
    new_password.chmod(0o600)
    before = target.read_text()
    proc = subprocess.run([ANSIBLE_VAULT, 'rekey', '--vault-password-file', str(old_password),
                           '--new-vault-password-file', str(new_password), str(target)],
                          capture_output=True, text=True, env=env_for(workdir), check=False)
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() != before
    assert target.read_text().startswith('$ANSIBLE_VAULT;')
    assert vault_view(workdir, target, password=new_password)[1] == first
    rc, data, err = vault_view(workdir, target, password=old_password)
    assert rc != 0 and data is None
    assert 'Decryption failed' in err
    rc, out, report = run_playbook(workdir, {'rotate': False}, password=new_password)
    assert rc == 0, out[-3000:]
    assert report['lengths'] == [40, 40, 40, 40, 2]
    rc, out, dummy = run_playbook(workdir, {'rotate': False}, password=old_password)
    assert rc != 0
    # A rotation after the rekey re-encrypts with the new password.
    rc, out, dummy = run_playbook(workdir, {}, password=new_password)
    assert rc == 0, out[-3000:]
    assert vault_view(workdir, target, password=new_password)[0] == 0
    assert vault_view(workdir, target, password=old_password)[0] != 0


# --- Named client keys, rotated by name (both sources) ----------------------------------------

def router_answers(tmp_path, named_keys, tries, previous=None):
    """Start the real router with the named client keys (and previous: name -> old keys) as the llm_router
    role writes them (LLM_ROUTER_CLIENT_KEYS, name:key) and return the status of GET /v1/models for each
    key of tries."""
    pairs = list(named_keys.items()) + [(n, k) for n, keys in (previous or {}).items() for k in keys]
    port = socket.socket()
    port.bind(('127.0.0.1', 0))
    number = port.getsockname()[1]
    port.close()
    config = tmp_path / 'router.yml'
    config.write_text(yaml.safe_dump({'listen': {'host': '127.0.0.1', 'port': number},
                                      'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
                                      'models': {'m': {'backend': 'b'}}}))
    env = {'PATH': os.environ['PATH'], 'PYTHONPATH': str(router_package.install(tmp_path / 'router-package')),
           'LLM_ROUTER_CLIENT_KEYS': ','.join('%s:%s' % (n, k) for n, k in pairs)}
    proc = subprocess.Popen([sys.executable, '-m', 'llm_router', '--config', str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for dummy in range(300):
            try:
                socket.create_connection(('127.0.0.1', number), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return [httpx.get('http://127.0.0.1:%d/v1/models' % number, headers={'Authorization': 'Bearer ' + key}).status_code
                for key in tries]
    finally:
        proc.terminate()
        proc.wait(10)


def test_hashi_rotation_by_name(kv, workdir):
    """rotate_client_keys: only alice gets a new key; bob's is untouched; alice's old key is kept while
    pending (grace) and refused once the rotation ended."""
    first = {'alice': new_key(), 'bob': new_key()}
    kv['client'].secrets.kv.v2.create_or_update_secret(path='%s/router' % kv['path'], secret={'client_api_keys': first})
    logs = []
    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate_scope=['router'], rotate_client_keys=['alice'],
                                                        finish=False), logs=logs)
    assert rc == 0, out[-3000:]
    pending, version = kv_read(kv, 'router')
    assert version == 3 and pending['rotation_pending'] is True
    assert pending['client_api_keys']['bob'] == first['bob']
    assert pending['client_api_keys']['alice'] != first['alice'] and len(pending['client_api_keys']['alice']) == 48
    assert pending['client_api_keys_previous'] == {'alice': [first['alice']]}
    assert report['lengths'][-1] == 2 and report['previous'][-1] == 1      # the play: both names, alice's old key
    for scope in ('tabbyapi', 'llamacpp', 'sglang'):
        assert kv_read(kv, scope)[1] == 1
    grace = dict(pending['client_api_keys'])
    assert router_answers(workdir, grace, [grace['alice'], first['alice'], first['bob']],  # the grace pass
                          previous=pending['client_api_keys_previous']) == [200, 200, 200]

    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate_scope=['router']), logs=logs)
    assert rc == 0, out[-3000:]
    final, version = kv_read(kv, 'router')
    assert version == 4 and final['rotation_pending'] is False
    assert final['client_api_keys'] == grace and final['client_api_keys_previous'] == {}
    assert router_answers(workdir, final['client_api_keys'], [grace['alice'], first['bob'], first['alice']]) == [200, 200, 401]
    assert_no_key_in(logs, all_kv_values(kv) | {kv['token']})


def test_hashi_rotation_by_unknown_name_or_of_flat_keys_is_refused(kv, workdir):
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate_scope=['router'], rotate_client_keys=['alice']))
    assert rc != 0 and 'the names there are: none (a flat list)' in out
    kv['client'].secrets.kv.v2.create_or_update_secret(path='%s/router' % kv['path'],
                                                       secret={'client_api_keys': {'bob': new_key()}})
    rc, out, dummy = run_playbook(workdir, hashi_extra(kv, rotate_scope=['router'], rotate_client_keys=['alice']))
    assert rc != 0 and 'rotate_client_keys (alice) names client keys' in out and 'the names there are: bob' in out
    assert kv_read(kv, 'router')[1] == 2                               # nothing stored


def test_ansible_vault_rotation_by_name(workdir):
    first = dict(first_vault_vars(), vault_llm_router_client_api_keys={'alice': new_key(), 'bob': new_key()})
    target = write_vault_file(workdir, first)
    logs = []
    rc, out, report = run_playbook(workdir, {'rotate_scope': ['router'], 'rotate_client_keys': ['bob'], 'finish': False},
                                   logs=logs)
    assert rc == 0, out[-3000:]
    pending = vault_view(workdir, target)[1]
    old = first['vault_llm_router_client_api_keys']
    assert pending['vault_gpufleet_rotation_pending'] == ['router']
    assert pending['vault_llm_router_client_api_keys']['alice'] == old['alice']
    assert pending['vault_llm_router_client_api_keys']['bob'] != old['bob']
    assert pending['vault_llm_router_client_api_keys_previous'] == {'bob': [old['bob']]}
    assert pending['vault_llamacpp_api_key'] == first['vault_llamacpp_api_key']
    assert report['previous'][-1] == 1

    rc, out, report = run_playbook(workdir, {'rotate_scope': ['router']}, logs=logs)
    assert rc == 0, out[-3000:]
    final = vault_view(workdir, target)[1]
    assert final['vault_gpufleet_rotation_pending'] == []
    assert final['vault_llm_router_client_api_keys'] == pending['vault_llm_router_client_api_keys']
    assert final['vault_llm_router_client_api_keys_previous'] == {}
    keys = final['vault_llm_router_client_api_keys']
    assert router_answers(workdir, keys, [keys['bob'], old['alice'], old['bob']]) == [200, 200, 401]
    assert_no_key_in(logs, all_vault_values(workdir, target))


# --- The gateway scope: the gateways' health key, on the gateways and the router hosts ----------

# A gateway and a router host: the scopes in use are router and gateway.
GATEWAY_INVENTORY = """
all:
  hosts:
    gw:
      ansible_connection: local
      ansible_python_interpreter: {python}
    node:
      ansible_connection: local
      ansible_python_interpreter: {python}
  children:
    llm_gateway: {{hosts: {{gw: {{}}}}}}
    llm_router: {{hosts: {{node: {{}}}}}}
"""
GATEWAY_REPORT = {'report_names': ['llm_gateway_health_key', 'llm_router_client_api_keys'],
                  'report_previous': ['llm_gateway_health_key_previous', 'llm_router_client_api_keys_previous']}


@pytest.fixture
def gateway_workdir(workdir):
    (workdir / 'inventory' / 'hosts.yml').write_text(GATEWAY_INVENTORY.format(python=sys.executable))
    return workdir


def test_hashi_gateway_scope_is_read_and_rotated(kv, gateway_workdir):
    workdir = gateway_workdir
    old = new_key()
    kv['client'].secrets.kv.v2.create_or_update_secret(path='%s/gateway' % kv['path'], secret={'health_key': old})
    logs = []
    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate=False, **GATEWAY_REPORT), logs=logs)
    assert rc == 0, out[-3000:]
    assert report['lengths'] == [40, 2] and report['previous'] == [0, 0]
    # A rotation of the gateway scope alone: grace (new key current, the old one previous) ...
    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate_scope=['gateway'], finish=False, **GATEWAY_REPORT),
                                   logs=logs)
    assert rc == 0, out[-3000:]
    pending, version = kv_read(kv, 'gateway')
    assert version == 2 and pending['rotation_pending'] is True
    assert pending['health_key_previous'] == [old]
    assert len(pending['health_key']) == 48 and pending['health_key'] != old
    assert report['lengths'] == [48, 2] and report['previous'] == [1, 0]
    assert kv_read(kv, 'router') == (kv['first']['router'], 1)                # not rotated
    # ... then resumed and finished: the stored key kept, the old one forgotten.
    rc, out, report = run_playbook(workdir, hashi_extra(kv, rotate_scope=['gateway'], **GATEWAY_REPORT), logs=logs)
    assert rc == 0, out[-3000:]
    final, version = kv_read(kv, 'gateway')
    assert version == 3 and final['rotation_pending'] is False
    assert final['health_key'] == pending['health_key'] and final['health_key_previous'] == []
    assert report['previous'] == [0, 0]
    assert_no_key_in(logs, all_kv_values(kv) | {old, pending['health_key'], kv['token']})


def test_hashi_missing_gateway_secret_is_named(kv, gateway_workdir):
    rc, out, dummy = run_playbook(gateway_workdir, hashi_extra(kv, rotate=False, **GATEWAY_REPORT))
    assert rc != 0
    assert 'Could not read secret/%s/gateway' % kv['path'] in out


def test_ansible_vault_gateway_scope_rotation(gateway_workdir):
    workdir = gateway_workdir
    first = first_vault_vars()
    first['vault_llm_gateway_health_key'] = new_key()
    target = write_vault_file(workdir, first)
    (workdir / 'inventory' / 'group_vars' / 'all' / 'keys.yml').write_text(
        MAPPING + 'llm_gateway_health_key: "{{ vault_llm_gateway_health_key }}"\n'
                  'llm_gateway_health_key_previous: "{{ vault_llm_gateway_health_key_previous | default([]) }}"\n')
    logs = []
    rc, out, report = run_playbook(workdir, dict(GATEWAY_REPORT, rotate_scope=['gateway'], finish=False), logs=logs)
    assert rc == 0, out[-3000:]
    rc, pending, err = vault_view(workdir, target)
    assert rc == 0, err
    assert pending['vault_gpufleet_rotation_pending'] == ['gateway']
    assert pending['vault_llm_gateway_health_key_previous'] == [first['vault_llm_gateway_health_key']]
    assert len(pending['vault_llm_gateway_health_key']) == 48
    assert pending['vault_llm_router_client_api_keys'] == first['vault_llm_router_client_api_keys']
    assert report['lengths'] == [48, 2] and report['previous'] == [1, 0]
    rc, out, report = run_playbook(workdir, dict(GATEWAY_REPORT, rotate_scope=['gateway']), logs=logs)
    assert rc == 0, out[-3000:]
    final = vault_view(workdir, target)[1]
    assert final['vault_gpufleet_rotation_pending'] == []
    assert final['vault_llm_gateway_health_key'] == pending['vault_llm_gateway_health_key']
    assert final['vault_llm_gateway_health_key_previous'] == []
    assert report['previous'] == [0, 0]
    assert_no_key_in(logs, all_vault_values(workdir, target))


def test_ansible_vault_missing_health_key_is_named_for_the_router_host_too(gateway_workdir):
    workdir = gateway_workdir
    target = write_vault_file(workdir, first_vault_vars())      # no vault_llm_gateway_health_key
    rc, out, dummy = run_playbook(workdir, dict(GATEWAY_REPORT, rotate=False))
    assert rc != 0
    for host in ('gw', 'node'):
        assert 'llm_gateway_health_key is not set for %s' % host in out
    assert_no_key_in([out], all_vault_values(workdir, target))
