# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Ansible reaches a systemd test host (a podman container of localhost/gpufleet-host:bookworm):
over ssh with pipelining, as it reaches a real GPU host. The host's sshd runs in inetd mode behind one
`podman exec` (tests/hosts/ssh-proxy); the key is made by tests/hosts/build-image.sh. The same
settings are in .config/molecule/config.yml (Molecule) and inventories/local (make site);
tests/unit/test_test_hosts_ssh.py keeps the three the same."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = ROOT / 'build' / 'test-hosts-ssh' / 'id_ed25519'
PROXY = ROOT / 'tests' / 'hosts' / 'ssh-proxy'
SSH_OPTIONS = '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'


def ssh_vars():
    """The inventory variables of a test host reached over ssh."""
    return {
        'ansible_connection': 'ssh',
        'ansible_user': 'root',
        'ansible_ssh_private_key_file': str(KEY),
        'ansible_ssh_common_args': '-o ProxyCommand="%s %%h" %s' % (PROXY, SSH_OPTIONS),
        'ansible_python_interpreter': '/usr/bin/python3',
    }
