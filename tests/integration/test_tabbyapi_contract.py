# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TabbyAPI test double (tests/doubles/tabbyapi) answers like the REAL TabbyAPI in everything the
tests touch. Each branch (exl2-checkpoint, main) runs twice on loopback, side by side, with the same
config.yml and api_tokens.yml: the real server from its vendored snapshot (../shared/vendor/tabbyapi)
and the double, both in one venv of the real server's dependencies (tests/tools/tabbyapi-wheels.sh,
offline). No model: none can load without a GPU, and the double is used only where one must.

Compared, byte for byte where the tests read bytes: the answers (status and body) to the requests
the roles, the module and the scenarios make; what each prints at start (the keys included); the
log files each writes under its working directory; a key list (main takes it, exl2-checkpoint exits
at start); main's live reload of api_tokens.yml.
"""

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(os.environ.get('GPUFLEET_TABBYAPI_VENDOR', ROOT.parent / 'shared' / 'vendor' / 'tabbyapi'))
ARCHIVES = {'exl2-checkpoint': 'tabbyAPI-exl2-checkpoint-79126f904c2e.tar.gz', 'main': 'tabbyAPI-main-e632af41eba6.tar.gz'}
CACHE = Path(os.environ.get('GPUFLEET_CACHE', Path.home() / '.cache' / 'gpufleet'))
API, OTHER, ADMIN = 'contract-api-KEY-1f2e3d4c5b6a', 'contract-other-KEY-a9b8c7d6e5f4', 'contract-admin-KEY-0a1b2c3d4e5f'

# name: (method, path, headers, JSON body) -- what the gate, the router and the scenarios send.
REQUESTS = {
    'health': ('GET', '/health', {}, None),
    'model, no key': ('GET', '/v1/model', {}, None),
    'model, wrong key': ('GET', '/v1/model', {'x-api-key': 'wrong-key-123456'}, None),
    'model, x-api-key': ('GET', '/v1/model', {'x-api-key': API}, None),
    'model, bearer': ('GET', '/v1/model', {'Authorization': 'Bearer ' + API}, None),
    'model, x-admin-key': ('GET', '/v1/model', {'x-admin-key': ADMIN}, None),
    'models, x-api-key': ('GET', '/v1/models', {'x-api-key': API}, None),
    'models, admin key as x-api-key': ('GET', '/v1/models', {'x-api-key': ADMIN}, None),
    'models, wrong key': ('GET', '/v1/models', {'x-api-key': 'wrong-key-123456'}, None),
    'load, api key': ('POST', '/v1/model/load', {'x-api-key': API}, {'model_name': 'nope'}),
    'load, admin key, unknown model': ('POST', '/v1/model/load', {'x-admin-key': ADMIN}, {'model_name': 'nope'}),
    'unload, api key': ('POST', '/v1/model/unload', {'x-api-key': API}, None),
    'unload, admin key, no model': ('POST', '/v1/model/unload', {'x-admin-key': ADMIN}, None),
    'chat, no model': ('POST', '/v1/chat/completions', {'Authorization': 'Bearer ' + API},
                       {'messages': [{'role': 'user', 'content': 'hi'}]}),
    # Not compared: POST /v1/completions with no model loaded. Real exl2-checkpoint gives no answer in
    # 20 s there (main answers 503); nothing in the tests sends it without a model.
}


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='module')
def wheelhouse():
    assert (VENDOR / 'SHA256SUMS').exists(), 'the TabbyAPI snapshots are missing: %s' % VENDOR
    out = subprocess.run([str(ROOT / 'tests' / 'tools' / 'tabbyapi-wheels.sh')], capture_output=True, text=True,
                         timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def venv_of(branch, wheelhouse):
    """A venv with the real server's dependencies (and PyYAML, the double's), from the wheelhouse."""
    venv = CACHE / ('tabbyapi-contract-venv-' + branch)
    stamp = venv / '.stamp'
    want = (VENDOR / ARCHIVES[branch]).name + ' ' + Path(wheelhouse, '.stamp').read_text().strip()
    if not stamp.exists() or stamp.read_text() != want:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(['python3', '-m', 'venv', str(venv)], check=True)
        pip = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet', '--no-index',
                              '--find-links', wheelhouse, str(VENDOR / ARCHIVES[branch]), 'PyYAML'],
                             capture_output=True, text=True, timeout=900, check=False)
        assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
        stamp.write_text(want)
    return venv / 'bin' / 'python'


class Server:
    """One TabbyAPI (real or double) in its own working directory on a free loopback port."""

    def __init__(self, kind, branch, python, workdir, api_key):
        self.kind, self.branch, self.workdir = kind, branch, workdir
        workdir.mkdir(parents=True)
        if kind == 'real':
            with tarfile.open(VENDOR / ARCHIVES[branch]) as archive:
                archive.extractall(workdir / 'unpacked')  # noqa: S202  (our own vendored snapshot)
            shutil.copytree(workdir / 'unpacked' / 'tabbyAPI', workdir / 'app')
        else:
            shutil.copytree(ROOT / 'tests' / 'doubles' / 'tabbyapi', workdir / 'app',
                            ignore=shutil.ignore_patterns('__pycache__'))
        self.app = workdir / 'app'
        (workdir / 'models').mkdir()
        self.port = free_port()
        (self.app / 'config.yml').write_text(json.dumps({
            'network': {'host': '127.0.0.1', 'port': self.port, 'disable_auth': False},
            'model': {'model_dir': str(workdir / 'models')},
            'developer': {'unsafe_launch': True}}))
        self.write_tokens(api_key)
        env = dict(os.environ, TABBY_DOUBLE_BRANCH=branch, PYTHONUNBUFFERED='1', COLUMNS='400')
        self.output = open(workdir / 'output.txt', 'w+b')  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen([str(python), 'main.py', '--config', 'config.yml'], cwd=str(self.app), env=env,
                                     stdout=self.output, stderr=subprocess.STDOUT)

    def write_tokens(self, api_key):
        """api_tokens.yml as the role writes it: JSON values, replaced in one rename."""
        tmp = self.app / 'api_tokens.yml.tmp'
        tmp.write_text('api_key: %s\nadmin_key: %s\n' % (json.dumps(api_key), json.dumps(ADMIN)))
        os.replace(tmp, self.app / 'api_tokens.yml')

    def wait(self, timeout=120):
        """True once /health answers; False when the process ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen('http://127.0.0.1:%d/health' % self.port, timeout=2):
                    return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.3)
        raise AssertionError('%s %s did not answer in %d s: %s' % (self.kind, self.branch, timeout, self.printed()))

    def call(self, method, path, headers, body):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request('http://127.0.0.1:%d%s' % (self.port, path), data=data, method=method,
                                     headers=dict(headers, **({'Content-Type': 'application/json'} if data else {})))
        try:
            with urllib.request.urlopen(req, timeout=20) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def printed(self):
        self.output.flush()
        return (self.workdir / 'output.txt').read_text(errors='replace')

    def log_files(self):
        return sorted((self.app / 'logs').glob('*.log'))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()


@pytest.fixture(scope='module', params=['exl2-checkpoint', 'main'])
def pair(request, wheelhouse, tmp_path_factory):
    """The real server and the double of one branch, started side by side with the same files."""
    branch = request.param
    python = venv_of(branch, wheelhouse)
    work = tmp_path_factory.mktemp('contract-' + branch)
    keys = [API, OTHER] if branch == 'main' else API
    servers = {kind: Server(kind, branch, python, work / kind, keys) for kind in ('real', 'double')}
    try:
        for server in servers.values():
            assert server.wait(), '%s %s exited at start: %s' % (server.kind, branch, server.printed()[-3000:])
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize('name', sorted(REQUESTS))
def test_the_same_request_gets_the_same_answer(pair, name):
    real, double = pair['real'].call(*REQUESTS[name]), pair['double'].call(*REQUESTS[name])
    assert double == real, '%s: real %r, double %r' % (name, real, double)


def test_both_print_both_keys_at_start_and_write_them_to_a_log_file(pair):
    for kind, server in pair.items():
        keys = ', '.join([API, OTHER] if server.branch == 'main' else [API])
        printed = server.printed()
        assert 'Your API key is: %s' % keys in printed, (kind, printed[-3000:])
        assert 'Your admin key is: %s' % ADMIN in printed, (kind, printed[-3000:])
        files = server.log_files()
        assert len(files) == 1, (kind, files)
        text = files[0].read_text()
        assert 'Your API key is: %s' % keys in text and 'Your admin key is: %s' % ADMIN in text, (kind, text)
    # The same name pattern: logs/<date>_<time>_<microseconds>.log
    shapes = {kind: ''.join('9' if c.isdigit() else c for c in s.log_files()[0].name) for kind, s in pair.items()}
    assert shapes['real'] == shapes['double'], shapes


@pytest.mark.parametrize('pair', ['main'], indirect=True)   # exl2-checkpoint refuses a list: next test
def test_main_takes_a_key_list_and_reloads_it_live(pair):
    ask = ('GET', '/v1/models', {'x-api-key': OTHER}, None)
    for server in pair.values():
        assert server.call(*ask)[0] == 200
        server.write_tokens([API])
    deadline = time.monotonic() + 15
    answers = {}
    while time.monotonic() < deadline:
        answers = {kind: server.call(*ask) for kind, server in pair.items()}
        if all(answer[0] == 401 for answer in answers.values()):
            break
        time.sleep(0.5)
    assert answers['real'] == answers['double'] == (401, '{"detail":"Invalid API key"}'), answers
    for server in pair.values():
        assert server.call('GET', '/v1/models', {'x-api-key': API}, None)[0] == 200
        assert server.proc.poll() is None


def test_exl2_checkpoint_refuses_a_key_list_at_start(wheelhouse, tmp_path):
    python = venv_of('exl2-checkpoint', wheelhouse)
    for kind in ('real', 'double'):
        server = Server(kind, 'exl2-checkpoint', python, tmp_path / kind, [API, OTHER])
        try:
            assert server.wait() is False, '%s exl2-checkpoint started with a key list' % kind
            assert server.proc.returncode != 0
            assert 'Input should be a valid string' in server.printed(), (kind, server.printed()[-3000:])
        finally:
            server.stop()
