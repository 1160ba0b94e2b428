# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wall time of playbooks/site.yml: a fresh converge and an idempotent re-run, on 1 and on 4 hosts.

    .venv/bin/python bench/converge.py [--sizes 1 4] [--groups llamacpp llm_router] [--connection ssh podman]
                                       [--baseline OTHER_CHECKOUT] [--log DIR] [--keep]

Each size gets its own podman systemd test hosts (localhost/gpufleet-host:bookworm, `make
hosts-image`), named gpufleet-bench-<n>, removed afterwards (also on failure; --keep leaves them).
The hosts run a real llama-server with a tiny real GGUF model (tests/tools/build-llama-server.sh,
tests/tools/make-tiny-gguf.py) and, when the group list has it, the router in front of it; every
backend passes its readiness gate, so "converged" means "serves". All hosts of a size form one batch
(-e gpufleet_serial=size), which is how a fleet converges when the rollout is not the point.

Printed per checkout, connection and size: seconds of the fresh converge and of the re-run, their
ratio, the changed/failed counts of the re-run (the goal: changed=0) and its ok tasks per host.
Goals: a re-run of one host (all four roles) <= 45 s, a fresh converge <= 2x the re-run, 4 hosts at
most 1.5x one host. --baseline measures another checkout (e.g. `git worktree add /tmp/base main`)
in the same run, on its own fresh hosts, so that before and after share the machine's load.
Figures and the machine they came from: docs/converge.md.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests' / 'support'))
from hosts_ssh import ssh_vars  # noqa: E402  pylint: disable=wrong-import-position
IMAGE = os.environ.get('GPUFLEET_HOST_IMAGE', 'localhost/gpufleet-host:bookworm')
ENV = dict(os.environ)
ENV.setdefault('CONTAINERS_CONF', str(REPO / 'tests' / 'hosts' / 'containers.conf'))
ENV['ANSIBLE_CONFIG'] = str(REPO / 'ansible.cfg')
ENV['ANSIBLE_COLLECTIONS_PATH'] = str(REPO / 'build' / 'collections')
ENV['PATH'] = '%s:%s' % (REPO / '.venv' / 'bin', ENV.get('PATH', ''))
ENV['ANSIBLE_FORCE_COLOR'] = '0'
# Bench-only keys (throw-away hosts); the bench never prints them.
KEYS = {
    'tabbyapi_api_key': 'bench-tabby-api-KEY-61c0a9d2e4f8b7',
    'tabbyapi_admin_key': 'bench-tabby-admin-KEY-e2b7c4a19d03f5',
    'llamacpp_api_key': 'bench-llamacpp-KEY-47d1f0c8a3b96e',
    'sglang_api_key': 'bench-sglang-KEY-9a5e3c1f07b2d8',
    'llm_router_client_api_keys': ['bench-client-KEY-0f8e6d2c4b1a93'],
}


def run(cmd, **kw):
    return subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True, **kw)


def artifacts(workdir, llamacpp=True):
    """A llama-server binary (cached build) and the tiny model, and the packed test doubles."""
    server = ''
    if llamacpp:
        server = run([str(REPO / 'tests' / 'tools' / 'build-llama-server.sh')]).stdout.strip().splitlines()[-1]
    model = workdir / 'tiny.gguf'
    run([sys.executable, str(REPO / 'tests' / 'tools' / 'make-tiny-gguf.py'), str(model)])
    doubles = REPO / 'tests' / 'doubles'
    run(['bash', '-c', 'set -o pipefail; tar -C "%s" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner '
         '--exclude=__pycache__ -c tabbyapi | gzip -n > "%s"' % (doubles, workdir / 'tabbyapi-double.tar.gz')])
    run(['bash', '-c', 'set -o pipefail; tar -C "%s" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner '
         '--exclude=__pycache__ --transform "s,^sglang,sglang-0.0.0," -c sglang | gzip -n > "%s"'
         % (doubles, workdir / 'sglang-0.0.0.tar.gz')])
    return {'server': server, 'model': str(model), 'dir': str(workdir)}


def start_hosts(names):
    for name in names:
        subprocess.run(['podman', 'rm', '-f', name], env=ENV, capture_output=True, check=False)
        run(['podman', 'run', '-d', '--name', name, '--hostname', name, '--systemd=always', IMAGE, '/sbin/init'])
    deadline = time.monotonic() + 90
    for name in names:
        while True:
            state = subprocess.run(['podman', 'exec', name, 'systemctl', 'is-system-running'], env=ENV,
                                   capture_output=True, text=True, check=False).stdout.strip()
            if state in ('running', 'degraded'):
                break
            if time.monotonic() > deadline:
                raise SystemExit('%s: systemd did not come up (%s)' % (name, state))
            time.sleep(0.5)


def remove_hosts(names):
    for name in names:
        subprocess.run(['podman', 'rm', '-f', '-t', '2', name], env=ENV, capture_output=True, check=False)


def write_inventory(path, names, groups, art, connection):
    """A YAML inventory: every host in every group of the list, vars like inventories/local."""
    variables = dict(KEYS)
    host_map = {n: None for n in names}
    if connection == 'ssh':
        variables.update(ssh_vars())
    else:
        variables['ansible_connection'] = 'containers.podman.podman'
    variables.update({
        'ansible_python_interpreter': '/usr/bin/python3',
        'llamacpp_install_method': 'copy',
        'llamacpp_binary_src': art['server'],
        'llamacpp_private_devices': True,
        'llamacpp_instances': [{'name': 'tiny', 'model_src': art['model'], 'ctx_size': 512, 'threads': 1}],
        'tabbyapi_install_method': 'archive',
        'tabbyapi_archive_src': art['dir'] + '/tabbyapi-double.tar.gz',
        'tabbyapi_pip_extras': '',
        'tabbyapi_pip_cert': '/usr/local/share/gpufleet-controller-ca.crt',
        'tabbyapi_service_state': 'stopped',
        'sglang_pip_src': art['dir'] + '/sglang-0.0.0.tar.gz',
        'sglang_pip_cert': '/usr/local/share/gpufleet-controller-ca.crt',
        'sglang_instances': [{'name': 'chat', 'model_path': '/srv/models/chat'}],
        'sglang_service_state': 'stopped',
        'llm_router_pip_cert': '/usr/local/share/gpufleet-controller-ca.crt',
    })
    inventory = {'all': {'vars': variables, 'children': {g: {'hosts': host_map} for g in groups}}}
    path.write_text(json.dumps(inventory, indent=1))


def collections_of(tree):
    """ANSIBLE_COLLECTIONS_PATH / ANSIBLE_CONFIG of a checkout: its build/collections link (made if missing)."""
    link = Path(tree) / 'build' / 'collections' / 'ansible_collections' / 'gpufleet' / 'llm'
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(tree).resolve())
    return {'ANSIBLE_COLLECTIONS_PATH': str(Path(tree) / 'build' / 'collections'),
            'ANSIBLE_CONFIG': str(Path(tree) / 'ansible.cfg')}


def converge(inventory, size, tree=REPO):
    """(seconds, controller CPU seconds, {host: recap counts}, output) of one gpufleet.llm.site run
    with the collection of the checkout tree (this one, or --baseline).

    CPU seconds: user + system time of ansible-playbook and the processes it waited for (its workers,
    the podman/ssh clients); what bounds a batch when the controller has fewer free cores than hosts."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # serial is a play keyword: Ansible templates it before inventory variables exist, so the batch
    # size goes in as an extra variable (an inventory gpufleet_serial would be ignored: one at a time).
    proc = subprocess.run(['ansible-playbook', '-i', str(inventory), '-e', 'gpufleet_serial=%d' % size,
                           'gpufleet.llm.site'], env=dict(ENV, **collections_of(tree)),
                          capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = proc.stdout + proc.stderr
    recap = {}
    for host, counts in re.findall(r'^(gpufleet-bench-\d+)\s*:\s*(.*)$', output, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', counts)}
    if proc.returncode != 0:
        sys.stderr.write(output[-6000:])
        raise SystemExit('ansible-playbook failed (rc %d)' % proc.returncode)
    batches = output.count('PLAY [Rolling rollout')
    if batches != 1:
        raise SystemExit('the hosts converged in %d batches, not in one' % batches)
    for secret in [v for v in KEYS.values() if isinstance(v, str)] + KEYS['llm_router_client_api_keys']:
        if secret in output:
            raise SystemExit('a key appeared in the output of site.yml')
    return took, cpu, recap, output


def loadavg():
    with open('/proc/loadavg', encoding='ascii') as handle:
        return ' '.join(handle.read().split()[:3])


def total(recap, field):
    return sum(c.get(field, 0) for c in recap.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--groups', nargs='+', default=['llamacpp', 'llm_router'],
                        choices=['tabbyapi', 'llamacpp', 'sglang', 'llm_router'],
                        help='groups every bench host is in (tabbyapi and sglang: doubles, installed, stopped)')
    parser.add_argument('--connection', choices=['ssh', 'podman'], nargs='+', default=['ssh'],
                        help='ssh with the host\'s sshd (tests/hosts/ssh-proxy; as make site, Molecule and real '
                             'hosts) or podman exec (containers.podman.podman, which cannot pipeline); both: each in turn')
    parser.add_argument('--baseline', metavar='TREE',
                        help='a checkout of another version (e.g. git worktree add /tmp/base main): measured in the same '
                             'run, on its own fresh hosts, right after this checkout')
    parser.add_argument('--no-pipelining', action='store_true', help='turn ansible.cfg\'s pipelining off')
    parser.add_argument('--keep', action='store_true', help='leave the hosts running')
    parser.add_argument('--log', metavar='DIR', help='write the output of each run to DIR/<size>-fresh.log and '
                        '<size>-again.log (with ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks: the slowest tasks)')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON too')
    args = parser.parse_args(argv)
    if args.no_pipelining:
        ENV['ANSIBLE_PIPELINING'] = 'false'
    print('connection %s, pipelining %s, groups %s' % (' and '.join(args.connection), 'off' if args.no_pipelining else 'on',
                                                       ' '.join(args.groups)), flush=True)
    trees = [('this checkout', REPO)] + ([('baseline %s' % args.baseline, Path(args.baseline))] if args.baseline else [])

    work = Path(tempfile.mkdtemp(prefix='gpufleet-bench-'))
    results = []
    try:
        art = artifacts(work, 'llamacpp' in args.groups)
        for connection in args.connection:
            for label, tree in trees:
                for size in args.sizes:
                    results.append(measure(args, work, art, connection, label, tree, size))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print('| tree | connection | hosts | fresh converge (controller CPU) | idempotent re-run (controller CPU) '
          '| fresh / re-run | re-run changed | ok tasks per host |')
    print('|---|---|---|---|---|---|---|---|')
    for r in results:
        print('| %s | %s | %d | %.1f s (%.1f s) | %.1f s (%.1f s) | %.2f | %d | %d |'
              % (r['tree'], r['connection'], r['hosts'], r['fresh_s'], r['fresh_cpu_s'], r['rerun_s'], r['rerun_cpu_s'],
                 r['fresh_s'] / r['rerun_s'], r['rerun_changed'], r['tasks_per_host']))
    by_size = {(r['tree'], r['connection'], r['hosts']): r for r in results}
    for (tree, connection, hosts), four in sorted(by_size.items()):
        one = by_size.get((tree, connection, 1))
        if hosts == 4 and one:
            for kind in ('fresh_s', 'rerun_s'):
                ratio = four[kind] / one[kind]
                print('%s, %s: 4 hosts / 1 host, %s: %.2fx (goal <= 1.5x: %s)'
                      % (tree, connection, kind[:-2], ratio, 'met' if ratio <= 1.5 else 'MISSED'))
    print('load average at the end: %s; CPUs: %d' % (loadavg(), os.cpu_count() or 0))
    if args.json:
        print(json.dumps(results))
    return 0 if all(r['rerun_changed'] == 0 for r in results) else 1


def measure(args, work, art, connection, label, tree, size):
    names = ['gpufleet-bench-%d' % i for i in range(1, size + 1)]
    inventory = work / ('inventory-%d-%s.json' % (size, connection))
    start_hosts(names)
    try:
        write_inventory(inventory, names, args.groups, art, connection)
        load_before = loadavg()
        fresh, fresh_cpu, fresh_recap, fresh_log = converge(inventory, size, tree)
        again, again_cpu, again_recap, again_log = converge(inventory, size, tree)
        if args.log:
            prefix = '%s-%s-%d' % ('baseline' if tree != REPO else 'this', connection, size)
            Path(args.log).mkdir(parents=True, exist_ok=True)
            Path(args.log, prefix + '-fresh.log').write_text(fresh_log)
            Path(args.log, prefix + '-again.log').write_text(again_log)
    finally:
        if not args.keep:
            remove_hosts(names)
    row = {'tree': label, 'connection': connection, 'hosts': size, 'fresh_s': round(fresh, 1), 'rerun_s': round(again, 1),
           'fresh_cpu_s': round(fresh_cpu, 1), 'rerun_cpu_s': round(again_cpu, 1),
           'load_before': load_before, 'load_after': loadavg(),
           'fresh_changed': total(fresh_recap, 'changed'), 'rerun_changed': total(again_recap, 'changed'),
           'rerun_failed': total(again_recap, 'failed'),
           'tasks_per_host': round(total(again_recap, 'ok') / max(size, 1))}
    print('%s, %s, %d host(s): fresh converge %.1f s (changed=%d, controller CPU %.1f s), re-run %.1f s (changed=%d, '
          'failed=%d, controller CPU %.1f s, %d ok tasks per host); load average %s -> %s'
          % (label, connection, size, fresh, row['fresh_changed'], fresh_cpu, again, row['rerun_changed'],
             row['rerun_failed'], again_cpu, row['tasks_per_host'], load_before, row['load_after']), flush=True)
    return row


if __name__ == '__main__':
    sys.exit(main())
