# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The crash case of bench/fail_fast.py (``--crash``): a backend whose server dies while it starts.

One real systemd host (a podman container of localhost/gpufleet-host:bookworm). Its crash unit has
the roles' unit defaults (Restart=on-failure, RestartSec=5, StartLimitBurst=5 in 300 s) and runs
under the key-masking launcher; its server prints two lines (one with a key), and exits with status
3 two seconds after each start. Measured, for this checkout and for ``--baseline`` (another
checkout, e.g. a git worktree of an older main) in the same run:

- router: a chat request for the crash unit's model, from inside the host; from the server's first
  exit to the router's answer (502);
- module: gpufleet.llm.wait_for_backend with ``unit``, started with the unit; from the server's first
  exit to the task's failed result reaching ansible-playbook.

The server writes CLOCK_MONOTONIC just before it exits; the client in the host and the controller
read the same clock (the container shares the machine's kernel and has no time namespace).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, 'tests', 'support'))

import router_package  # noqa: E402
from hosts_ssh import ssh_vars  # noqa: E402
from run_play import run_playbook  # noqa: E402

IMAGE = os.environ.get('GPUFLEET_HOST_IMAGE', 'localhost/gpufleet-host:bookworm')
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get('CONTAINERS_CONF',
                                                             os.path.join(TOP, 'tests', 'hosts', 'containers.conf')))
CLIENT_KEY = 'ck-bench-crash-5d21e0'
SERVER_KEY = 'srv-bench-crash-8c3f7a'
# The router's runtime dependencies (roles/llm_router/files/requirements.txt), copied from this venv.
DEPS = ('yaml', 'uvloop', 'httptools')

CRASH_UNIT = """[Unit]
Description=bench: a server that cannot start ({tag})
StartLimitIntervalSec=300
StartLimitBurst=5
[Service]
Environment=CRASH_KEY={key}
NotifyAccess=main
Restart=on-failure
RestartSec=5
ExecStart=/usr/bin/python3 -I /opt/bench/{tag}/gpufleet_mask.py --secrets-env CRASH_KEY -- /bin/sh -c \
'echo loading the model with key $CRASH_KEY; sleep 2; echo CUDA error: no CUDA-capable device is detected >&2; \
/usr/bin/python3 -c "import time; print(time.monotonic())" >> /run/bench-exits-{tag}; exit 3'
"""
ROUTER_UNIT = """[Service]
EnvironmentFile=/etc/bench/{tag}.env
Environment=PYTHONPATH=/opt/bench/{tag}:/opt/bench/lib
ExecStart=/usr/bin/python3 -m llm_router --config /etc/bench/{tag}.yml
"""
CLIENT = r"""
import json, sys, time, urllib.request, urllib.error
req = urllib.request.Request('http://127.0.0.1:%s/v1/chat/completions' % sys.argv[1], method='POST',
    data=json.dumps({'model': 'crashy', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode(),
    headers={'Authorization': 'Bearer ' + sys.argv[2], 'Content-Type': 'application/json'})
sent = time.monotonic()
try:
    with urllib.request.urlopen(req, timeout=600) as r:
        status, body = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read().decode()
print(json.dumps({'status': status, 'body': body, 'sent': sent, 'answered': time.monotonic()}))
"""
MODULE_PLAY = """---
- name: Start a backend that crashes, and wait for it
  hosts: {host}
  gather_facts: false
  tasks:
    - name: Warm up
      ansible.builtin.ping:
    - name: Start the unit
      ansible.builtin.systemd:
        name: bench-crash-{tag}.service
        state: started
        no_block: true
    - name: Wait for the backend
      gpufleet.llm.wait_for_backend:
        url: http://127.0.0.1:8199
        backend: openai
        unit: bench-crash-{tag}.service
        timeout: 300
"""


def podman(*args, check=True, timeout=300):
    proc = subprocess.run(['podman'] + list(args), env=PODMAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False, universal_newlines=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError('podman %s: %s' % (' '.join(args[:3]), proc.stdout))
    return proc


class CrashHost:
    """One systemd host with a crash unit and a router per checkout (tag -> checkout path)."""

    def __init__(self, checkouts):
        self.checkouts = checkouts
        self.name = 'gpufleet-bench-crash-%s' % uuid.uuid4().hex[:8]

    def __enter__(self):
        podman('run', '-d', '--name', self.name, '--systemd=always', IMAGE, '/sbin/init')
        try:
            deadline = time.monotonic() + 60
            while podman('exec', self.name, 'systemctl', 'is-system-running', check=False).stdout.strip() \
                    not in ('running', 'degraded'):
                if time.monotonic() > deadline:
                    raise RuntimeError('systemd in %s did not boot' % self.name)
                time.sleep(0.5)
            with tempfile.TemporaryDirectory() as tmp:
                self._lay_out(tmp)
                podman('cp', tmp + '/.', self.name + ':/')
            self.run('chown -R root:root /opt/bench /etc/bench /etc/systemd/system && chmod 0600 /etc/bench/*.env '
                     '&& systemctl daemon-reload')
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        podman('rm', '-f', '-t', '0', self.name, check=False)

    def _lay_out(self, tmp):
        site = os.path.dirname(os.path.dirname(__import__('yaml').__file__))
        lib = os.path.join(tmp, 'opt', 'bench', 'lib')
        os.makedirs(lib)
        for dep in DEPS:
            shutil.copytree(os.path.join(site, dep), os.path.join(lib, dep))
        units = os.path.join(tmp, 'etc', 'systemd', 'system')
        etc = os.path.join(tmp, 'etc', 'bench')
        os.makedirs(units)
        os.makedirs(etc)
        with open(os.path.join(tmp, 'opt', 'bench', 'client.py'), 'w') as f:
            f.write(CLIENT)
        for index, (tag, checkout) in enumerate(sorted(self.checkouts.items())):
            dest = os.path.join(tmp, 'opt', 'bench', tag)
            router_package.install(dest, source=os.path.join(checkout, 'roles/llm_router/files/llm_router'),
                                   probe=os.path.join(checkout, 'plugins/module_utils/_backend_probe.py'))
            shutil.copy(os.path.join(checkout, 'roles/backend_common/files/gpufleet_mask.py'), dest)
            with open(os.path.join(units, 'bench-crash-%s.service' % tag), 'w') as f:
                f.write(CRASH_UNIT.format(tag=tag, key=SERVER_KEY))
            with open(os.path.join(units, 'bench-router-%s.service' % tag), 'w') as f:
                f.write(ROUTER_UNIT.format(tag=tag))
            with open(os.path.join(etc, '%s.yml' % tag), 'w') as f:
                json.dump({'listen': {'host': '127.0.0.1', 'port': 4100 + index}, 'readiness_timeout': 300,
                           'backends': {'crashy': {'kind': 'openai', 'url': 'http://127.0.0.1:8199',
                                                   'unit': 'bench-crash-%s.service' % tag}},
                           'models': {'crashy': {'backend': 'crashy'}}}, f)
            with open(os.path.join(etc, '%s.env' % tag), 'w') as f:
                f.write('LLM_ROUTER_CLIENT_API_KEYS=%s\n' % CLIENT_KEY)

    def run(self, script, check=True):
        return podman('exec', self.name, 'sh', '-c', script, check=check)

    def reset(self, tag):
        """The crash unit stopped, its start limit and exit record cleared; the router fresh (no back-off)."""
        self.run('systemctl stop bench-crash-{0} bench-router-{0}; systemctl reset-failed bench-crash-{0} '
                 'bench-router-{0}; rm -f /run/bench-exits-{0}'.format(tag), check=False)

    def first_exit(self, tag):
        out = self.run('cat /run/bench-exits-%s' % tag, check=False).stdout.split()
        return float(out[0]) if out else None

    def router_case(self, tag):
        self.reset(tag)
        port = 4100 + sorted(self.checkouts).index(tag)
        self.run('systemctl start bench-router-%s' % tag)
        self.run('for i in $(seq 100); do python3 -c "import socket; socket.create_connection((\'127.0.0.1\', %d))" '
                 '2>/dev/null && exit 0; sleep 0.1; done; exit 1' % port)
        answer = json.loads(self.run('python3 /opt/bench/client.py %d %s' % (port, CLIENT_KEY)).stdout)
        exited = self.first_exit(tag)
        message = json.loads(answer['body']).get('error', {}).get('message', answer['body'])
        return {'status': answer['status'], 'after_exit': answer['answered'] - exited if exited else None,
                'request': answer['answered'] - answer['sent'], 'message': message,
                'leaked': SERVER_KEY in answer['body']}

    def module_case(self, tag, directory):
        self.reset(tag)
        collections = os.path.join(directory, tag, 'collections')
        os.makedirs(os.path.join(collections, 'ansible_collections', 'gpufleet'), exist_ok=True)
        link = os.path.join(collections, 'ansible_collections', 'gpufleet', 'llm')
        if not os.path.islink(link):
            os.symlink(self.checkouts[tag], link)
        inventory = os.path.join(directory, 'inventory.json')
        with open(inventory, 'w') as f:
            json.dump({'bench': {'hosts': {self.name: ssh_vars()}}}, f)
        play = os.path.join(directory, 'module-%s.yml' % tag)
        with open(play, 'w') as f:
            f.write(MODULE_PLAY.format(host=self.name, tag=tag))
        timer = os.path.join(directory, 'timer.jsonl')
        if os.path.exists(timer):
            os.remove(timer)
        rc, out, _wall = run_playbook(play, '-i', inventory, collections_path=collections, timeout=900, env={
            'BENCH_TIMER_FILE': timer, 'ANSIBLE_CALLBACK_PLUGINS': os.path.join(HERE, 'callback_plugins'),
            'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer', 'CONTAINERS_CONF': PODMAN_ENV['CONTAINERS_CONF']})
        with open(timer) as f:
            task = [json.loads(line) for line in f][-1]
        exited = self.first_exit(tag)
        return {'rc': rc, 'outcome': task['outcome'], 'after_exit': task['returned'] - exited if exited else None,
                'message': task['msg'], 'leaked': SERVER_KEY in out}


def bench_crash(checkouts, runs):
    """{tag: {'router': [result...], 'module': [result...]}} for each checkout (tag -> path)."""
    results = {tag: {'router': [], 'module': []} for tag in checkouts}
    with CrashHost(checkouts) as host, tempfile.TemporaryDirectory() as directory:
        for tag in sorted(checkouts):
            for _run in range(runs):
                results[tag]['router'].append(host.router_case(tag))
                results[tag]['module'].append(host.module_case(tag, directory))
    return results


def report(results):
    """Print the figures; return True when every run of the first tag ('this') met the 1 s goal."""
    met = True
    for tag in sorted(results, key=lambda t: t != 'this'):
        for case in ('router', 'module'):
            for r in results[tag][case]:
                after = r['after_exit']
                shown = '%.3f s' % after if after is not None else 'never exited?'
                result = ('%s, whole request %.2f s' % (r['status'], r['request'])) if case == 'router' else \
                    ('task %s' % r['outcome'])
                print('    %-8s %-6s first exit -> failed: %-10s (%s)%s' % (
                    tag, case, shown, result, '  KEY LEAKED' if r['leaked'] else ''))
                if tag == 'this':
                    met = met and after is not None and after <= 1.0 and not r['leaked']
            message = ' | '.join(str(results[tag][case][-1]['message']).splitlines())
            print('    %-8s %-6s message: %s' % (tag, case, message[:400] + (' ...' if len(message) > 400 else '')))
    return met
