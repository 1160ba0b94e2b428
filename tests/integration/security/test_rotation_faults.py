# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults during playbooks/rotate_keys.yml on the suite's real systemd host (the real TabbyAPI), with the keys in a REAL
OpenBao dev server on the controller's loopback, reached through a relay the test can cut
(tests/support/openbao.py): OpenBao unreachable before anything is stored, at the first write, and
after the new keys are stored (mid-roll); a second systemd host unreachable between the passes.

Each case asserts the error it names, that it came promptly, that nothing was lost (every key a host
holds is in the store; while pending the store holds the new AND the old keys) and that re-running
the playbook once the fault is repaired finishes the rotation (new key accepted, every old key
refused). Every run is -vvv --diff and goes through SecurityHost.play, so test_secret_hygiene.py also
greps these failing runs, the journals and the files for every old and new key (added to
extra_secrets here); each case also greps its own runs at once.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import KEY_FILES, ROOT, container_sh, files_holding, hits, journal_hits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'support'))

from openbao import Cut, DevServer  # noqa: E402

KV_PATH = 'gpufleet/secsuite'
# The suite's keys (sec-<label>-<24 hex>) and the keys rotate_keys.yml makes (48 letters and digits).
KEY_PATTERN = re.compile(r'sec-[a-z0-9-]+-[0-9a-f]{24}|(?<![A-Za-z0-9])[A-Za-z0-9]{48}(?![A-Za-z0-9])')
KEY_NAMES = ('tabbyapi_api_key', 'tabbyapi_admin_key', 'llamacpp_api_key', 'sglang_api_key', 'llm_router_client_api_keys')
PROMPT = 120         # seconds: a store fault must end the run this fast (the gates have keys_gate_timeout 600 s)


class Store:
    """The key store of the rotation runs: OpenBao, read and written directly by the test."""

    def __init__(self, host, logdir):
        self.host = host
        self.bao = DevServer(logdir)
        self.cut = Cut(self.bao.port)
        self.cut.open()
        host.extra_secrets.append(self.bao.token)
        keys = host.keys
        self.seed = {'tabbyapi': {'api_key': keys['tabbyapi_api_key'], 'admin_key': keys['tabbyapi_admin_key']},
                     'llamacpp': {'api_key': keys['llamacpp_api_key']},
                     'sglang': {'api_key': keys['sglang_api_key']},
                     'router': {'client_api_keys': keys['llm_router_client_api_keys']}}
        for scope, data in self.seed.items():
            self.bao.client.secrets.kv.v2.create_or_update_secret(path='%s/%s' % (KV_PATH, scope), secret=data)

    def overrides(self):
        """Inventory variables of a rotation run: OpenBao through the relay, no key in the inventory."""
        values = {'gpufleet_key_source': 'hashi_vault', 'gpufleet_vault_url': self.cut.url,
                  'gpufleet_vault_token': self.bao.token, 'gpufleet_vault_path': KV_PATH}
        values.update({name: KeyError for name in KEY_NAMES})
        return values

    def read(self, scope, version=None):
        kv2 = self.bao.client.secrets.kv.v2
        answer = kv2.read_secret_version(path='%s/%s' % (KV_PATH, scope), version=version, raise_on_deleted_version=True)
        return answer['data']['data'], answer['data']['metadata']['version']

    def versions(self):
        return {scope: self.read(scope)[1] for scope in self.seed}

    def values(self):
        """Every key value in every version of every secret (so, also what a pending rotation keeps)."""
        found = set()
        for scope in self.seed:
            for version in range(1, self.read(scope)[1] + 1):
                for name, value in self.read(scope, version)[0].items():
                    if 'key' in name:
                        found.update(value if isinstance(value, list) else [value])
        found.discard('')
        for value in sorted(found):
            if value not in self.host.extra_secrets and value not in self.host.secrets():
                self.host.extra_secrets.append(value)
        return found

    def stop(self):
        self.cut.close()
        self.bao.stop()


@pytest.fixture(scope='module')
def host(converged):
    return converged


@pytest.fixture(scope='module')
def store(host):
    the_store = Store(host, host.workdir)
    yield the_store
    the_store.stop()


def rotate(host, store, label, scope, **kwargs):
    """rotate_keys.yml at -vvv with --diff; checks at once that the run printed no key."""
    rc, output, took = host.play(label, '-vvv', '--diff', '-e', json.dumps({'rotate_scope': scope}),
                                 playbook='gpufleet.llm.rotate_keys', overrides=store.overrides(), **kwargs)
    assert hits(output, store.values() | set(host.secrets())) == [], 'keys printed by %s' % label
    return rc, output, took


def host_keys(host, name=None):
    """Every key value in the key files of a host (the suite's host unless name is given)."""
    found = set()
    for path in KEY_FILES:
        proc = container_sh(name or host.name, 'cat %s' % path, check=False)
        if proc.returncode == 0:
            found.update(KEY_PATTERN.findall(proc.stdout))
    assert found, 'no key file found on %s' % (name or host.name)
    return found


def assert_nothing_lost(host, store, *names):
    held = set()
    for name in names or (None,):
        held |= host_keys(host, name)
    missing = held - store.values()
    assert not missing, '%d key(s) on the hosts are in no version of the store' % len(missing)


def router_answers(host, key):
    return host.http('http://127.0.0.1:4000/v1/models', key=key)[0]


def file_digest(host, path):
    return host.sh('sha256sum %s' % path).stdout.split()[0]


def assert_router_rotation_finished(host, store, before_version, old_keys, resumed_keys=None):
    data, version = store.read('router')
    assert data['rotation_pending'] is False and data['client_api_keys_previous'] == []
    assert version > before_version
    new = data['client_api_keys']
    assert set(new).isdisjoint(old_keys)
    if resumed_keys is not None:
        assert new == resumed_keys                   # resumed with the stored keys, no third key made
    assert [router_answers(host, k) for k in new] == [200] * len(new)
    assert [router_answers(host, k) for k in old_keys] == [401] * len(old_keys)
    assert_nothing_lost(host, store)
    host.keys['llm_router_client_api_keys'] = list(new)  # what the suite's later site.yml runs deploy


def assert_stopped_before_any_host(host, store, output, took, before, env_before, old_keys):
    """A store fault before the roll: it failed promptly, no pass ran, the store and the router's key
    file are as they were, the router still takes the old key, and no key is lost."""
    assert 'PLAY [Grace pass' not in output
    assert took < PROMPT, '%.0f s' % took
    assert store.versions() == before and not store.read('router')[0].get('rotation_pending')
    assert file_digest(host, '/etc/llm-router/env') == env_before
    assert router_answers(host, old_keys[0]) == 200
    assert_nothing_lost(host, store)


def test_openbao_down_before_anything_is_stored(host, store):
    old = list(host.keys['llm_router_client_api_keys'])
    before, env_before = store.versions(), file_digest(host, '/etc/llm-router/env')
    store.cut.close()
    rc, output, took = rotate(host, store, 'rotate-bao-down', ['router'])
    assert rc != 0
    assert re.search(r'Could not read secret/%s/tabbyapi, .*router from %s: .*(refused|Connection)'
                     % (KV_PATH, re.escape(store.cut.url)), output), output[-3000:]
    assert_stopped_before_any_host(host, store, output, took, before, env_before, old)

    store.cut.open()                                                  # repaired
    rc, output, _ign = rotate(host, store, 'rotate-bao-back', ['router'])
    assert rc == 0, output[-3000:]
    assert_router_rotation_finished(host, store, before['router'], old)


def test_openbao_lost_at_the_first_write(host, store):
    old = list(host.keys['llm_router_client_api_keys'])
    before, env_before = store.versions(), file_digest(host, '/etc/llm-router/env')
    store.cut.close_after_writes(0)
    rc, output, took = rotate(host, store, 'rotate-bao-lost-at-store', ['router'])
    assert rc != 0
    assert re.search(r'Could not store the new keys of router: writing secret/%s/router to %s failed: .*'
                     r'No host has been given a new key yet' % (KV_PATH, re.escape(store.cut.url)), output), output[-3000:]
    assert store.cut.writes == 1 and not store.cut.is_open
    assert_stopped_before_any_host(host, store, output, took, before, env_before, old)

    store.cut.open()
    rc, output, _ign = rotate(host, store, 'rotate-bao-back-2', ['router'])
    assert rc == 0, output[-3000:]
    assert_router_rotation_finished(host, store, before['router'], old)


def test_openbao_lost_mid_roll_after_the_new_keys_are_stored(host, store):
    """The store step writes (router scope: one secret), the hosts roll; OpenBao is gone at the end."""
    old = list(host.keys['llm_router_client_api_keys'])
    before = store.versions()
    store.cut.close_after_writes(1)
    end_started = []

    def note_the_end_play(line):
        if line.startswith('PLAY [Finish the rotation') and not end_started:
            end_started.append(time.monotonic())

    rc, output, _ign = rotate(host, store, 'rotate-bao-lost-mid-roll', ['router'], on_line=note_the_end_play)
    took = time.monotonic() - end_started[0]
    assert rc != 0
    assert re.search(r'Could not store the end of the rotation of router: writing secret/%s/router to %s failed: .*'
                     r'Every host already runs the new keys only, and the store still holds the new and the old keys'
                     % (KV_PATH, re.escape(store.cut.url)), output), output[-3000:]
    assert store.cut.writes == 2
    assert took < PROMPT, '%.0f s from the last play to the end of the run' % took
    pending, version = store.read('router')
    assert version == before['router'] + 1 and pending['rotation_pending'] is True
    assert pending['client_api_keys_previous'] == old                # the old keys are still in the store
    new = pending['client_api_keys']
    assert [router_answers(host, k) for k in new] == [200] * len(new)
    assert_nothing_lost(host, store)                                  # the host holds the new keys only, stored

    store.cut.open()
    rc, output, _ign = rotate(host, store, 'rotate-bao-back-3', ['router'])
    assert rc == 0, output[-3000:]
    assert 'interrupted rotation finished: router' in output
    assert_router_rotation_finished(host, store, version, old, resumed_keys=new)


@pytest.fixture(scope='module')
def second_host(double_host):
    """A second systemd host with one llama.cpp instance (the real llama-server): the suite's double host
    (conftest.py), which also runs the TabbyAPI double and a router under its own inventory. Here it is
    only in the llamacpp group, so the rotation touches its llama.cpp instance alone."""
    return double_host.name


def llamacpp_answers(host, key, name=None):
    script = ("import urllib.request, urllib.error, sys\n"
              "r = urllib.request.Request('http://127.0.0.1:8080/props', headers={'Authorization': 'Bearer ' + sys.stdin.read()})\n"
              "try:\n    print(urllib.request.urlopen(r, timeout=30).status)\n"
              "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    proc = subprocess.run(['podman', 'exec', '-i', name or host.name, 'python3', '-c', script], input=key,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, CONTAINERS_CONF=str(ROOT / 'tests/hosts/containers.conf')))
    return int(proc.stdout.strip()) if proc.returncode == 0 else proc.stderr


def test_a_host_unreachable_between_the_passes(host, store, second_host):
    """Both hosts take the new llama.cpp key in the grace pass; the second host is stopped when the final
    pass starts. The run stops at that host, the store stays pending; once the host is back, a re-run
    finishes the rotation on both."""
    env = dict(os.environ, CONTAINERS_CONF=str(ROOT / 'tests/hosts/containers.conf'))
    old = host.keys['llamacpp_api_key']
    before = store.versions()
    stopped = []

    def stop_second_host_at_the_final_pass(line):
        if line.startswith('PLAY [Final pass') and not stopped:
            stopped.append(time.monotonic())
            subprocess.run(['podman', 'stop', '-t', '5', second_host], env=env, capture_output=True, check=True)

    hosts = {second_host: ['llamacpp']}
    rc, output, _ign = rotate(host, store, 'rotate-host-unreachable', ['llamacpp'], extra_hosts=hosts,
                              on_line=stop_second_host_at_the_final_pass)
    assert stopped, output[-3000:]
    failed_after = time.monotonic() - stopped[0]
    assert rc != 0
    assert re.search(r'(fatal|UNREACHABLE)[^\n]*\[%s\]' % re.escape(second_host), output), output[-3000:]
    assert re.search(r'%s\s*: .*(failed=1|unreachable=1)' % re.escape(second_host), output), output[-3000:]
    # Ansible goes on with the other hosts; the end step refuses to forget the old keys.
    assert re.search(r'The final pass did not finish on %s \(unreachable or failed\)' % re.escape(second_host),
                     output), output[-3000:]
    assert 'scopes rotated:' not in output
    assert failed_after < 300, '%.0f s after the host went away' % failed_after
    pending, version = store.read('llamacpp')
    assert version == before['llamacpp'] + 1 and pending['rotation_pending'] is True
    assert pending['api_key_previous'] == [old]
    new = pending['api_key']
    subprocess.run(['podman', 'start', second_host], env=env, capture_output=True, check=True)
    deadline = time.monotonic() + 120
    while llamacpp_answers(host, new, second_host) != 200:          # enabled units come back with the host
        assert time.monotonic() < deadline, 'llama.cpp did not come back on %s' % second_host
        time.sleep(2)
    assert_nothing_lost(host, store, None, second_host)
    assert llamacpp_answers(host, old, second_host) == 200           # grace pass: old and new accepted there

    rc, output, _ign = rotate(host, store, 'rotate-host-back', ['llamacpp'], extra_hosts=hosts)
    assert rc == 0, output[-3000:]
    assert 'interrupted rotation finished: llamacpp' in output
    final, version = store.read('llamacpp')
    assert final['rotation_pending'] is False and final['api_key'] == new and final['api_key_previous'] == []
    for name in (None, second_host):
        assert llamacpp_answers(host, new, name) == 200
        assert llamacpp_answers(host, old, name) == 401
    assert_nothing_lost(host, store, None, second_host)
    host.keys['llamacpp_api_key'] = new
    assert journal_hits(second_host, store.values()) == []
    assert files_holding(second_host, store.values()) == []


def test_zz_no_old_or_new_key_in_the_journal_or_other_files(host, store):
    """After the failing and the repairing rotation runs: no key of any store version in the journal of
    any unit of the host or in any file but the key files (test_secret_hygiene.py repeats this, with
    these keys, at the end of the suite)."""
    values = store.values()
    assert len(values) > len(store.seed)
    assert journal_hits(host.name, values) == []
    assert files_holding(host.name, values) == []
