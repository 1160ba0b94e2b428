# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The package as a whole and its command line (llm_router/__main__.py), laid out as the role
installs it: every module is in the reading order of __init__.py and fits in a sitting, the copy
of _backend_probe.py is the collection's own file, and ``python -m llm_router`` answers
``--help``, ``--check`` and ``--reload`` as router.py did."""

import re
import resource
import subprocess
import sys
from pathlib import Path

import yaml

import llm_router
from llm_router import __main__ as main_module

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / 'roles/llm_router/files/llm_router'
CONFIG = {'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}}, 'models': {'m': {'backend': 'b'}}}


def run(installed_router, *args, env=None):
    return subprocess.run([sys.executable, '-m', 'llm_router', *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd='/', env=dict(env or {}, PYTHONPATH=str(installed_router)))


def test_every_module_is_in_the_reading_order_and_fits_in_a_sitting():
    listed = re.findall(r'^ *\d+\. +(\S+\.py) ', llm_router.__doc__, re.M)
    assert sorted(listed) == sorted(p.name for p in SOURCE.glob('*.py') if p.name != '__init__.py')
    for module in SOURCE.glob('*.py'):
        assert len(module.read_text().splitlines()) < 400, module.name
    assert not (SOURCE / '_backend_probe.py').exists()      # one source: the role copies plugins/module_utils'


def test_the_installed_package_holds_the_collections_backend_probe(installed_router):
    package = installed_router / 'llm_router'
    assert (package / '_backend_probe.py').read_bytes() == (ROOT / 'plugins/module_utils/_backend_probe.py').read_bytes()
    assert sorted(p.name for p in package.glob('*.py')) == sorted([p.name for p in SOURCE.glob('*.py')] + ['_backend_probe.py'])


def test_help_names_the_options(installed_router):
    proc = run(installed_router, '--help')
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: python -m llm_router [-h] --config CONFIG [--check] [--reload]')
    assert 'gpufleet.llm OpenAI-compatible router' in proc.stdout
    proc = run(installed_router)
    assert proc.returncode == 2 and 'the following arguments are required: --config' in proc.stderr


def test_check_and_reload(installed_router, tmp_path):
    path = tmp_path / 'router.yml'
    path.write_text(yaml.safe_dump(CONFIG))
    proc = run(installed_router, '--config', str(path), '--check', env={'LLM_ROUTER_CLIENT_API_KEYS': 'ck'})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, 'llm-router: config OK (1 backends, 1 models)\n', '')
    proc = run(installed_router, '--config', str(path), '--check')
    assert proc.returncode == 2
    assert proc.stderr == ('llm-router: config error: LLM_ROUTER_CLIENT_API_KEYS: environment variable is not set '
                           'or holds no key\n')
    proc = run(installed_router, '--config', str(path), '--reload')
    assert proc.returncode == 2 and 'admin_socket is not set in %s; send SIGHUP instead' % path in proc.stderr


def test_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
            assert main_module.raise_open_file_limit() == hard
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
