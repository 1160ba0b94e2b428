# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection builds into a tarball that ansible-galaxy installs, and the installed copy (not
the checkout) runs gpufleet.llm.wait_for_backend by its full name from another directory."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'support'))

from fake_backend import FakeBackend  # noqa: E402
from run_play import TOP, run_playbook, write_play  # noqa: E402

GALAXY = os.path.join(os.path.dirname(sys.executable), 'ansible-galaxy')
KEY = 'sk-build-test-4e07408562'


def galaxy(*args, cwd, collections_path):
    # Only the target path: with the checkout on the path, install would find gpufleet.llm "already installed".
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([GALAXY] + list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def test_built_tarball_installs_and_runs(tmp_path):
    dist = tmp_path / 'dist'
    installed = tmp_path / 'installed'
    elsewhere = tmp_path / 'elsewhere'
    for d in (dist, installed, elsewhere):
        d.mkdir()

    galaxy('collection', 'build', '--output-path', str(dist), cwd=TOP, collections_path=str(installed))
    tarballs = list(dist.glob('gpufleet-llm-*.tar.gz'))
    assert len(tarballs) == 1
    with tarfile.open(str(tarballs[0])) as tar:
        names = set(tar.getnames())
    assert {'MANIFEST.json', 'FILES.json', 'plugins/modules/wait_for_backend.py',
            'plugins/module_utils/_backend_probe.py'} <= names
    # What development leaves in a checkout must not ship (galaxy.yml build_ignore). Such directories are
    # also written while tests run, which makes a build's checksums mismatch at install time.
    junk = {'.venv', 'build', '.git', '.hypothesis', '.pytest_cache', '.cache', '.ansible'}
    leftovers = sorted(set(n.split('/')[0] for n in names) & junk)
    leftovers += sorted(n for n in names if '__pycache__' in n.split('/'))
    assert not leftovers, 'add to build_ignore in galaxy.yml: %s' % leftovers

    out = galaxy('collection', 'install', '-p', str(installed), str(tarballs[0]), cwd=str(elsewhere),
                 collections_path=str(installed))
    assert 'gpufleet.llm' in out and 'was installed successfully' in out
    # galaxy.yml's dependency is resolved at install time (here by the copy the `ansible` package bundles).
    assert 'community.hashi_vault' in out, out
    top = installed / 'ansible_collections' / 'gpufleet' / 'llm'
    assert (top / 'LICENSE').is_file() and (top / 'meta' / 'execution-environment.yml').is_file()
    assert not (top / 'tests').exists() and not (top / 'molecule').exists()
    module_path = installed / 'ansible_collections' / 'gpufleet' / 'llm' / 'plugins' / 'modules' / 'wait_for_backend.py'
    assert module_path.is_file() and not module_path.is_symlink()

    fake = FakeBackend('tabbyapi', keys=[KEY], model='m').start()
    try:
        play = write_play(str(elsewhere), {'url': fake.url, 'backend': 'tabbyapi', 'api_key': '{{ k }}', 'timeout': 30},
                          secret_vars={'k': KEY})
        rc, out, _seconds = run_playbook(play, '-vvv', collections_path=str(installed), cwd=str(elsewhere))
    finally:
        fake.stop()
    assert rc == 0, out
    # -vvv names the module file it ran: it must be the installed copy, not the checkout.
    assert str(installed) in out
    assert TOP + '/plugins' not in out and 'build/collections' not in out
    assert KEY not in out
    assert fake.requests[0][3]['x-api-key'] == KEY
