# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How fast does gpufleet.llm.wait_for_backend settle, in real ansible-playbook runs?

(a) Time to fail with a wrong key: the module vs the usual ansible.builtin.uri + until loop with
    the same budget, both against one TabbyAPI-like server (tests/support/fake_backend.py).
(b) Time from "the backend becomes ready" (the server loads its model at a known instant) to
    "the task returned" (a callback records when the task result reaches ansible-playbook).
(c) With --crash: a backend whose server exits while it starts, on a real systemd host (the roles'
    Restart= defaults), router and module, from the server's first exit to the failure; with
    --baseline OTHER_CHECKOUT, that checkout is measured in the same run (bench/crash_case.py).

Both instants are read from CLOCK_MONOTONIC (time.monotonic), which all processes on the machine
share. Run from the checkout after `make collection`:

    .venv/bin/python bench/fail_fast.py [--budget 60] [--runs 7]
    .venv/bin/python bench/fail_fast.py --crash [--baseline ../old-main] [--crash-runs 3]
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests', 'support'))

from fake_backend import FakeBackend  # noqa: E402
from run_play import run_playbook, write_play  # noqa: E402

KEY = 'sk-bench-right-a1b2c3'
WRONG = 'sk-bench-wrong-d4e5f6'
MODEL = 'Qwen3-8B-exl3'

URI_PLAY = """---
- name: The usual readiness loop
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - vars.yml
  tasks:
    - name: Warm up
      ansible.builtin.ping:
    - name: Wait with uri and until
      ansible.builtin.uri:
        url: "{url}/v1/model"
        headers:
          x-api-key: "{{{{ tabbyapi_api_key }}}}"
        status_code: 200
      register: probe
      until: probe.status == 200
      retries: {retries}
      delay: {delay}
"""


def timed_play(directory, play, extra_args=()):
    """Run a play with the bench_timer callback; return (rc, output, wall seconds, task records)."""
    timer_file = os.path.join(directory, 'timer.jsonl')
    if os.path.exists(timer_file):
        os.remove(timer_file)
    env = {
        'BENCH_TIMER_FILE': timer_file,
        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(HERE, 'callback_plugins'),
        'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer',
    }
    rc, out, seconds = run_playbook(play, *extra_args, env=env, timeout=900)
    records = []
    if os.path.exists(timer_file):
        with open(timer_file) as f:
            records = [json.loads(line) for line in f]
    return rc, out, seconds, records


def bench_wrong_key(directory, backend, budget, runs):
    play = write_play(directory, {'url': backend.url, 'backend': 'tabbyapi', 'api_key': '{{ tabbyapi_api_key }}',
                                  'model': MODEL, 'timeout': budget},
                      secret_vars={'tabbyapi_api_key': WRONG}, name='module.yml', warm_up=True)
    module_runs = []
    for _run in range(runs):
        rc, out, wall, records = timed_play(directory, play)
        assert rc == 2 and WRONG not in out, out
        ping, task = records[-2], records[-1]
        module_runs.append((task['returned'] - task['started'], task['elapsed'], ping['returned'] - ping['started'],
                            wall, task['msg']))

    delay = 2
    retries = max(1, int(budget // delay))
    uri_play = os.path.join(directory, 'uri.yml')
    with open(uri_play, 'w') as f:
        f.write(URI_PLAY.format(url=backend.url, retries=retries, delay=delay))
    rc, out, wall, records = timed_play(directory, uri_play)
    assert rc == 2, out
    task = records[-1]
    return module_runs, (task['returned'] - task['started'], wall, task['attempts'], retries, delay)


def bench_ready(directory, backend, runs, max_interval):
    """The model appears `offset` s after the module's first request; offsets vary across runs so the
    flip lands at different points of the back-off."""
    args = {'url': backend.url, 'backend': 'tabbyapi', 'api_key': '{{ tabbyapi_api_key }}', 'model': MODEL,
            'timeout': 120}
    if max_interval is not None:
        args['max_interval'] = max_interval
    play = write_play(directory, args, secret_vars={'tabbyapi_api_key': KEY}, name='ready.yml', warm_up=True)
    latencies = []
    for i in range(runs):
        offset = 0.5 + i * 0.73     # 0.5 s, 1.23 s, 1.96 s, ...: lands in different back-off pauses
        backend.model = None
        backend.requests[:] = []
        flipped = {}

        def flip():
            while not backend.requests:
                time.sleep(0.001)
            time.sleep(max(0.0, backend.requests[0][0] + offset - time.monotonic()))
            backend.model = MODEL
            flipped['at'] = time.monotonic()

        thread = threading.Thread(target=flip)
        thread.daemon = True
        thread.start()
        rc, out, _wall, records = timed_play(directory, play)
        thread.join(5)
        assert rc == 0 and KEY not in out, out
        task = records[-1]
        first_ready = min(r[0] for r in backend.requests if r[4] == 200)
        latencies.append((task['returned'] - flipped['at'], first_ready - flipped['at'], offset, task['attempts']))
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--budget', type=float, default=60, help='seconds both waits may take (default 60)')
    parser.add_argument('--runs', type=int, default=7, help='runs of the ready-latency measurement (default 7)')
    parser.add_argument('--wrong-key-runs', type=int, default=3)
    parser.add_argument('--max-interval', type=float, default=None,
                        help='max_interval for (b); default: the module default (0.25 s)')
    parser.add_argument('--crash', action='store_true',
                        help='measure (c), the crash case on a systemd host (needs `make hosts-image`), instead')
    parser.add_argument('--baseline', help='(c): another checkout (e.g. a git worktree of an older main) to measure too')
    parser.add_argument('--crash-runs', type=int, default=3)
    args = parser.parse_args()
    if args.crash:
        crash(args)
        return

    backend = FakeBackend('tabbyapi', keys=[KEY], model=MODEL).start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            module_runs, uri_run = bench_wrong_key(directory, backend, args.budget, args.wrong_key_runs)
            latencies = bench_ready(directory, backend, args.runs, args.max_interval)
    finally:
        backend.stop()

    print('(a) wrong key, budget %g s, TabbyAPI-like server at %s' % (args.budget, backend.url))
    for task_s, module_s, ping_s, wall_s, _msg in module_runs:
        print('    wait_for_backend   task %.3f s, of which inside the module %.3f s   (an ansible.builtin.ping task '
              'just before: %.3f s; whole ansible-playbook run %.2f s)' % (task_s, module_s, ping_s, wall_s))
    print('    message: %s' % module_runs[-1][-1])
    task_s, wall_s, attempts, retries, delay = uri_run
    print('    uri + until        task %.3f s   (whole ansible-playbook run %.2f s; retries=%d delay=%d, %s attempts)'
          % (task_s, wall_s, retries, delay, attempts))
    tasks = [r[0] for r in latencies]
    seen = [r[1] for r in latencies]
    print('(b) backend ready -> task returned, %d runs, max_interval %s' % (
        len(latencies), args.max_interval if args.max_interval is not None else '0.25 (default)'))
    for task_latency, probe_latency, offset, attempts in latencies:
        print('    ready %.2f s after first probe: probe saw it after %.3f s, task returned after %.3f s (%d attempts)'
              % (offset, probe_latency, task_latency, attempts))
    print('    task returned: median %.3f s, max %.3f s; probe saw it: median %.3f s, max %.3f s' % (
        statistics.median(tasks), max(tasks), statistics.median(seen), max(seen)))

    def verdict(ok):
        return 'met' if ok else 'MISSED'

    print('goal (a) <= 1 s to fail: inside the module %s (max %.3f s); whole task %s (max %.3f s)' % (
        verdict(max(r[1] for r in module_runs) <= 1.0), max(r[1] for r in module_runs),
        verdict(max(r[0] for r in module_runs) <= 1.0), max(r[0] for r in module_runs)))
    print('goal (b) <= 0.5 s ready -> task returned: median %s, max %s' % (
        verdict(statistics.median(tasks) <= 0.5), verdict(max(tasks) <= 0.5)))


def crash(args):
    from crash_case import bench_crash, report  # pylint: disable=import-outside-toplevel
    checkouts = {'this': os.path.dirname(HERE)}
    if args.baseline:
        checkouts['baseline'] = os.path.abspath(args.baseline)
    results = bench_crash(checkouts, args.crash_runs)
    print('(c) a server that exits 2 s into each start (Restart=on-failure, RestartSec=5, StartLimitBurst=5 in 300 s)')
    for tag, path in sorted(checkouts.items()):
        print('    %-8s = %s' % (tag, path))
    met = report(results)
    print('goal (c) <= 1 s from the first exit to the failed request / task, this checkout: %s'
          % ('met' if met else 'MISSED'))


if __name__ == '__main__':
    main()
