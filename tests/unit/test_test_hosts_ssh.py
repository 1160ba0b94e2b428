"""Ansible reaches every systemd test host over ssh (tests/hosts/ssh-proxy), with the same settings in
the three places that say how: Molecule's shared config, the `make site` demo inventory and
tests/support/hosts_ssh.py (the security suite, the module's unit tests)."""
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'support'))
from hosts_ssh import KEY, PROXY, ssh_vars  # noqa: E402  pylint: disable=wrong-import-position

CONNECTION = ('ansible_connection', 'ansible_user', 'ansible_ssh_private_key_file', 'ansible_ssh_common_args')


def normalised(settings, root_spelling):
    """The connection settings with the spelling of the checkout's path replaced by the path."""
    out = {}
    for name in CONNECTION:
        value = settings[name].replace(root_spelling, str(REPO))
        out[name] = shlex.split(value) if name == 'ansible_ssh_common_args' else value
    return out


def test_the_support_module_reaches_hosts_over_ssh_through_the_proxy():
    want = ssh_vars()
    assert want['ansible_connection'] == 'ssh' and want['ansible_user'] == 'root'
    args = shlex.split(want['ansible_ssh_common_args'])
    assert 'ProxyCommand=%s %%h' % PROXY in args
    assert want['ansible_ssh_private_key_file'] == str(KEY)
    assert PROXY.stat().st_mode & 0o111, 'tests/hosts/ssh-proxy must be executable'


def test_molecule_uses_the_same_settings():
    config = yaml.safe_load((REPO / '.config' / 'molecule' / 'config.yml').read_text())
    options = config['provisioner']['connection_options']
    assert normalised(options, '${MOLECULE_PROJECT_DIRECTORY}') == normalised(ssh_vars(), str(REPO))
    assert config['provisioner']['config_options']['connection']['pipelining'] is True


def test_the_demo_inventory_uses_the_same_settings():
    inventory = REPO / 'inventories' / 'local'
    assert (inventory / '..' / '..').resolve() == REPO   # what {{ inventory_dir }}/../.. is
    settings = yaml.safe_load((inventory / 'group_vars' / 'all' / 'connection.yml').read_text())
    assert normalised(settings, '{{ inventory_dir }}/../..') == normalised(ssh_vars(), str(REPO))


def test_the_proxy_names_a_missing_key(tmp_path):
    proc = subprocess.run([str(PROXY), 'some-host'], capture_output=True, text=True, check=False,
                          env={'PATH': '/usr/bin:/bin', 'GPUFLEET_TEST_SSH_KEY': str(tmp_path / 'nokey')})
    assert proc.returncode == 1
    assert 'nokey.pub is missing' in proc.stderr and 'build-image.sh' in proc.stderr
