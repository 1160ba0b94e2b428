# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real systemd test hosts (podman, localhost/gpufleet-host:bookworm) of the security suite.

The suite's host runs all four roles through playbooks/site.yml (gpufleet.llm.site): the REAL TabbyAPI
(the unmodified snapshot of the commit the role pins, from ../shared/vendor/tabbyapi through the archive
method, its dependencies offline from the wheelhouse of tests/tools/tabbyapi-wheels.sh; no pip extras,
developer.unsafe_launch, started with no model), a llama.cpp instance (the real llama-server, built once
and cached by tests/tools/build-llama-server.sh), an SGLang instance (the test double) and the router in
front of them. The real TabbyAPI prints its API key and admin key at every start and writes loguru log
files: the grep of test_secret_hygiene.py proves the roles' launcher masks them.

The double host (``double_host``, the suite's host name + "-2") runs the TabbyAPI test double
(tests/doubles/tabbyapi), a llama.cpp instance and a router: the cases where a model must load
(test_faults.py's model-load faults, a request through the router to a TabbyAPI model) run there, and
test_rotation_faults.py uses it as the second host of its llama.cpp rotation. It has its own inventory
and shares the keys and the record of runs with the suite's host.

Every key is a fresh random value of this session. Every ansible-playbook run of the suite goes through
``SecurityHost.play``, which keeps its whole output so that test_secret_hygiene.py can grep all of it at
the end.

/opt/tabbyapi (TabbyAPI's install dir, where api_tokens.yml lives) is an 8 MB tmpfs on the suite's host,
so that test_faults.py can fill the file system under api_tokens.yml (the real tree takes about 1 MB).

GPUFLEET_KEEP_HOST=1 keeps the containers afterwards; GPUFLEET_SECHOST=<name> reuses such a kept host
and its double host (the session's fresh keys then reach them through the converge runs, as a key change
would).
"""

import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / 'tests' / 'support'))
from hosts_ssh import ssh_vars  # noqa: E402  pylint: disable=wrong-import-position
BIN = Path(sys.executable).parent
IMAGE = 'localhost/gpufleet-host:bookworm'
CA = '/usr/local/share/gpufleet-controller-ca.crt'
VENDOR = Path(os.environ.get('GPUFLEET_TABBYAPI_VENDOR') or ROOT.parent / 'shared' / 'vendor' / 'tabbyapi')
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / 'tests/hosts/containers.conf'))
# The groups of the double host: TabbyAPI (the double), llama.cpp (test_rotation_faults.py's second
# host) and the router (a request through it to the double's model).
DOUBLE_HOST_GROUPS = ('tabbyapi', 'llamacpp', 'llm_router')


def new_key(label):
    return 'sec-%s-%s' % (label, secrets.token_hex(12))


# The files that are meant to hold keys, and who may read them (owner, group, mode).
KEY_FILES = {
    '/opt/tabbyapi/api_tokens.yml': ('root', 'tabbyapi', '640'),
    '/etc/gpufleet/llamacpp/api-keys': ('root', 'llamacpp', '640'),
    '/etc/sglang/chat.key': ('root', 'root', '600'),
    '/etc/llm-router/env': ('root', 'llm-router', '640'),   # the router re-reads it at every reload
}


def container_sh(name, script, check=True, timeout=300, stdin=None):
    env = dict(os.environ, CONTAINERS_CONF=str(ROOT / 'tests/hosts/containers.conf'))
    proc = subprocess.run(['podman', 'exec', '-i', name, 'bash', '-c', script], capture_output=True, text=True,
                          input=stdin, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError('%s failed (%d): %s %s' % (script, proc.returncode, proc.stdout, proc.stderr))
    return proc


def files_holding(name, values, paths=('/etc', '/opt', '/var/log')):
    """Files under paths on the host (journal files included) that hold any of values, key files left out.
    The values reach the host through stdin, never a command line, and are removed afterwards."""
    container_sh(name, 'umask 077; cat > /root/.secsuite-keys', stdin=''.join(v + '\n' for v in values))
    try:
        found = container_sh(name, 'grep -rlaF -f /root/.secsuite-keys %s 2>/dev/null; true' % ' '.join(paths)).stdout
    finally:
        container_sh(name, 'rm -f /root/.secsuite-keys', check=False)
    return sorted(f for f in set(found.split()) if f not in KEY_FILES)


def journal_hits(name, values):
    """Keys in the whole journal of the host, every unit, -o verbose (journald's trusted fields too)."""
    journal = container_sh(name, 'journalctl --no-pager -o verbose').stdout
    assert len(journal) > 10000, 'journal of %s too short' % name
    return hits(journal, values)


def hits(text, values):
    """Which keys occur in text, each shown by its label only (sec-<label>-..., or "a rotated key" for
    the keys rotate_keys.yml made), never the value."""
    return sorted({(v.rsplit('-', 1)[0] + '-...' if v.startswith('sec-') else 'a rotated key') for v in values if v in text})


class SecurityHost:
    def __init__(self, name, workdir, groups=('tabbyapi', 'llamacpp', 'sglang', 'llm_router'), shares=None):
        """shares: another SecurityHost whose keys, secrets and record of runs this one shares."""
        self.name, self.workdir, self.groups = name, workdir, tuple(groups)
        if shares is not None:
            self.outputs, self.keys, self.extra_secrets = shares.outputs, shares.keys, shares.extra_secrets
        else:
            self.outputs = []            # (label, argv, output) of every ansible-playbook run
            self.keys = {
                'tabbyapi_api_key': new_key('tabby-api'),
                'tabbyapi_admin_key': new_key('tabby-admin'),
                'llamacpp_api_key': new_key('llamacpp'),
                'sglang_api_key': new_key('sglang'),
                'llm_router_client_api_keys': [new_key('client')],
            }
            self.extra_secrets = []      # wrong keys and rotated keys used by the tests (also never printed)
        self.group_vars = {}

    # -- every secret value of the session ---------------------------------------------------------
    def secrets(self):
        values = []
        for v in self.keys.values():
            values += v if isinstance(v, list) else [v]
        return values + self.extra_secrets

    # -- commands on the host ----------------------------------------------------------------------
    def sh(self, script, check=True, timeout=300):
        return container_sh(self.name, script, check=check, timeout=timeout)

    def http(self, url, key=None, header='Authorization', method='GET', body=None):
        """(status, body) of a request made on the host itself (the backends listen on its loopback)."""
        headers = {}
        if key is not None:
            headers[header] = ('Bearer ' + key) if header == 'Authorization' else key
        script = ('import json, sys, urllib.request, urllib.error\n'
                  'a = json.load(sys.stdin)\n'
                  'r = urllib.request.Request(a["url"], data=a["body"].encode() if a["body"] else None, '
                  'headers=a["headers"], method=a["method"])\n'
                  'r.add_header("Content-Type", "application/json")\n'
                  'try:\n    res = urllib.request.urlopen(r, timeout=30); print(res.status); print(res.read().decode())\n'
                  'except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n')
        import json  # pylint: disable=import-outside-toplevel
        proc = subprocess.run(['podman', 'exec', '-i', self.name, 'python3', '-c', script],
                              input=json.dumps({'url': url, 'headers': headers, 'method': method, 'body': body}),
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            return None, proc.stderr
        status, _ign, text = proc.stdout.partition('\n')
        return int(status), text

    # -- ansible-playbook --------------------------------------------------------------------------
    def write_inventory(self, overrides=None, extra_hosts=None):
        """extra_hosts: names (in every group, like this host) or a dict name -> list of its groups."""
        inv_dir = self.workdir / 'inventory'
        (inv_dir / 'group_vars').mkdir(parents=True, exist_ok=True)
        host = ssh_vars()
        hosts = {self.name: host}
        all_groups = ('tabbyapi', 'llamacpp', 'sglang', 'llm_router')
        extra = extra_hosts if isinstance(extra_hosts, dict) else {h: all_groups for h in extra_hosts or ()}
        member = {self.name: self.groups}
        for h, its_groups in extra.items():
            hosts[h] = dict(host)
            member[h] = its_groups
        groups = {g: {'hosts': {h: {} for h in hosts if g in member[h]}} for g in all_groups}
        (inv_dir / 'hosts.yml').write_text(yaml.safe_dump({'all': {'hosts': hosts, 'children': groups}}))
        variables = dict(self.group_vars, **self.keys)
        variables.update(overrides or {})
        for name, value in list(variables.items()):
            if value is KeyError:
                del variables[name]
        (inv_dir / 'group_vars' / 'all.yml').write_text(yaml.safe_dump(variables))
        return inv_dir

    def play(self, label, *args, overrides=None, extra_hosts=None, playbook='gpufleet.llm.site', timeout=1200,
             on_line=None):
        """Run site.yml (or another playbook) on the host; returns (rc, output, seconds).

        on_line: called with each line of output as it comes (e.g. to cause a fault at a given play)."""
        inv = self.write_inventory(overrides, extra_hosts)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / 'build/collections'), ANSIBLE_NOCOLOR='1',
                   ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_ROLES_PATH=str(ROOT / 'roles'),
                   CONTAINERS_CONF=str(ROOT / 'tests/hosts/containers.conf'), ANSIBLE_HOST_KEY_CHECKING='false',
                   PATH=str(BIN) + os.pathsep + os.environ.get('PATH', ''))
        argv = [str(BIN / 'ansible-playbook'), '-i', str(inv), playbook] + list(args)
        started = time.monotonic()
        with subprocess.Popen(argv, cwd=str(self.workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if on_line:
                    on_line(line)
                if time.monotonic() - started > timeout:
                    proc.kill()
            proc.wait()
        took = time.monotonic() - started
        output = ''.join(lines)
        self.outputs.append((label, argv, output))
        (self.workdir / ('play-%02d-%s.log' % (len(self.outputs), label))).write_text(output + '\n# rc %d, %.1f s\n' % (proc.returncode, took))
        print('[%s: rc %d, %.1f s]' % (label, proc.returncode, took))
        return proc.returncode, output, took


def _artifacts(workdir):
    art = workdir / 'artifacts'
    art.mkdir()
    doubles = ROOT / 'tests/doubles'
    subprocess.run('set -o pipefail; tar -C %s --exclude=__pycache__ -c tabbyapi | gzip -n > %s/tabbyapi-double.tar.gz'
                   % (doubles, art), shell=True, check=True, executable='/bin/bash')
    subprocess.run("set -o pipefail; tar -C %s --exclude=__pycache__ --transform 's,^sglang,sglang-0.0.0,' -c sglang"
                   " | gzip -n > %s/sglang-0.0.0.tar.gz" % (doubles, art), shell=True, check=True, executable='/bin/bash')
    # The real llama-server, built once and cached by tests/tools/build-llama-server.sh (make llama-server).
    built = subprocess.run([str(ROOT / 'tests/tools/build-llama-server.sh')], check=True, capture_output=True, text=True)
    shutil.copy(built.stdout.strip().splitlines()[-1], art / 'llama-server')
    (art / 'llama-server').chmod(0o755)
    subprocess.run([sys.executable, str(ROOT / 'tests/tools/make-tiny-gguf.py'), str(art / 'tiny.gguf')], check=True,
                   capture_output=True)
    return art


def _real_tabbyapi():
    """(archive, wheelhouse) of the REAL TabbyAPI at the commit the role pins, as tests/tools/site-demo.sh
    finds them: the unmodified snapshot in ../shared/vendor/tabbyapi (GPUFLEET_TABBYAPI_VENDOR) and the
    wheelhouse of tests/tools/tabbyapi-wheels.sh (built once, then cached; `make tabbyapi-wheels`)."""
    pinned = yaml.safe_load((ROOT / 'roles/tabbyapi/defaults/main.yml').read_text())['tabbyapi_git_version']
    assert len(pinned) == 40, 'tabbyapi_git_version is not a commit: %s' % pinned
    archives = sorted(VENDOR.glob('tabbyAPI-*-%s.tar.gz' % pinned[:12]))
    assert archives, 'no archive of TabbyAPI\'s pinned commit %s in %s' % (pinned[:12], VENDOR)
    built = subprocess.run([str(ROOT / 'tests/tools/tabbyapi-wheels.sh')], check=True, capture_output=True, text=True,
                           env=dict(os.environ, GPUFLEET_TABBYAPI_VENDOR=str(VENDOR)))
    wheels = built.stdout.strip().splitlines()[-1]
    assert Path(wheels, '.stamp').is_file(), 'tabbyapi-wheels.sh printed no wheelhouse: %s' % built.stdout
    return str(archives[0]), wheels


def start_container(name, hostname, *podman_args):
    """A fresh systemd test host named name (an old one of that name is removed), up and running."""
    subprocess.run(['podman', 'rm', '-f', name], env=PODMAN_ENV, capture_output=True, check=False)
    subprocess.run(['podman', 'run', '-d', '--name', name, '--hostname', hostname, '--systemd=always']
                   + list(podman_args) + [IMAGE, '/sbin/init'], env=PODMAN_ENV, check=True, capture_output=True)
    wait_for_systemd(name)


def wait_for_systemd(name):
    deadline = time.monotonic() + 60
    while container_sh(name, 'systemctl is-system-running', check=False).stdout.strip() not in ('running', 'degraded'):
        assert time.monotonic() < deadline, 'systemd did not come up in the test host %s' % name
        time.sleep(1)


def container_exists(name):
    return subprocess.run(['podman', 'container', 'exists', name], env=PODMAN_ENV, check=False).returncode == 0


class DoubleHostBringUp(threading.Thread):
    """Starts and converges the double host beside the suite's host's converge (most of a converge is
    waiting: on the host, on the gates), so that the second host costs the suite little time."""

    def __init__(self, host, reuse):
        super().__init__(name='double-host', daemon=True)
        self.host, self.reuse, self.result, self.error = host, reuse, None, None

    def run(self):
        try:
            if not (self.reuse and container_exists(self.host.name)):
                start_container(self.host.name, 'sechost2')
            wait_for_systemd(self.host.name)
            self.host.sh('mkdir -p /srv/models/exl2/double-model-exl2 /srv/models/exl2/second-model-exl2')
            self.result = self.host.play('converge-double-host', '-vvv', '--diff')
        except Exception as exc:  # pylint: disable=broad-exception-caught  # reported by double_host
            self.error = exc


@pytest.fixture(scope='session')
def sechost(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('sechost')
    reuse = os.environ.get('GPUFLEET_SECHOST', '')
    name = reuse or 'gpufleet-secsuite-%d' % os.getpid()
    host = SecurityHost(name, workdir)
    double = SecurityHost(name + '-2', tmp_path_factory.mktemp('doublehost'), groups=DOUBLE_HOST_GROUPS, shares=host)
    bring_up = None
    try:
        if not reuse:
            start_container(name, 'sechost', '--tmpfs', '/opt/tabbyapi:rw,size=8m,mode=0755')
        wait_for_systemd(name)
        art = _artifacts(workdir)
        real_archive, wheelhouse = _real_tabbyapi()
        host.sh('mkdir -p /srv/models/exl2/double-model-exl2 /srv/models/exl2/second-model-exl2')
        host.group_vars = {
            'gpufleet_serial': 2,
            # The REAL TabbyAPI (as molecule/tabbyapi_wrong_key installs it): no pip extras, offline from
            # the wheelhouse; on a CPU-only host it starts only with developer.unsafe_launch, and with no
            # model (none can load without a GPU).
            'tabbyapi_install_method': 'archive', 'tabbyapi_archive_src': real_archive,
            'tabbyapi_pip_wheelhouse': wheelhouse,
            'tabbyapi_pip_extras': '', 'tabbyapi_pip_cert': CA, 'tabbyapi_model_dir': '/srv/models/exl2',
            'tabbyapi_model_name': '', 'tabbyapi_gate_timeout': 120,
            'tabbyapi_config_extra': {'developer': {'unsafe_launch': True}},
            'sglang_pip_src': str(art / 'sglang-0.0.0.tar.gz'), 'sglang_pip_cert': CA, 'sglang_gate_timeout': 60,
            'sglang_instances': [{'name': 'chat', 'model_path': '/srv/models/hf/Qwen2.5-7B-Instruct'}],
            'llamacpp_install_method': 'copy', 'llamacpp_binary_src': str(art / 'llama-server'),
            'llamacpp_private_devices': True, 'llamacpp_gate_timeout': 120,
            'llamacpp_instances': [{'name': 'tiny', 'model_src': str(art / 'tiny.gguf'), 'ctx_size': 512, 'threads': 1}],
            'llm_router_pip_cert': CA,
            # Every backend runs at once (started and gated by its role), so every fault and grep of the
            # suite reaches every unit; the exclusive (router-managed) path is molecule/fleet's.
            'llm_router_swap_policy': 'shared',
        }
        # What the double host runs instead of the real TabbyAPI: the test double, with a model it loads.
        double.group_vars = dict(host.group_vars, **{
            'tabbyapi_archive_src': str(art / 'tabbyapi-double.tar.gz'), 'tabbyapi_pip_wheelhouse': '',
            'tabbyapi_model_name': 'double-model-exl2', 'tabbyapi_gate_timeout': 60,
        })
        bring_up = DoubleHostBringUp(double, reuse)
        bring_up.start()
        rc, output, took = host.play('converge', '-vvv', '--diff')
        host.converge = (rc, output, took)
        host.double, host.double_bring_up = double, bring_up
        yield host
    finally:
        if bring_up is not None:
            bring_up.join()
        for each in (host, double):
            if container_exists(each.name):
                (each.workdir / 'journal.txt').write_text(each.sh('journalctl --no-pager -o short-iso', check=False).stdout)
        if not os.environ.get('GPUFLEET_KEEP_HOST') and not reuse:
            for each in (name, double.name):
                subprocess.run(['podman', 'rm', '-f', each], env=PODMAN_ENV, capture_output=True, check=False)


@pytest.fixture(scope='session')
def converged(sechost):
    rc, output, _ign = sechost.converge
    assert rc == 0, output[-6000:]
    return sechost


@pytest.fixture(scope='session')
def double_host(converged):
    """The double host (conftest's docstring): the TabbyAPI test double (model double-model-exl2), llama.cpp
    'tiny' and the router, converged through site.yml with its own inventory, the suite's keys and record
    of runs; brought up beside the suite's host's converge."""
    bring_up = converged.double_bring_up
    bring_up.join()
    if bring_up.error is not None:
        raise bring_up.error
    rc, output, _ign = bring_up.result
    assert rc == 0, output[-6000:]
    return converged.double
