# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `unit` option against real systemd: a podman container of localhost/gpufleet-host:bookworm
(`make hosts-image`) with systemd as PID 1, reached over ssh (tests/support/hosts_ssh.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'support')
sys.path.insert(0, SUPPORT)

from hosts_ssh import ssh_vars  # noqa: E402
from run_play import TOP, run_playbook, write_play  # noqa: E402

IMAGE = os.environ.get('GPUFLEET_HOST_IMAGE', 'localhost/gpufleet-host:bookworm')
KEY = 'sk-unit-test-9a0b1c2d3e'
CONTAINERS_CONF = os.environ.get('CONTAINERS_CONF', os.path.join(TOP, 'tests', 'hosts', 'containers.conf'))
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)

UNITS = {
    # Serves a TabbyAPI-like API; its model is loaded 1.5 s after start.
    'fakebackend-ok.service': """[Service]
ExecStart=/usr/bin/python3 /opt/fake_backend.py --kind tabbyapi --port 5000 --key {key} --model m --load-after 1.5
""",
    # Logs, then dies 2 s after start, the key in its log, never binding its port.
    'fakebackend-crash.service': """[Service]
ExecStart=/bin/sh -c 'echo "loading model with api_key={key}"; sleep 2; echo "CUDA error: out of memory" >&2; exit 3'
""",
    # Crashes 1 s after each start, and Restart= starts it again after 10 s (5 starts: about 50 s of
    # "activating (auto-restart)" before the start limit would make it failed).
    'fakebackend-crashloop.service': """[Unit]
StartLimitBurst=5
StartLimitIntervalSec=300
[Service]
ExecStart=/bin/sh -c 'sleep 1; echo "CUDA error: no GPU found" >&2; exit 3'
Restart=on-failure
RestartSec=10
""",
    # Exits cleanly (inactive, not failed) at once.
    'fakebackend-exits.service': """[Service]
ExecStart=/bin/true
""",
}


def podman(*args, check=True):
    proc = subprocess.run(['podman'] + list(args), env=PODMAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False, universal_newlines=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout
    return proc


@pytest.fixture(scope='module')
def host(tmp_path_factory):
    assert podman('image', 'exists', IMAGE, check=False).returncode == 0, \
        'test host image %s is missing: run `make hosts-image` first' % IMAGE
    name = 'gpufleet-wfb-%s' % uuid.uuid4().hex[:8]
    podman('run', '-d', '--name', name, '--systemd=always', IMAGE, '/sbin/init')
    try:
        deadline = time.monotonic() + 60
        while True:
            state = podman('exec', name, 'systemctl', 'is-system-running', check=False).stdout.strip()
            if state in ('running', 'degraded'):
                break
            assert time.monotonic() < deadline, 'systemd in %s did not boot: %s' % (name, state)
            time.sleep(0.5)
        podman('cp', os.path.join(SUPPORT, 'fake_backend.py'), '%s:/opt/fake_backend.py' % name)
        units = tmp_path_factory.mktemp('units')
        for unit, text in UNITS.items():
            (units / unit).write_text(text.format(key=KEY))
            podman('cp', str(units / unit), '%s:/etc/systemd/system/%s' % (name, unit))
        podman('exec', name, 'systemctl', 'daemon-reload')
        inventory = units / 'inventory.json'
        inventory.write_text(json.dumps({'hosts': {'hosts': {name: ssh_vars()}}}))
        yield name, str(inventory)
    finally:
        podman('rm', '-f', name, check=False)


def play_against(host, tmp_path, unit, port=5000, timeout=60, key=KEY):
    name, inventory = host
    play = write_play(str(tmp_path), {'url': 'http://127.0.0.1:%d' % port, 'backend': 'tabbyapi',
                                      'api_key': '{{ k }}', 'model': 'm', 'unit': unit, 'timeout': timeout},
                      secret_vars={'k': key})
    with open(play) as f:
        text = f.read().replace('hosts: localhost\n  connection: local\n', 'hosts: %s\n' % name)
    with open(play, 'w') as f:
        f.write(text)
    podman('exec', name, 'systemctl', 'start', '--no-block', unit, check=False)
    return run_playbook(play, '-i', inventory, env={'CONTAINERS_CONF': PODMAN_ENV['CONTAINERS_CONF']})


def test_unit_running_backend_becomes_ready(host, tmp_path):
    rc, out, _seconds = play_against(host, tmp_path, 'fakebackend-ok.service')
    assert rc == 0, out
    assert 'failed=0' in out and KEY not in out


def test_unit_that_fails_while_waiting_stops_the_wait(host, tmp_path):
    rc, out, seconds = play_against(host, tmp_path, 'fakebackend-crash.service', port=5999)
    assert rc == 2, out
    assert 'will not get ready: unit fakebackend-crash.service is failed (failed, result exit-code, exit status 3)' \
        in out
    assert 'CUDA error: out of memory' in out          # the journal lines are shown
    assert 'loading model with api_key=********' in out  # ... with the key masked
    assert KEY not in out
    assert seconds < 30, 'it waited for the 60 s budget instead of stopping when the unit failed'


def test_unit_whose_server_crashed_and_will_be_restarted_stops_the_wait_at_once(host, tmp_path):
    rc, out, seconds = play_against(host, tmp_path, 'fakebackend-crashloop.service', port=5996)
    assert rc == 2, out
    assert ('will not get ready: the server of unit fakebackend-crashloop.service exited with status 3 '
            '(result exit-code) and systemd will start it again: a crash, not a slow start') in out
    assert 'CUDA error: no GPU found' in out            # the journal lines are shown
    assert seconds < 30, 'it waited through the Restart= loop (about 50 s) instead of stopping at the first exit'


def test_unit_that_exited_stops_the_wait(host, tmp_path):
    rc, out, seconds = play_against(host, tmp_path, 'fakebackend-exits.service', port=5998)
    assert rc == 2, out
    assert 'unit fakebackend-exits.service is inactive (dead, result success, exit status 0)' in out
    assert seconds < 30


def test_unknown_unit_is_named(host, tmp_path):
    rc, out, _seconds = play_against(host, tmp_path, 'no-such-backend.service', port=5997)
    assert rc == 2, out
    assert 'unit no-such-backend.service does not exist' in out
