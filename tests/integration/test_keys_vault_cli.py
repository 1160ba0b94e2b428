# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Ansible Vault store step of a rotation encrypts with the controller's own Ansible, whatever
PATH holds: ansible-playbook is run by its full venv path with PATH=/usr/bin:/bin (no venv bin), and
again with a PATH whose first ansible-vault is a stand-in that always fails. When the encryption
fails, the run names the vault command's own error text and shows no key.

Uses the store playbook and helpers of test_keys.py (localhost, connection local, real vault files).
"""

import re
import secrets
import sys
from pathlib import Path

import pytest

import test_keys as keys

# Every key the rotation makes is 48 letters and digits (docs/keys.md): none may be in the output.
NEW_KEY = re.compile(r'(?<![A-Za-z0-9])[A-Za-z0-9]{48}(?![A-Za-z0-9])')
PLAIN_PATH = '/usr/bin:/bin'


@pytest.fixture
def path_without_venv(monkeypatch):
    """Make test_keys.run_playbook run with PATH set to the value given (never the venv's bin)."""
    chosen = {'path': PLAIN_PATH}
    original = keys.env_for

    def env_for(workdir, password=None):
        env = original(workdir, password)
        env['PATH'] = chosen['path']
        return env

    monkeypatch.setattr(keys, 'env_for', env_for)
    return chosen


@pytest.fixture
def workdir(tmp_path):
    # The same layout as test_keys.workdir (an inventory with one local host in every group).
    (tmp_path / 'inventory' / 'group_vars' / 'all').mkdir(parents=True)
    (tmp_path / 'inventory' / 'hosts.yml').write_text(keys.INVENTORY.format(python=sys.executable))
    (tmp_path / 'store.yml').write_text(keys.STORE_PLAYBOOK)
    password = tmp_path / 'vault-password'
    password.write_text(secrets.token_urlsafe(24) + '\n')
    password.chmod(0o600)
    return tmp_path


def fake_ansible_vault(directory):
    """An ansible-vault that always fails, first on PATH: the role must not be calling it."""
    directory.mkdir()
    script = directory / 'ansible-vault'
    script.write_text('#!/bin/sh\necho "the ansible-vault on PATH was called" >&2\nexit 97\n')
    script.chmod(0o755)
    return directory


def assert_no_new_key_in(outputs):
    for output in outputs:
        # Counted, never shown.
        assert len(NEW_KEY.findall(output)) == 0, 'a value shaped like a new key appears in the output'


def test_rotation_stores_with_path_usr_bin_bin(workdir, path_without_venv):
    """ansible-playbook by its full venv path, PATH=/usr/bin:/bin: both store steps (begin, end)."""
    assert Path(keys.ANSIBLE_PLAYBOOK).is_absolute() and Path(keys.ANSIBLE_PLAYBOOK).parent == keys.VENV_BIN
    assert path_without_venv['path'] == PLAIN_PATH
    first = keys.first_vault_vars()
    target = keys.write_vault_file(workdir, first)      # by ansible-vault's full venv path
    logs = []
    rc, out, report = keys.run_playbook(workdir, {}, logs=logs)
    assert rc == 0, out[-3000:]
    rc, final, err = keys.vault_view(workdir, target)
    assert rc == 0, err
    assert final['vault_gpufleet_rotation_pending'] == []
    assert final['vault_llamacpp_api_key'] != first['vault_llamacpp_api_key']
    assert final['vault_unrelated'] == 'kept as it is'
    assert len(list(target.parent.glob('vault.yml.*.bak'))) == 2
    assert report['previous'] == [0, 0, 0]
    keys.assert_no_key_in(logs, keys.all_vault_values(workdir, target))


def test_an_ansible_vault_on_path_is_not_used(workdir, path_without_venv):
    """The first ansible-vault on PATH always fails: the store step (begin only) must not call it."""
    first = keys.first_vault_vars()
    target = keys.write_vault_file(workdir, first)
    path_without_venv['path'] = '%s:%s' % (fake_ansible_vault(workdir / 'bin'), PLAIN_PATH)
    rc, out, dummy = keys.run_playbook(workdir, {'finish': False})
    assert rc == 0, out[-3000:]
    assert 'the ansible-vault on PATH was called' not in out
    rc, pending, err = keys.vault_view(workdir, target)
    assert rc == 0, err
    assert sorted(pending['vault_gpufleet_rotation_pending']) == sorted(keys.SCOPES)
    assert pending['vault_llamacpp_api_key_previous'] == [first['vault_llamacpp_api_key']]


def test_a_failing_store_shows_the_vault_error_and_no_key(workdir, path_without_venv):
    """An encrypt vault id that the run has no password for: ansible-vault refuses, and its error
    text (naming the id) is the reason the run gives. The key file is left as it was."""
    first = keys.first_vault_vars()
    target = keys.write_vault_file(workdir, first)
    before = target.read_bytes()
    logs = []
    rc, out, dummy = keys.run_playbook(
        workdir, {'gpufleet_ansible_vault_encrypt_id': 'gpufleet-no-such-id'}, logs=logs)
    assert rc != 0
    failure = [line for line in out.splitlines() if 'Could not store the new keys of' in line]
    assert failure, out[-3000:]
    assert 'gpufleet-no-such-id' in failure[0] and 'encrypt-vault-id' in failure[0], failure[0]
    assert 'No host has been given a new key yet' in failure[0]
    assert target.read_bytes() == before
    assert not list(target.parent.glob('vault.yml.*.bak'))
    assert not list(target.parent.glob('vault.yml.new'))
    keys.assert_no_key_in(logs, keys.key_values(first))
    assert_no_new_key_in(logs)
