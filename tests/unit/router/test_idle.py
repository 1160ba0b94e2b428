# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idle unload and preload (llm_router/idle.py) without a backend: which ttl applies, when a backend
counts down (times given, never measured), and an unload as the swap in progress: a request that
arrives meanwhile waits for it, then starts the backend again. systemctl is a script that records
its calls (test_lifecycle.py's), readiness answers are scripted."""

import asyncio
import sys

import pytest

from llm_router import config, idle, lifecycle, metrics

from test_lifecycle import MODELS_OK, SYSTEMCTL, calls, ready_answers

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'ck', 'TABBY_KEY': 'tk'}


@pytest.fixture
def systemctl(tmp_path):
    script = tmp_path / 'systemctl.py'
    script.write_text(SYSTEMCTL)
    return script


def watcher_for(script, **extra):
    doc = {
        'readiness_timeout': 5, 'systemctl': [sys.executable, str(script)],
        'backends': {
            'one': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:9', 'unit': 'one.service', 'ttl': 60},
            'tabby': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:9', 'key_env': 'TABBY_KEY'},
            'fixed': {'kind': 'openai', 'url': 'http://127.0.0.1:9'},
        },
        'models': {'m1': {'backend': 'one'}, 'alias': {'backend': 'one', 'ttl': 90},
                   'a': {'backend': 'tabby', 'ttl': 5}, 'b': {'backend': 'tabby'}, 'f': {'backend': 'fixed'}},
        'default_ttl': 30,
    }
    doc.update(extra)
    cfg = config.parse_config(doc, ENV)
    board = lifecycle.Switchboard(cfg, metrics.Metrics())
    return cfg, board, idle.Idle(cfg, board, board.metrics)


def test_the_ttl_is_the_models_then_the_backends_then_the_default_and_the_longest_wins(systemctl):
    cfg, dummy, watcher = watcher_for(systemctl)
    one, tabby, fixed = cfg.backends['one'], cfg.backends['tabby'], cfg.backends['fixed']
    assert watcher.ttl(one) == 90.0                    # m1: the backend's 60, alias: its own 90
    assert watcher.ttl(tabby) is None                  # nothing loaded: nothing to unload
    tabby.loaded = 'a'
    assert watcher.ttl(tabby) == 5.0
    tabby.loaded = 'b'
    assert watcher.ttl(tabby) == 30.0                  # default_ttl
    assert watcher.ttl(fixed) is None                  # no unit, not TabbyAPI: never
    cfg.models['alias'].ttl = 0
    assert watcher.ttl(one) is None                    # 0 (never) beats any number


def test_a_backend_counts_down_only_when_ready_idle_and_not_drained(systemctl):
    cfg, dummy, watcher = watcher_for(systemctl)
    one = cfg.backends['one']
    assert watcher.unload_in(one, now=100.0) is None            # not ready
    one.state = 'ready'
    assert watcher.unload_in(one, now=100.0) == 90.0            # seen ready at 100: the clock starts
    assert watcher.unload_in(one, now=130.0) == 60.0
    one.last_used = 150.0                                       # a request ended at 150
    assert watcher.unload_in(one, now=160.0) == 80.0
    assert watcher.unload_in(one, now=500.0) == 0.0             # due
    one.inflight = 1
    assert watcher.unload_in(one, now=500.0) is None            # a request in flight
    one.inflight, one.drained = 0, True
    assert watcher.unload_in(one, now=500.0) is None            # planned maintenance owns it
    one.drained, one.state = False, 'stopped'
    assert watcher.unload_in(one, now=500.0) is None and 'one' not in watcher.ready_since


def test_a_request_arriving_during_an_unload_waits_and_starts_the_backend_again(systemctl):
    cfg, board, watcher = watcher_for(systemctl)
    ready_answers(board, {'one': MODELS_OK})
    one = cfg.backends['one']
    one.state = 'ready'

    async def go():
        assert watcher.look() == idle.TICK and board.swap is None   # seen ready now: 90 s to go
        watcher.ready_since['one'] -= 1000                      # as if seen ready 1000 s ago
        assert watcher.look() == idle.TICK                      # due: its unload begun at once
        assert one.state == 'unloading' and board.swap is not None
        await board.acquire(cfg.models['m1'])                   # arrives at that moment
        assert one.state == 'ready' and one.inflight == 1
        board.release(one)
    asyncio.run(go())
    assert calls(systemctl) == ['stop -- one.service', 'start -- one.service']   # waited for the stop
    assert board.metrics.unloads == {('one', 'm1', 'ttl'): 1}
    assert board.swap is None


def test_a_failed_unload_is_logged_and_leaves_the_backend_to_be_checked_again(systemctl):
    cfg, board, watcher = watcher_for(systemctl)
    tabby = cfg.backends['tabby']                               # nothing listens on its port
    tabby.state, tabby.loaded = 'ready', 'a'

    async def go():
        watcher.begin(tabby)
        await board.swap.task                                   # never raises
    asyncio.run(go())
    assert tabby.state == 'unknown' and tabby.last_error.startswith('idle unload failed: POST /v1/model/unload failed')
    assert board.metrics.unloads == {} and 'tk' not in tabby.last_error


def test_preload_makes_each_model_ready_in_order_and_goes_on_after_a_failure(systemctl):
    cfg, board, watcher = watcher_for(systemctl, swap_policy='shared', preload=['f', 'm1'],
                                      backends={'one': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:9',
                                                        'unit': 'one.service'},
                                                'fixed': {'kind': 'openai', 'url': 'http://127.0.0.1:9',
                                                          'unit': 'broken.service'}},
                                      models={'m1': {'backend': 'one'}, 'f': {'backend': 'fixed'}}, default_ttl=0)
    ready_answers(board, {'one': MODELS_OK})
    asyncio.run(watcher.preload())
    assert calls(systemctl)[0] == 'start -- broken.service' and calls(systemctl)[-1] == 'start -- one.service'
    assert cfg.backends['fixed'].state == 'failed' and cfg.backends['one'].state == 'ready'
    assert cfg.backends['one'].inflight == 0 and cfg.backends['one'].last_used > 0   # the idle clock started


def test_without_any_ttl_no_watcher_runs(systemctl):
    async def tasks(watcher):
        watcher.start()
        count = len(watcher.tasks)
        watcher.stop()
        return count
    plain = {'one': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:9', 'unit': 'one.service'}}
    assert asyncio.run(tasks(watcher_for(systemctl, backends=plain, models={'m1': {'backend': 'one'}},
                                         default_ttl=0)[2])) == 0
    assert asyncio.run(tasks(watcher_for(systemctl, backends=plain, models={'m1': {'backend': 'one', 'ttl': 9}},
                                         default_ttl=0)[2])) == 1
    assert asyncio.run(tasks(watcher_for(systemctl)[2])) == 1                 # default_ttl 30
