# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Swaps per request under model ping-pong, for any router source (issue #17, items 3 and 6a).

Two REAL llama-server instances of the tiny model are the units of the systemctl stand-in (with
systemd's start limit, 5 starts in 300 s: tests/support/systemctl_standin.py) behind the router,
exclusive policy. Then:

(a) two clients, one per model, each sending its next request as soon as the last was answered, for
    --seconds: requests, swaps, swaps per request, the longest wait, the statuses;
(b) one client asking for the two models in turn, --pingpong requests: the statuses (a router that
    drives the units into their start limit answers 502 from the sixth start of a unit on).

Run from the checkout (after `make llama-server`):

    .venv/bin/python bench/swap_thrash.py [--source roles/llm_router/files/llm_router] [--min-residency S]

--source DIR: the router package to run (e.g. another checkout's roles/llm_router/files/llm_router);
--min-residency is written to the config only when given (a router without the field refuses it).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests/support'))

import llama_units  # noqa: E402  pylint: disable=wrong-import-position
import router_package  # noqa: E402  pylint: disable=wrong-import-position

CLIENT_KEY, LLAMA_KEY = 'bench-client-key-0d9a', 'bench-llama-key-4c1e'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_router(work, source, ports, residency, burst):
    systemctl = llama_units.make_units(work / 'units', ports, LLAMA_KEY)
    port = free_port()
    cfg = {'listen': {'host': '127.0.0.1', 'port': port}, 'swap_policy': 'exclusive', 'readiness_timeout': 60,
           'systemctl': systemctl, 'log_level': 'WARNING',
           'backends': {n: {'kind': 'llamacpp', 'url': 'http://127.0.0.1:%d' % p, 'unit': n + '.service',
                            'key_env': 'LLAMA_KEY'} for n, p in ports.items()},
           'models': {n: {'backend': n} for n in ports}}
    if residency is not None:
        cfg['min_residency'] = residency
    (work / 'router.yml').write_text(json.dumps(cfg))
    package = router_package.install(work / 'package', source=source)
    env = {'PATH': os.environ.get('PATH', ''), 'PYTHONPATH': str(package), 'LLAMA_KEY': LLAMA_KEY,
           'LLM_ROUTER_CLIENT_API_KEYS': CLIENT_KEY, 'START_LIMIT_BURST': str(burst)}   # to the stand-in
    log = open(work / 'router.log', 'wb')      # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, '-m', 'llm_router', '--config', str(work / 'router.yml')],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = 'http://127.0.0.1:%d' % port
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit('the router did not start: %s' % (work / 'router.log').read_text())
            time.sleep(0.05)
    return proc, url


def one_run(source, residency, seconds, pingpong):
    with tempfile.TemporaryDirectory(prefix='swap-thrash-') as tmp:
        work = Path(tmp)
        ports = {'tiny-a': free_port(), 'tiny-b': free_port()}
        proc, url = run_router(work, source, ports, residency, 1000)     # (a): swaps only, no start limit
        try:
            llama_units.chat(url, CLIENT_KEY, 'tiny-a')
            before = llama_units.swaps_total(url, CLIENT_KEY)
            results = llama_units.clients_in_turn(url, CLIENT_KEY, list(ports), seconds)
            swaps = llama_units.swaps_total(url, CLIENT_KEY) - before
            requests = sum(len(v) for v in results.values())
            statuses = Counter('%s%s' % (s, ' ' + c if c else '') for v in results.values() for s, dummy, c in v)
            longest = max(t for v in results.values() for dummy, t, dummy2 in v)
            print('(a) two clients, %g s, no start limit, min_residency %s: %d requests (%s), %d swaps, %.3f swaps '
                  'per request, longest wait %.2f s' % (seconds, 'absent' if residency is None else '%g s' % residency,
                                                        requests, ', '.join('%s: %d' % (m, len(v)) for m, v in
                                                                            results.items()),
                                                        swaps, swaps / max(1, requests), longest))
            print('    statuses %s; unit starts %s' % (dict(statuses), llama_units.starts(work / 'units')))
        finally:
            proc.terminate()
            proc.wait(10)
            llama_units.stop_all(work / 'units')
    with tempfile.TemporaryDirectory(prefix='swap-thrash-') as tmp:
        work = Path(tmp)
        ports = {'tiny-a': free_port(), 'tiny-b': free_port()}
        proc, url = run_router(work, source, ports, 0 if residency is not None else None, 5)
        try:
            answers = []
            t0 = time.monotonic()
            for i in range(pingpong):
                status, dummy, code = llama_units.chat(url, CLIENT_KEY, 'tiny-a' if i % 2 == 0 else 'tiny-b')
                answers.append('%s%s' % (status, ' ' + code if code else ''))
            print('(b) ping-pong, start limit 5 in 300 s, %d requests in %.1f s (min_residency 0 when the router has '
                  'it): statuses in order %s'
                  % (pingpong, time.monotonic() - t0, ' '.join(a.split()[0] for a in answers)))
            print('    %s; unit starts %s' % (dict(Counter(answers)), llama_units.starts(work / 'units')))
        finally:
            proc.terminate()
            proc.wait(10)
            llama_units.stop_all(work / 'units')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--source', default=str(router_package.SOURCE), help='router package directory')
    parser.add_argument('--min-residency', type=float, default=None)
    parser.add_argument('--seconds', type=float, default=12.0)
    parser.add_argument('--pingpong', type=int, default=16)
    args = parser.parse_args()
    print('router source: %s' % args.source)
    one_run(args.source, args.min_residency, args.seconds, args.pingpong)


if __name__ == '__main__':
    main()
