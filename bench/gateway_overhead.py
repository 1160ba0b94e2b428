# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How much latency does the gateway (HAProxy, roles/llm_gateway) add over a direct router call?
And how much memory does a connection cost it? Loopback only, bounded request counts.

Starts the test double (tests/doubles/openai_backend.py) as the backend, the router
(roles/llm_router/files/llm_router, as the role installs it) in front of it, and HAProxy (Debian's
package, /usr/sbin/haproxy) in front of the router, with the config rendered from the role's own
template (roles/llm_gateway/templates/haproxy.cfg.j2, the role's defaults; only what needs root is
left out: chroot, user, and the paths moved into a temporary directory). Then interleaved rounds as
in bench/router_overhead.py: in each round every case (non-stream / stream, concurrency 1 / 16) is
measured direct to the router and through the gateway, in alternating order. "Added" is the
gateway's percentile minus the direct percentile over all rounds.

Memory: --memory-connections connections each hold a request whose body is half sent (HAProxy keeps
its buffer for each); the growth of HAProxy's resident memory divided by their number is the cost
of one such connection, at the default llm_gateway_max_body and at --max-body.

    .venv/bin/python bench/gateway_overhead.py [--rounds 5] [--requests 300] [--max-body 524288]

BENCH_HAPROXY_ENV="NAME=value ..." adds to HAProxy's environment (tried: glibc's
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ at the default buffer: no clear gain, 2026-12-07).

One run on 2026-12-07, the shared 2-core machine at load average ~6 from other work (so p99 is noise):
--rounds 4 --requests 400, default llm_gateway_max_body 262144: added p50 +0.27 ms non-stream and
+0.13 ms stream first byte at C=1, +3.8 / +6.5 ms at C=16; HAProxy CPU 0.23 ms per request at C=1;
139 KiB per connection holding a half-sent body. With --max-body 65536: +0.15 / +0.04 ms at C=1,
0.19 ms CPU, 41 KiB.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import uvloop
import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from router_overhead import (  # noqa: E402  pylint: disable=wrong-import-position
    BACKEND_KEY, CLIENT_KEY, cpu_seconds, free_port, pct, router_command, run_case, wait_port)

ROOT = BENCH.parent
ROLE = ROOT / 'roles/llm_gateway'
HEALTH_KEY = 'bench-health-key-0123456789'
HAPROXY = '/usr/sbin/haproxy'
EXTRA_ENV = dict(v.split('=', 1) for v in os.environ.get('BENCH_HAPROXY_ENV', '').split() if v)


def render_config(tmp, gport, mport, rport, max_body):
    """haproxy.cfg from the role's template and defaults, for one router at 127.0.0.1:rport."""
    variables = yaml.safe_load((ROLE / 'defaults/main.yml').read_text())
    routers = [{'host': 'bench', 'server': 'bench', 'address': '127.0.0.1', 'port': rport, 'models': ['m1']}]
    models = [{'model': 'm1', 'backend': 'be_model_0', 'servers': ['bench']}]
    variables.update({
        'ansible_managed': 'bench/gateway_overhead.py', 'llm_gateway_http_enabled': True,
        'llm_gateway_bind_address': '127.0.0.1', 'llm_gateway_http_port': gport,
        'llm_gateway_metrics_port': mport, 'llm_gateway_max_body': max_body,
        '_llm_gateway_tls': False, '_llm_gateway_routers': routers, '_llm_gateway_models': models,
        '_llm_gateway_maxrewrite': 1024, '_llm_gateway_bufsize': max_body + 15360 + 1024,
        '_llm_gateway_admin_socket': str(tmp / 'admin.sock'), '_llm_gateway_health_cfg': str(tmp / 'health.cfg'),
        '_llm_gateway_state_file': str(tmp / 'server-state'),
        '_llm_gateway_pem': str(tmp / 'gateway.pem'), '_llm_gateway_models_map': str(tmp / 'models.map'),
        '_llm_gateway_models_json': str(tmp / 'models.json')})
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters['comment'] = lambda text: '#\n# %s\n#' % text
    env.filters['int'] = int
    env.filters['to_json'] = json.dumps
    env.filters['gpufleet.llm.gateway_server_address'] = lambda r: '%s:%d' % (r['address'], r['port'])
    for name in ('haproxy.cfg', 'models.map', 'models.json'):
        text = env.from_string((ROLE / 'templates' / (name + '.j2')).read_text()).render(**variables)
        if name == 'haproxy.cfg':      # what needs root on a gateway host
            text = '\n'.join(line for line in text.splitlines()
                             if line.strip().split(' ')[0] not in ('chroot', 'user', 'group')) + '\n'
        (tmp / name).write_text(text)
    return tmp / 'haproxy.cfg'


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path('/proc/%d/status' % pid).read_text().splitlines():
            if line.startswith('VmRSS:'):
                total += int(line.split()[1])
    return total


def haproxy_pids(master):
    out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(master)], capture_output=True, text=True, check=False)
    return [master] + [int(p) for p in out.stdout.split()]


def memory_per_connection(port, pids, count, max_body):
    """KiB of resident memory HAProxy takes per connection holding a half-sent body."""
    time.sleep(0.5)
    before = rss_kib(pids)
    socks = []
    for dummy in range(count):
        s = socket.create_connection(('127.0.0.1', port))
        head = ('POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n'
                'Content-Length: %d\r\n\r\n' % max_body).encode()
        s.sendall(head + b'{"model":"m1","x":"' + b'x' * (max_body // 2))
        socks.append(s)
    time.sleep(1.0)
    after = rss_kib(pids)
    for s in socks:
        s.close()
    return (after - before) / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--requests', type=int, default=300, help='requests per case per target per round')
    ap.add_argument('--chunks', type=int, default=8)
    ap.add_argument('--max-body', type=int, default=None,
                    help='llm_gateway_max_body of the latency run (default: the role\'s default)')
    ap.add_argument('--memory-connections', type=int, default=200)
    args = ap.parse_args()
    default_body = yaml.safe_load((ROLE / 'defaults/main.yml').read_text())['llm_gateway_max_body']
    max_body = args.max_body or default_body
    if not os.path.exists(HAPROXY):
        sys.exit('%s is missing: make machine installs it (tests/tools/machine-packages.txt)' % HAPROXY)

    tmp = Path(tempfile.mkdtemp(prefix='gateway-bench-'))
    bport, rport, gport, mport = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / 'tests/doubles/openai_backend.py'), '--port', str(bport),
             '--api-key', BACKEND_KEY, '--models', 'm1', '--chunks', str(args.chunks)], stderr=subprocess.DEVNULL))
        conf = tmp / 'router.yml'
        conf.write_text(json.dumps({
            'listen': {'host': '127.0.0.1', 'port': rport}, 'log_level': 'INFO',
            'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:%d' % bport, 'key_env': 'BENCH_BACKEND_KEY'}},
            'models': {'m1': {'backend': 'b'}}}))
        argv, pythonpath = router_command(ROOT / 'roles/llm_router/files/llm_router', tmp / 'router')
        router = subprocess.Popen(argv + ['--config', str(conf)], stderr=open(tmp / 'router.log', 'wb'), env=dict(
            os.environ, PYTHONPATH=pythonpath, BENCH_BACKEND_KEY=BACKEND_KEY,
            LLM_ROUTER_CLIENT_API_KEYS='%s,%s' % (CLIENT_KEY, HEALTH_KEY)))
        procs.append(router)
        wait_port(bport, procs[0])
        wait_port(rport, router)

        def start_haproxy(body):
            cfg = render_config(tmp, gport, mport, rport, body)
            proc = subprocess.Popen([HAPROXY, '-W', '-db', '-f', str(cfg)], env=dict(os.environ, LLM_GATEWAY_HEALTH_KEY=HEALTH_KEY, **EXTRA_ENV),
                                    stdout=open(tmp / 'haproxy.log', 'ab'), stderr=subprocess.STDOUT)
            wait_port(gport, proc)
            time.sleep(2.5)                                # the first health checks pass (rise 2)
            return proc

        memory = {}
        for body in sorted({default_body, max_body}):
            proc = start_haproxy(body)
            memory[body] = memory_per_connection(gport, haproxy_pids(proc.pid), args.memory_connections, body)
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        haproxy = start_haproxy(max_body)
        procs.append(haproxy)
        bodies = {m: json.dumps({'model': 'm1', 'stream': m == 'stream',
                                 'messages': [{'role': 'user', 'content': 'Say hello in three languages.'}]}).encode()
                  for m in ('non-stream', 'stream')}
        cases = [(m, c) for m in ('non-stream', 'stream') for c in (1, 16)]
        targets = [('direct', rport), ('gateway', gport)]
        samples = {(m, c, t): [] for m, c in cases for t, _ign in targets}
        cpu = {1: [0.0, 0], 16: [0.0, 0]}
        pids = haproxy_pids(haproxy.pid)
        for rnd in range(args.rounds):
            for m, c in cases:
                order = targets if rnd % 2 == 0 else targets[::-1]
                for target, port in order:
                    c0 = sum(cpu_seconds(p) for p in pids) if target == 'gateway' else 0
                    res = uvloop.run(run_case(port, CLIENT_KEY, bodies[m], c, args.requests))
                    if target == 'gateway':
                        cpu[c][0] += sum(cpu_seconds(p) for p in pids) - c0
                        cpu[c][1] += len(res) + c
                    samples[(m, c, target)].extend(res)
            print('round %d/%d done' % (rnd + 1, args.rounds), file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(15)

    version = subprocess.run([HAPROXY, '-v'], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    print('\ngateway overhead, loopback, %d rounds x %d requests per case and target, %d chunks, '
          'llm_gateway_max_body %d, %s' % (args.rounds, args.requests, args.chunks, max_body, version))
    print('load average: %s' % ' '.join(Path('/proc/loadavg').read_text().split()[:3]))
    print('%-10s %3s %-6s | %9s %9s %9s | %9s %9s %9s' % (
        'mode', 'C', 'metric', 'router p50', 'gw p50', 'added p50', 'router p99', 'gw p99', 'added p99'))
    for m, c in cases:
        for name, idx in [('total', 1)] + ([('ttfb', 0)] if m == 'stream' else []):
            d = [s[idx] for s in samples[(m, c, 'direct')]]
            g = [s[idx] for s in samples[(m, c, 'gateway')]]
            d50, g50, d99, g99 = pct(d, 50), pct(g, 50), pct(d, 99), pct(g, 99)
            print('%-10s %3d %-6s | %9.3f %9.3f %+9.3f | %9.3f %9.3f %+9.3f' % (
                m, c, name, d50, g50, g50 - d50, d99, g99, g99 - d99))
    for c in (1, 16):
        print('HAProxy CPU per request at C=%d: %.3f ms (over %d requests, all modes)'
              % (c, cpu[c][0] / cpu[c][1] * 1000, cpu[c][1]))
    for body, kib in sorted(memory.items()):
        print('memory per connection holding a half-sent body, llm_gateway_max_body %d (tune.bufsize %d): '
              '%.0f KiB (%d connections)' % (body, body + 16384, kib, args.memory_connections))


if __name__ == '__main__':
    main()
