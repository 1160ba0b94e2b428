# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router under REAL systemd: a podman container of localhost/gpufleet-host:bookworm (systemd as
PID 1, `make hosts-image`). The router runs as its own user `llm-router` with NoNewPrivileges=yes and
may start/stop backend units only through the polkit rule roles/llm_router/templates/50-llm-router.rules.j2.
Backends are the loopback double (tests/doubles/openai_backend.py) run as systemd units.

Needs the image and Debian packages (polkitd is installed into the container at set-up)."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jinja2
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / 'tests/support'))

import router_package  # noqa: E402  pylint: disable=wrong-import-position

IMAGE = os.environ.get('GPUFLEET_HOST_IMAGE', 'localhost/gpufleet-host:bookworm')
ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get('CONTAINERS_CONF', str(ROOT / 'tests/hosts/containers.conf')))
SITE = Path(__import__('aiohttp').__file__).resolve().parents[1]
# The router needs httptools, yaml and uvloop (roles/llm_router/files/requirements.txt); the rest is the doubles' aiohttp.
DEPS = ('aiohttp', 'aiohappyeyeballs', 'aiosignal', 'attr', 'attrs', 'frozenlist', 'multidict', 'propcache',
        'yarl', 'idna', 'yaml', 'typing_extensions.py', 'uvloop', 'httptools')
CLIENT_KEY, SG_KEY, TABBY_KEY = 'ck-systemd-51c0e2', 'sg-systemd-77ab01', 'tabby-admin-systemd-0f9e3d'
MANAGED = ['dbl-sg.service', 'dbl-tabby.service', 'dbl-broken.service', 'dbl-crashy.service']
CRASHY_KEY = 'crashy-systemd-4d1e9b'

DOUBLE_UNIT = """[Unit]
Description=test double {name}
[Service]
User=nobody
Environment=PYTHONPATH=/opt/llm-router/lib
ExecStart=/usr/bin/python3 /opt/llm-router/openai_backend.py {args}
"""
ROUTER_UNIT = """[Unit]
Description=gpufleet.llm router (test)
[Service]
User=llm-router
Group=llm-router
NoNewPrivileges=yes
EnvironmentFile=/etc/llm-router/env
Environment=PYTHONPATH=/opt/llm-router:/opt/llm-router/lib
ExecStart=/usr/bin/python3 -m llm_router --config /etc/llm-router/router.yml
"""
CLIENT = r"""
import json, sys, time, urllib.request, urllib.error
model = sys.argv[1]
req = urllib.request.Request('http://127.0.0.1:4000/v1/chat/completions', method='POST',
    data=json.dumps({'model': model, 'messages': [{'role': 'user', 'content': 'hi'}]}).encode(),
    headers={'Authorization': 'Bearer ' + sys.argv[2], 'Content-Type': 'application/json'})
t0 = time.monotonic()
retry_after = None
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        status, body = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, body, retry_after = e.code, e.read().decode(), e.headers.get('Retry-After')
print(json.dumps({'status': status, 'body': body, 'seconds': time.monotonic() - t0, 'retry_after': retry_after}))
"""


def podman(*args, check=True, timeout=300):
    p = subprocess.run(['podman', *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def bundle(tmp):
    opt = tmp / 'opt/llm-router'
    (opt / 'lib').mkdir(parents=True)
    router_package.install(opt)                         # /opt/llm-router/llm_router/, as the role lays it out
    shutil.copy(ROOT / 'roles/backend_common/files/gpufleet_mask.py', opt)   # the backends' key-masking launcher
    shutil.copy(ROOT / 'tests/doubles/openai_backend.py', opt)
    (opt / 'client.py').write_text(CLIENT)
    for dep in DEPS:
        src = SITE / dep
        (shutil.copytree if src.is_dir() else shutil.copy)(src, opt / 'lib' / dep)
    units = tmp / 'etc/systemd/system'
    units.mkdir(parents=True)
    doubles = {
        'dbl-sg': '--port 8101 --api-key %s --models s1' % SG_KEY,
        'dbl-tabby': '--kind tabbyapi --port 8102 --admin-key %s --models a,b' % TABBY_KEY,
        'dbl-other': '--port 8103 --models o',
    }
    for name, args in doubles.items():
        (units / (name + '.service')).write_text(DOUBLE_UNIT.format(name=name, args=args))
    (units / 'dbl-broken.service').write_text(
        "[Service]\nExecStart=/bin/sh -c 'echo loading; sleep 0.5; echo CUDA error: out of memory >&2; exit 3'\n")
    # A server that cannot start (no GPU), under the key-masking launcher as the roles run backends,
    # in a Restart= loop (5 x 5 s to the start limit): the router must not wait through it.
    (units / 'dbl-crashy.service').write_text(
        "[Service]\nUser=nobody\nEnvironment=CRASHY_KEY=%s\nNotifyAccess=main\nRestart=on-failure\nRestartSec=5\n"
        "ExecStart=/usr/bin/python3 -I /opt/llm-router/gpufleet_mask.py --secrets-env CRASHY_KEY -- /bin/sh -c "
        "'echo loading the model with key $CRASHY_KEY; sleep 0.5; echo CUDA error: out of memory >&2; exit 3'\n"
        % CRASHY_KEY)
    (units / 'llm-router.service').write_text(ROUTER_UNIT)
    etc = tmp / 'etc/llm-router'
    etc.mkdir(parents=True)
    (etc / 'router.yml').write_text(json.dumps({
        'listen': {'host': '127.0.0.1', 'port': 4000}, 'readiness_timeout': 60, 'log_level': 'DEBUG',
        'min_residency': 0,                     # swaps at once (the wait: test_router_scheduling.py)
        'backends': {
            'sg': {'kind': 'sglang', 'url': 'http://127.0.0.1:8101', 'unit': 'dbl-sg.service', 'key_env': 'SG_KEY'},
            'tabby': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:8102', 'unit': 'dbl-tabby.service',
                      'key_env': 'TABBY_KEY'},
            'broken': {'kind': 'openai', 'url': 'http://127.0.0.1:8104', 'unit': 'dbl-broken.service'},
            'crashy': {'kind': 'openai', 'url': 'http://127.0.0.1:8105', 'unit': 'dbl-crashy.service'},
        },
        'models': {'s1': {'backend': 'sg'}, 'a': {'backend': 'tabby'}, 'b': {'backend': 'tabby'},
                   'x': {'backend': 'broken'}, 'y': {'backend': 'crashy'}}}))
    (etc / 'env').write_text('LLM_ROUTER_CLIENT_API_KEYS=%s\nSG_KEY=%s\nTABBY_KEY=%s\n' % (CLIENT_KEY, SG_KEY, TABBY_KEY))
    rules = tmp / 'etc/polkit-1/rules.d'
    rules.mkdir(parents=True)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters['to_json'] = json.dumps                 # what Ansible's to_json does for these values
    template = env.from_string((ROOT / 'roles/llm_router/templates/50-llm-router.rules.j2').read_text())
    (rules / '50-llm-router.rules').write_text(template.render(
        ansible_managed='managed by test_router_systemd.py', llm_router_user='llm-router',
        llm_router_managed_units=MANAGED))
    return tmp


@pytest.fixture(scope='module')
def host(tmp_path_factory):
    assert podman('image', 'exists', IMAGE, check=False).returncode == 0, \
        'test host image %s is missing: run `make hosts-image` first' % IMAGE
    name = 'gpufleet-router-%s' % uuid.uuid4().hex[:8]
    podman('run', '-d', '--name', name, '--systemd=always', IMAGE, '/sbin/init')
    try:
        deadline = time.monotonic() + 60
        while True:
            state = podman('exec', name, 'systemctl', 'is-system-running', check=False).stdout.strip()
            if state in ('running', 'degraded'):
                break
            assert time.monotonic() < deadline, 'systemd in %s did not boot: %s' % (name, state)
            time.sleep(0.5)
        podman('exec', name, 'sh', '-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive '
               'apt-get install -y -qq --no-install-recommends polkitd >/dev/null', timeout=600)  # on a test host
        podman('exec', name, 'useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'llm-router')
        podman('cp', str(bundle(tmp_path_factory.mktemp('bundle'))) + '/.', name + ':/')
        podman('exec', name, 'sh', '-c', 'chown -R root:root /opt/llm-router /etc/llm-router /etc/systemd/system '
               '/etc/polkit-1/rules.d && chmod 0600 /etc/llm-router/env && chmod 0644 /etc/polkit-1/rules.d/* '
               '&& systemctl daemon-reload && systemctl restart polkit && systemctl start llm-router')
        deadline = time.monotonic() + 60
        while podman('exec', name, 'python3', '-c', 'import socket; socket.create_connection(("127.0.0.1", 4000))',
                     check=False).returncode != 0:
            assert time.monotonic() < deadline, journal(name)
            time.sleep(0.5)
        yield name
    finally:
        podman('rm', '-f', '-t', '0', name, check=False)


def journal(name, unit='llm-router'):
    return podman('exec', name, 'journalctl', '--no-pager', '-u', unit, check=False).stdout


def ask(host, model):
    out = podman('exec', host, 'python3', '/opt/llm-router/client.py', model, CLIENT_KEY).stdout
    return json.loads(out)


def active(host, unit):
    return podman('exec', host, 'systemctl', 'is-active', unit, check=False).stdout.strip()


def test_router_runs_as_its_own_user_without_new_privileges(host):
    pid = podman('exec', host, 'systemctl', 'show', '-p', 'MainPID', '--value', 'llm-router').stdout.strip()
    status = podman('exec', host, 'cat', '/proc/%s/status' % pid).stdout
    uid = podman('exec', host, 'id', '-u', 'llm-router').stdout.strip()
    assert 'Uid:\t%s\t%s' % (uid, uid) in status
    assert 'NoNewPrivs:\t1' in status


def test_exclusive_swaps_start_and_stop_units(host):
    r = ask(host, 's1')
    assert r['status'] == 200, r['body'] + journal(host)
    assert (active(host, 'dbl-sg.service'), active(host, 'dbl-tabby.service')) == ('active', 'inactive')
    r = ask(host, 'a')
    assert r['status'] == 200, r['body'] + journal(host)
    assert (active(host, 'dbl-sg.service'), active(host, 'dbl-tabby.service')) == ('inactive', 'active')
    pid = podman('exec', host, 'systemctl', 'show', '-p', 'MainPID', '--value', 'dbl-tabby').stdout
    r = ask(host, 'b')                                 # same unit, other model: admin-API load, no restart
    assert r['status'] == 200, r['body']
    assert json.loads(r['body'])['model'] == 'b'
    assert podman('exec', host, 'systemctl', 'show', '-p', 'MainPID', '--value', 'dbl-tabby').stdout == pid
    r = ask(host, 's1')
    assert r['status'] == 200
    assert (active(host, 'dbl-sg.service'), active(host, 'dbl-tabby.service')) == ('active', 'inactive')
    log = journal(host)
    assert 'stopping dbl-tabby.service' in log and 'loading model b on backend tabby' in log


def test_failed_unit_gives_502_naming_the_unit_and_router_keeps_serving(host):
    r = ask(host, 'x')
    assert r['status'] == 502, r
    err = json.loads(r['body'])['error']
    assert err['code'] == 'backend_unit_failed'
    assert 'unit dbl-broken.service is not running' in err['message']
    assert 'ActiveState=failed' in err['message'] and 'Result=exit-code' in err['message']
    assert r['seconds'] < 20, 'a dead unit must not wait for the 60 s readiness timeout'
    r = ask(host, 's1')
    assert r['status'] == 200


def test_a_backend_that_crashes_at_start_fails_at_once_with_its_lines_then_is_backed_off(host):
    assert ask(host, 's1')['status'] == 200
    r = ask(host, 'y')
    assert r['status'] == 502, r
    err = json.loads(r['body'])['error']
    assert err['code'] == 'backend_unit_failed'
    # auto-restart is a crash: not waited through (Restart= loop: about 27 s to the start limit before)
    assert 'unit dbl-crashy.service is not running' in err['message'] and 'SubState=auto-restart' in err['message']
    assert 'its server exited with status 3' in err['message']
    # its last lines, masked, from the launcher's status text (the router cannot read the journal)
    assert 'last lines: loading the model with key *** | CUDA error: out of memory' in err['message'], err
    assert CRASHY_KEY not in r['body'] and CRASHY_KEY not in journal(host)
    assert r['seconds'] < 10, r
    assert 'not started again for 30 s' in err['message']
    for model in ('y', 's1', 'y'):
        r = ask(host, model)
        if model == 'y':                                    # refused at once, nothing stopped for it
            assert r['status'] == 503 and 0 < int(r['retry_after']) <= 30, r
            assert json.loads(r['body'])['error']['code'] == 'backend_backoff'
            assert 'CUDA error: out of memory' in json.loads(r['body'])['error']['message']
        else:
            assert r['status'] == 200, r
    assert active(host, 'dbl-sg.service') == 'active'       # the working backend keeps serving


def test_polkit_rule_allows_only_start_stop_and_reset_failed_of_backend_units(host):
    def as_router(*args):
        return podman('exec', host, 'runuser', '-u', 'llm-router', '--', 'systemctl', *args, check=False)
    assert as_router('stop', 'dbl-sg.service').returncode == 0
    assert as_router('start', 'dbl-sg.service').returncode == 0
    assert as_router('reset-failed', 'dbl-broken.service').returncode == 0    # clears a start limit (swaps)
    for verb, unit in (('start', 'dbl-other.service'), ('stop', 'llm-router.service'),
                       ('restart', 'dbl-sg.service'), ('stop', 'polkit.service'),
                       ('reset-failed', 'llm-router.service'), ('reset-failed', 'polkit.service')):
        p = as_router(verb, unit)
        assert p.returncode != 0, (verb, unit)
        assert 'Access denied' in p.stderr or 'authentication required' in p.stderr.lower(), p.stderr
    assert active(host, 'dbl-other.service') == 'inactive'
    assert active(host, 'polkit.service') == 'active'


def test_no_key_in_the_journal(host):
    log = journal(host)
    assert 'swap to model' in log
    for key in (CLIENT_KEY, SG_KEY, TABBY_KEY):
        assert key not in log
