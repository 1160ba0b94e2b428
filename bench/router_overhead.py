# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How much latency and CPU does the router add? Loopback only, bounded request counts.

Starts the test double (tests/doubles/openai_backend.py) as the backend and the router in front of
it (the double's answers carry an OpenAI usage object: the non-stream ones always, the streams in a
last chunk because the bench asks for it with stream_options.include_usage), then runs
interleaved rounds: in each round every case (non-stream / stream, concurrency 1 / 16)
is measured direct to the backend and through the router, in alternating order. "Added" is the
router's percentile minus the direct percentile over all rounds. Proxy CPU per request comes from
/proc/<router pid>/stat (utime + stime) over the router's rounds only.

The load generator is a raw keep-alive HTTP/1.1 client on asyncio streams (content-length and
chunked answers) running on uvloop, so that its own cost stays small and identical for both targets.
It shares the machine's cores with the router and the backend (on a GPU host the clients are
elsewhere), so its CPU per request is printed too: ``--client-loop asyncio`` runs it on the standard
event loop, as this bench did before 2026-11-26, at about twice the CPU per request.

    .venv/bin/python bench/router_overhead.py [--rounds 5] [--requests 300] [--chunk-delay 0]
    .venv/bin/python bench/router_overhead.py --router-b /tmp/router_old.py   # A/B: two routers, one run

A router is either the package directory (default: this checkout's roles/llm_router/files/llm_router),
copied as the role installs it (with plugins/module_utils/_backend_probe.py when it holds none) and
run as ``python -m llm_router``, or a single router.py of the versions before the package (run as a
script; its _backend_probe.py is taken from next to it, else from plugins/module_utils).

The routers run with log_level INFO, as the role deploys them (one log line per proxied request,
written to a file here rather than to journald); ``--log-level WARNING`` measures without those lines.

With ``--router-b`` a second router (another version of the router, same config, own port) sits in
front of the same backend and is measured in the same rounds, interleaved with the first (the order
of direct / A / B rotates every round): on a shared machine only such same-run pairs compare.

Noise floor on the reference 2-core machine (two copies of one router in one run, load generator on
uvloop): ~0.04 ms at C=1 and ~0.45 ms at C=16 (p50); p99 ~1.2 ms non-stream, up to ~6 ms for a
stream's first byte at C=16. With ``--client-loop asyncio`` it was ~0.06 and ~1.4 ms.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests/support'))

import router_package  # noqa: E402  pylint: disable=wrong-import-position

CLIENT_KEY = 'bench-client-key'
BACKEND_KEY = 'bench-backend-key'
TICK = os.sysconf('SC_CLK_TCK')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, proc):
    for dummy in range(500):
        if proc.poll() is not None:
            sys.exit('a bench process exited early (%s)' % proc.returncode)
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit('port %d never opened' % port)


def router_command(path, workdir):
    """(argv without --config, PYTHONPATH) of the router at path: a package directory (laid out under
    workdir as the role installs it, python -m llm_router) or a router.py file (run as a script)."""
    path = Path(path)
    if path.is_dir():
        return [sys.executable, '-m', 'llm_router'], str(router_package.install(workdir, source=path))
    return [sys.executable, str(path)], str(ROOT / 'plugins/module_utils')


def cpu_seconds(pid):
    fields = Path('/proc/%d/stat' % pid).read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Conn:
    """One keep-alive HTTP/1.1 connection; request() returns (status, ttfb, total)."""

    def __init__(self, port, key):
        self.port, self.key = port, key.encode()

    async def open(self):
        self.r, self.w = await asyncio.open_connection('127.0.0.1', self.port)

    async def request(self, body):
        head = (b'POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n'
                b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n' % (self.key, len(body)))
        t0 = time.perf_counter()
        self.w.write(head + body)
        headers = await self.r.readuntil(b'\r\n\r\n')
        status = int(headers[9:12])
        lower = headers.lower()
        ttfb = None
        if b'transfer-encoding: chunked' in lower:
            while True:
                size = int((await self.r.readuntil(b'\r\n')).split(b';')[0], 16)
                data = await self.r.readexactly(size + 2)
                if ttfb is None:
                    ttfb = time.perf_counter() - t0
                if size == 0:
                    break
        else:
            n = int(lower.split(b'content-length:')[1].split(b'\r\n')[0])
            await self.r.readexactly(n)
            ttfb = time.perf_counter() - t0
        return status, ttfb, time.perf_counter() - t0


async def run_case(port, key, body, concurrency, n):
    conns = [Conn(port, key) for dummy in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    for c in conns:                                    # warm the path (and the router's pool)
        await c.request(body)
    results = []
    left = [n]

    async def worker(c):
        while left[0] > 0:
            left[0] -= 1
            status, ttfb, total = await c.request(body)
            if status != 200:
                raise SystemExit('status %d from port %d' % (status, port))
            results.append((ttfb, total))
    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.w.close()
    return results


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--requests', type=int, default=300, help='requests per case per target per round')
    ap.add_argument('--chunk-delay', type=float, default=0.0, help='backend pacing between stream chunks (s)')
    ap.add_argument('--chunks', type=int, default=8)
    ap.add_argument('--router', default=str(ROOT / 'roles/llm_router/files/llm_router'),
                    help='the router to measure (A): a package directory or a router.py; default: this checkout\'s package')
    ap.add_argument('--router-b', help='a second router (B), package directory or router.py, measured interleaved '
                    'with A in the same rounds')
    ap.add_argument('--log-level', default='INFO', choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'),
                    help="the routers' log_level (default INFO, as the role deploys: a line per request)")
    ap.add_argument('--client-loop', default='uvloop', choices=('uvloop', 'asyncio'),
                    help="the load generator's event loop (default uvloop: the cheaper client)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix='router-bench-'))
    bport = free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / 'tests/doubles/openai_backend.py'), '--port', str(bport),
                                '--api-key', BACKEND_KEY, '--models', 'm1', '--chunks', str(args.chunks),
                                '--chunk-delay', str(args.chunk_delay)], stderr=subprocess.DEVNULL)
    env = dict(os.environ, LLM_ROUTER_CLIENT_API_KEYS=CLIENT_KEY, BENCH_BACKEND_KEY=BACKEND_KEY)
    routers = {}                                       # label -> (process, port)
    for label, path in (('router', args.router), ('router B', args.router_b)):
        if path is None:
            continue
        rport = free_port()
        conf = tmp / ('router-%d.yml' % rport)
        conf.write_text(json.dumps({
            'listen': {'host': '127.0.0.1', 'port': rport}, 'log_level': args.log_level,
            'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:%d' % bport, 'key_env': 'BENCH_BACKEND_KEY'}},
            'models': {'m1': {'backend': 'b'}}}))
        argv, pythonpath = router_command(path, tmp / ('router-%d' % rport))
        routers[label] = (subprocess.Popen(argv + ['--config', str(conf)], env=dict(env, PYTHONPATH=pythonpath),
                                           stderr=open(tmp / ('router-%d.log' % rport), 'wb')), rport)
    labels = list(routers)
    try:
        wait_port(bport, backend)
        for proc, rport in routers.values():
            wait_port(rport, proc)
        # Both answers carry a usage object (the stream asks for it, as a client that wants its tokens
        # counted does), so the routers' token counting is part of what is measured.
        bodies = {m: json.dumps(dict({'model': 'm1', 'stream': m == 'stream',
                                      'messages': [{'role': 'user', 'content': 'Say hello in three languages.'}]},
                                     **({'stream_options': {'include_usage': True}} if m == 'stream' else {}))).encode()
                  for m in ('non-stream', 'stream')}
        cases = [(m, c) for m in ('non-stream', 'stream') for c in (1, 16)]
        targets = ['direct'] + labels
        samples = {(m, c, t): [] for m, c in cases for t in targets}
        cpu = {(t, c): [0.0, 0] for t in labels for c in (1, 16)}
        client_cpu = {t: [0.0, 0] for t in targets}    # the load generator's own CPU at C=16
        run = uvloop.run if args.client_loop == 'uvloop' else asyncio.run
        for rnd in range(args.rounds):
            for m, c in cases:
                shift = rnd % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    if target == 'direct':
                        port, key, pid = bport, BACKEND_KEY, None
                    else:
                        port, key, pid = routers[target][1], CLIENT_KEY, routers[target][0].pid
                    c0, own0 = cpu_seconds(pid) if pid else 0.0, time.process_time()
                    res = run(run_case(port, key, bodies[m], c, args.requests))
                    if c == 16:
                        client_cpu[target][0] += time.process_time() - own0
                        client_cpu[target][1] += len(res) + c
                    if pid:
                        cpu[(target, c)][0] += cpu_seconds(pid) - c0
                        cpu[(target, c)][1] += len(res) + c      # + warm-up requests
                    samples[(m, c, target)].extend(res)
            print('round %d/%d done' % (rnd + 1, args.rounds), file=sys.stderr)
    finally:
        for p in [r[0] for r in routers.values()] + [backend]:
            p.send_signal(signal.SIGTERM)
            p.wait(15)

    print('\nrouter overhead, loopback, %d rounds x %d requests per case and target, chunk delay %g s, %d chunks, '
          'router log_level %s, client on %s' % (args.rounds, args.requests, args.chunk_delay, args.chunks,
                                                 args.log_level, args.client_loop))
    for label in labels:
        print('%-8s = %s' % (label, args.router if label == 'router' else args.router_b))
    print('load average: %s' % ' '.join(Path('/proc/loadavg').read_text().split()[:3]))
    for label in labels:
        print('%s\n%-10s %3s %-6s | %9s %9s %9s | %9s %9s %9s' % (
            '' if label == 'router' else '\n' + label + ':', 'mode', 'C', 'metric', 'direct p50', 'router p50',
            'added p50', 'direct p99', 'router p99', 'added p99'))
        for m, c in cases:
            metrics = [('total', 1)] + ([('ttfb', 0)] if m == 'stream' else [])
            for name, idx in metrics:
                d = [s[idx] for s in samples[(m, c, 'direct')]]
                r = [s[idx] for s in samples[(m, c, label)]]
                d50, r50, d99, r99 = pct(d, 50), pct(r, 50), pct(d, 99), pct(r, 99)
                print('%-10s %3d %-6s | %9.3f %9.3f %+9.3f | %9.3f %9.3f %+9.3f' % (
                    m, c, name, d50, r50, r50 - d50, d99, r99, r99 - d99))
        for c in (1, 16):
            print('router CPU per request at C=%d: %.3f ms (over %d requests, all modes)'
                  % (c, cpu[(label, c)][0] / cpu[(label, c)][1] * 1000, cpu[(label, c)][1]))
    print('load generator CPU per request at C=16: %s' % ', '.join(
        '%s %.3f ms' % (t, v[0] / v[1] * 1000) for t, v in client_cpu.items()))
    print('noise floor on the reference 2-core machine (client on uvloop): ~0.04 ms at C=1, ~0.45 ms at C=16 '
          '(p99 ~1.2 ms non-stream, up to ~6 ms stream first byte)')


if __name__ == '__main__':
    main()
