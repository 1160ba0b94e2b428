# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Swap scheduling on loopback (docs/router.md, "Swap scheduling"): two REAL llama-server instances
of the tiny model as the units of a systemctl stand-in with systemd's start limit
(tests/support/systemctl_standin.py, tests/support/llama_units.py), exclusive policy.

- Two clients asking for two models in turn swap at most once per min_residency (no thrash); the
  swaps per request are printed (bench/swap_thrash.py prints them for any router source).
- A request for the other model waits at most min_residency (and one swap) under a steady stream of
  requests for the active one, which are served meanwhile (starvation is bounded both ways).
- Swaps faster than the units' start limit (StartLimitBurst=5 in 300 s) never leave a model
  unserved: the router clears the start limit its own swaps hit.

Durations are bounds that hold on a loaded 2-core machine (a swap of the tiny model takes about
0.3 s there); the figures are printed."""

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from router_helpers import AUTH, CLIENT_KEY, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'tests/support'))

import llama_units  # noqa: E402  pylint: disable=wrong-import-position

LLAMA_KEY = 'llama-sched-key-6a1f0c'


@pytest.fixture
def llama_router(procs, tmp_path):
    """start(min_residency) -> (router, state_dir): a router in front of units tiny-a and tiny-b."""
    dummy, router = procs
    state = tmp_path / 'units'

    def start(min_residency, **extra):
        ports = {'tiny-a': free_port(), 'tiny-b': free_port()}
        systemctl = llama_units.make_units(state, ports, LLAMA_KEY)
        cfg = {'swap_policy': 'exclusive', 'readiness_timeout': 60, 'systemctl': systemctl, 'log_level': 'INFO',
               'min_residency': min_residency,
               'backends': {name: {'kind': 'llamacpp', 'url': 'http://127.0.0.1:%d' % port,
                                   'unit': name + '.service', 'key_env': 'LLAMA_KEY'} for name, port in ports.items()},
               'models': {name: {'backend': name} for name in ports}}
        cfg.update(extra)
        return router(cfg, env={'LLAMA_KEY': LLAMA_KEY}), state

    yield start
    llama_units.stop_all(state)


def test_two_clients_asking_for_two_models_in_turn_swap_at_most_once_per_min_residency(llama_router):
    residency, seconds = 2.0, 12.0
    r, state = llama_router(residency)
    assert llama_units.chat(r.url, CLIENT_KEY, 'tiny-a')[0] == 200
    before = llama_units.swaps_total(r.url, CLIENT_KEY)
    results = llama_units.clients_in_turn(r.url, CLIENT_KEY, ['tiny-a', 'tiny-b'], seconds)
    swaps = llama_units.swaps_total(r.url, CLIENT_KEY) - before
    requests = sum(len(v) for v in results.values())
    statuses = {s for v in results.values() for s, dummy, dummy2 in v}
    longest = max(t for v in results.values() for dummy, t, dummy2 in v)
    print('two clients in turn for %g s, min_residency %g s: %d requests, %d swaps, %.3f swaps per request, '
          'longest wait %.2f s, unit starts %s' % (seconds, residency, requests, swaps, swaps / requests, longest,
                                                   llama_units.starts(state)))
    assert statuses == {200}, results
    assert all(len(v) >= 2 for v in results.values()), results      # both models were served, more than once
    # At most one swap per min_residency (plus the first one and the one in progress at the end).
    assert swaps <= seconds / residency + 2, swaps
    assert swaps / requests <= 0.25, (swaps, requests)
    # The bound both ways: no request waited longer than min_residency plus a swap (generous on a loaded machine).
    assert longest < residency + 10, longest


def test_a_request_for_the_other_model_waits_at_most_min_residency_while_the_active_one_serves(llama_router):
    residency = 4.0
    r, dummy = llama_router(residency)
    assert llama_units.chat(r.url, CLIENT_KEY, 'tiny-a')[0] == 200        # tiny-a ready: its residency starts
    ready_at = time.monotonic()
    stop = []

    def steady():                                # a steady stream of tiny-a: the next as soon as one is answered
        served = []
        while not stop:
            served.append((llama_units.chat(r.url, CLIENT_KEY, 'tiny-a')[0], time.monotonic()))
        return served

    with ThreadPoolExecutor(2) as pool:
        streams = [pool.submit(steady) for dummy2 in range(2)]
        time.sleep(0.5)
        asked = time.monotonic()
        status, took, code = llama_units.chat(r.url, CLIENT_KEY, 'tiny-b')
        answered = time.monotonic()
        stop.append(True)
        served = [x for s in streams for x in s.result()]
    print('tiny-b asked %.2f s after tiny-a became ready (min_residency %g s): answered after %.2f s; '
          '%d tiny-a requests served while it waited' % (asked - ready_at, residency, took,
                                                         sum(1 for dummy3, t in served if asked < t < answered)))
    assert (status, code) == (200, None)
    # tiny-a went on serving while tiny-b waited for its residency: requests queued for the active
    # model are served before the swap away from it (on a router that swaps at once: none or one)
    assert sum(1 for s, t in served if asked < t < answered - 0.5 and s == 200) >= 5, served
    # ... and tiny-b did not starve behind them: served within the residency left and one swap
    assert took < residency - (asked - ready_at) + 8, took
    assert took > residency - (asked - ready_at) - 0.5, took             # it did wait for the residency
    assert {s for s, dummy4 in served} == {200}
    health = httpx.get(r.url + '/health', headers=AUTH).json()
    assert health['active_backends'] in (['tiny-a'], ['tiny-b'])


def test_ping_pong_past_the_units_start_limit_keeps_every_model_served(llama_router):
    """Issue #17 item 6a: model ping-pong faster than StartLimitBurst=5 in 300 s. Every request is
    answered 200, the router cleared the start limits its own swaps hit, and a backend is active."""
    r, state = llama_router(0)                               # no residency: every request swaps
    answers = []
    for dummy in range(8):                                   # each unit started 8 times within seconds
        for model in ('tiny-a', 'tiny-b'):
            answers.append((model,) + llama_units.chat(r.url, CLIENT_KEY, model))
    starts = llama_units.starts(state)
    cleared = [line.split()[2] for line in (state / 'calls.log').read_text().splitlines()
               if line.split()[1] == 'reset-failed']
    print('ping-pong: %d requests, unit starts %s, start limits cleared %s'
          % (len(answers), starts, {u: cleared.count(u) for u in set(cleared)}))
    assert [a for a in answers if a[1] != 200] == []
    assert starts['tiny-a.service'] > 5 and starts['tiny-b.service'] > 5
    assert set(cleared) == {'tiny-a.service', 'tiny-b.service'}
    health = httpx.get(r.url + '/health', headers=AUTH).json()
    assert health['active_backends'] == ['tiny-b'], health
    assert llama_units.chat(r.url, CLIENT_KEY, 'tiny-a')[0] == 200
