# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a Galaxy user gets: `ansible-galaxy collection build` of this checkout, and the file list of
the tarball. It holds what the collection needs (metadata, license, changelog, plugins, roles,
playbooks, docs, the example inventory with a plain vault.yml.example) and nothing of the
development checkout (test harness, Makefile, ansible.cfg, dot files, the local demo inventory,
DEMO vault passwords and the files encrypted with them). galaxy.yml declares every collection the
shipped content calls."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import posixpath
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
GALAXY = os.path.join(os.path.dirname(sys.executable), 'ansible-galaxy')
VAULT_HEADER = b'$ANSIBLE_VAULT;'
ROLES = ('backend_common', 'keys', 'llamacpp', 'llm_router', 'sglang', 'tabbyapi')

# Everything the top of the tarball may hold. Anything new at the top of the checkout must be either
# shipped on purpose (added here) or left out in galaxy.yml build_ignore.
TOP_LEVEL = {'MANIFEST.json', 'FILES.json', 'LICENSE', 'README.md', 'CHANGELOG.rst', 'changelogs', 'docs',
             'inventories', 'meta', 'playbooks', 'plugins', 'roles'}
REQUIRED = {
    'MANIFEST.json', 'FILES.json', 'LICENSE', 'README.md', 'CHANGELOG.rst', 'changelogs/changelog.yaml',
    'meta/runtime.yml', 'meta/execution-environment.yml', 'meta/ee-requirements.txt',
    'plugins/modules/wait_for_backend.py', 'plugins/module_utils/_backend_probe.py', 'plugins/filter/keys.py',
    'playbooks/site.yml', 'playbooks/rotate_keys.yml',
    'inventories/example/hosts.yml', 'inventories/example/group_vars/all/keys.yml',
    'inventories/example/group_vars/all/vault.yml.example',
} | {'roles/%s/tasks/main.yml' % role for role in ROLES} | {'roles/%s/meta/argument_specs.yml' % role for role in ROLES} | {
    # the router package the llm_router role copies to its hosts, every module of it
    'roles/llm_router/files/llm_router/' + name
    for name in os.listdir(os.path.join(TOP, 'roles/llm_router/files/llm_router')) if name.endswith('.py')}
# Left out at the top of the tarball, whatever else changes.
FORBIDDEN_TOP = {'tests', 'molecule', 'bench', 'Makefile', 'ansible.cfg', 'requirements', 'requirements.txt',
                 'build', '.venv', '.ci', '.config', '.git', '.gitignore', '.ansible-lint'}
# Collections the shipped content may use without declaring them.
BUILTIN = {'ansible.builtin', 'gpufleet.llm'}
# A module (task key), filter or lookup/query plugin named by its full name in YAML or Jinja.
FQCN_PATTERNS = (
    re.compile(r'^\s*(?:-\s+)?([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*:', re.M),
    re.compile(r'\|\s*([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*\b'),
    re.compile(r'''\b(?:lookup|query|q)\(\s*['"]([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*['"]'''),
    re.compile(r'^\s*ansible_(?:connection|become_method):\s*["\']?([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.', re.M),
)
MD_LINK = re.compile(r'\]\(([^)\s]+)\)')


def build(output_dir):
    """Build the checkout into output_dir; the tarball's path."""
    env = dict(os.environ, ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([GALAXY, 'collection', 'build', '--output-path', str(output_dir), TOP], cwd=str(output_dir),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    tarballs = sorted(str(p) for p in output_dir.glob('gpufleet-llm-*.tar.gz'))
    assert len(tarballs) == 1, (tarballs, proc.stdout)
    return tarballs[0]


@pytest.fixture(scope='module')
def package(tmp_path_factory):
    """{member name: bytes or None for a directory} of the built tarball."""
    tarball = build(tmp_path_factory.mktemp('dist'))
    members = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            name = member.name[2:] if member.name.startswith('./') else member.name
            members[name] = tar.extractfile(member).read() if member.isfile() else None
    return members


def files(package):
    return {name for name, data in package.items() if data is not None}


def test_required_files_are_shipped(package):
    missing = sorted(REQUIRED - files(package))
    assert not missing, 'missing from the tarball: %s' % missing
    docs = {'docs/' + name for name in os.listdir(os.path.join(TOP, 'docs')) if name.endswith('.md')}
    assert docs and docs <= files(package), sorted(docs - files(package))
    for role in ROLES:
        assert 'roles/%s/README.md' % role in package


def test_nothing_of_the_development_checkout_is_shipped(package):
    top = {name.split('/')[0] for name in package}
    assert not top & FORBIDDEN_TOP, sorted(top & FORBIDDEN_TOP)
    assert top <= TOP_LEVEL, 'not meant to ship (galaxy.yml build_ignore?): %s' % sorted(top - TOP_LEVEL)
    bad = sorted(name for name in package
                 if name.startswith('inventories/') and name.split('/')[1] != 'example')
    bad += sorted(name for name in package if 'DEMO-' in name)
    bad += sorted(name for name in package
                  if any(part.startswith('.') or part == '__pycache__' for part in name.split('/')))
    bad += sorted(name for name in package if name.endswith(('.pyc', '.retry', '.tar.gz')))
    bad += sorted(name for name in package if name.startswith('changelogs/fragments'))
    assert not bad, 'must not ship: %s' % bad


def test_no_vault_encrypted_file_is_shipped(package):
    # The example's vault.yml is encrypted with a password that is in git: nothing encrypted ships.
    encrypted = sorted(name for name, data in package.items() if data is not None and data.lstrip().startswith(VAULT_HEADER))
    assert not encrypted, encrypted
    assert 'inventories/example/group_vars/all/vault.yml' not in package


def test_vault_example_has_the_variables_of_the_example_vault(package):
    """vault.yml.example is plain YAML with placeholder values for the same variables as the
    checkout's (DEMO-encrypted) example vault, which is decrypted here without showing any value."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    example = yaml.safe_load(package['inventories/example/group_vars/all/vault.yml.example'])
    inventory = os.path.join(TOP, 'inventories', 'example')
    with open(os.path.join(inventory, 'DEMO-vault-password.txt'), 'rb') as f:
        secret = VaultSecret(f.read().strip())
    with open(os.path.join(inventory, 'group_vars', 'all', 'vault.yml'), 'rb') as f:
        # Only the names and types are kept: no key value may reach an assertion message.
        demo = {name: type(value).__name__
                for name, value in yaml.safe_load(VaultLib([('default', secret)]).decrypt(f.read())).items()}
    assert sorted(example) == sorted(demo)
    for name, value in example.items():
        if isinstance(value, list):
            assert all('REPLACE' in item for item in value), name
        else:
            assert isinstance(value, str) and value.startswith('REPLACE'), name
        assert type(value).__name__ == demo[name], name
    text = package['inventories/example/group_vars/all/vault.yml.example'].decode()
    assert 'ansible-vault encrypt' in text


def test_license_is_the_gpl3_text(package):
    text = package['LICENSE'].decode()
    assert text.split('\n', 2)[:2] == ['                    GNU GENERAL PUBLIC LICENSE',
                                       '                       Version 3, 29 June 2007']
    assert 'END OF TERMS AND CONDITIONS' in text and len(text) > 30000


def test_manifest_declares_the_dependencies_the_content_uses(package):
    manifest = json.loads(package['MANIFEST.json'])['collection_info']
    assert manifest['license'] == ['GPL-3.0-or-later']
    # No made-up addresses: the collection has no public home yet.
    for key in ('repository', 'documentation', 'homepage', 'issues'):
        assert not manifest.get(key), key
    used = set()
    for name, data in package.items():
        if data is None or not name.endswith(('.yml', '.yaml', '.j2')) or name.startswith(('changelogs/', 'docs/')):
            continue
        for pattern in FQCN_PATTERNS:
            used.update(pattern.findall(data.decode()))
    used -= BUILTIN
    assert used == {'community.hashi_vault'}, used
    assert sorted(manifest['dependencies']) == sorted(used)
    # vault_kv2_write is in community.hashi_vault from 4.2.0 on.
    assert manifest['dependencies']['community.hashi_vault'] == '>=4.2.0'


def test_runtime_requires_the_tested_ansible_core(package):
    runtime = yaml.safe_load(package['meta/runtime.yml'])
    assert runtime['requires_ansible'] == '>=2.19.0'


def test_changelog_has_the_release(package):
    changes = yaml.safe_load(package['changelogs/changelog.yaml'])
    manifest = json.loads(package['MANIFEST.json'])['collection_info']
    assert manifest['version'] in changes['releases']
    assert 'v%s' % manifest['version'] in package['CHANGELOG.rst'].decode()
    assert not re.search(r'https?://[^\s)]*example\.invalid', package['CHANGELOG.rst'].decode())


def test_every_markdown_link_points_into_the_tarball(package):
    """README.md and every other shipped Markdown file link only to files that ship (or to the web)."""
    broken = []
    for name, data in sorted(package.items()):
        if data is None or not name.endswith('.md'):
            continue
        for target in MD_LINK.findall(data.decode()):
            if re.match(r'^[a-z]+:', target) or target.startswith('#'):
                continue
            path = posixpath.normpath(posixpath.join(posixpath.dirname(name), target.split('#')[0]))
            if path not in package:
                broken.append('%s -> %s' % (name, target))
    assert not broken, broken
    assert MD_LINK.findall(package['README.md'].decode())  # the check did look at some links
