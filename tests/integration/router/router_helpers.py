# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real processes on loopback: test doubles (tests/doubles/openai_backend.py) and the router itself, its
package laid out as the role installs it (tests/support/router_package.py)."""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / 'tests/support'))

import router_package  # noqa: E402  pylint: disable=wrong-import-position

# The router's command line; PYTHONPATH names the directory install_router() returns.
ROUTER = [sys.executable, '-m', 'llm_router']
DOUBLE = ROOT / 'tests/doubles/openai_backend.py'

CLIENT_KEY = 'ck-current-7f3a9e1b'
OLD_CLIENT_KEY = 'ck-previous-2c8d4f60'
TABBY_API_KEY = 'tabby-api-5b1e7c22'
TABBY_ADMIN_KEY = 'tabby-admin-9d4a0f31'
SGLANG_KEY = 'sglang-key-3e6b8a17'
ALL_KEYS = (CLIENT_KEY, OLD_CLIENT_KEY, TABBY_API_KEY, TABBY_ADMIN_KEY, SGLANG_KEY)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def install_router(tmp_path):
    """The router package under tmp_path as the role installs it (once per tmp_path); returns the
    directory for PYTHONPATH."""
    dest = tmp_path / 'router-package'
    return dest if (dest / 'llm_router/__main__.py').exists() else router_package.install(dest)


def wait_port(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError('process exited with %s before listening on %d' % (proc.returncode, port))
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError('nothing listens on %d after %ss' % (port, timeout))


class Proc:
    def __init__(self, args, port, log_path, env=None, nofile=None):
        self.port, self.log_path = port, log_path
        self.url = 'http://127.0.0.1:%d' % port
        self._log = open(log_path, 'wb')
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=limit)
        wait_port(port, self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return Path(self.log_path).read_text(errors='replace')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Double(Proc):
    def stats(self):
        return httpx.get(self.url + '/_stats', timeout=5).json()


@pytest.fixture
def procs(tmp_path):
    started = []

    def double(kind='openai', api_keys=(), admin_key=None, port=None, **opts):
        port = port or free_port()
        args = [sys.executable, str(DOUBLE), '--port', str(port), '--kind', kind]
        for k in api_keys:
            args += ['--api-key', k]
        if admin_key:
            args += ['--admin-key', admin_key]
        for name, value in opts.items():
            args += ['--' + name.replace('_', '-'), str(value)]
        d = Double(args, port, tmp_path / ('double-%d.log' % port))
        started.append(d)
        return d

    def router(config, env=None, nofile=None):
        port = free_port()
        config = dict(config, listen={'host': '127.0.0.1', 'port': port})
        config.setdefault('log_level', 'DEBUG')
        config.setdefault('min_residency', 0)      # swaps at once; the wait: test_router_scheduling.py
        path = tmp_path / ('router-%d.yml' % port)
        path.write_text(yaml.safe_dump(config))
        full_env = {'PATH': os.environ.get('PATH', ''), 'PYTHONPATH': str(install_router(tmp_path)),
                    'LLM_ROUTER_CLIENT_API_KEYS': '%s,%s' % (CLIENT_KEY, OLD_CLIENT_KEY),
                    'TABBY_KEY': TABBY_ADMIN_KEY, 'SGLANG_KEY': SGLANG_KEY}
        full_env.update(env or {})
        r = Proc(ROUTER + ['--config', str(path)], port,
                 tmp_path / ('router-%d.log' % port), env=full_env, nofile=nofile)
        started.append(r)
        return r

    yield double, router
    for p in reversed(started):
        p.stop()


def two_backends(tabby, sglang, **extra):
    """Router config: TabbyAPI double with models a,b and an SGLang-like double with model s1."""
    cfg = {
        'backends': {
            'tabby': {'kind': 'tabbyapi', 'url': tabby.url, 'key_env': 'TABBY_KEY'},
            'sg': {'kind': 'sglang', 'url': sglang.url, 'key_env': 'SGLANG_KEY'},
        },
        'models': {'a': {'backend': 'tabby'}, 'b': {'backend': 'tabby'}, 's1': {'backend': 'sg'}},
    }
    cfg.update(extra)
    return cfg


AUTH = {'Authorization': 'Bearer ' + CLIENT_KEY}


def chat(model, stream=False, **extra):
    body = {'model': model, 'messages': [{'role': 'user', 'content': 'Hallo, wie geht\u2019s?'}], 'stream': stream}
    body.update(extra)
    return json.dumps(body, ensure_ascii=False).encode('utf-8')
