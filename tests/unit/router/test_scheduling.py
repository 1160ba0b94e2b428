# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Swap scheduling (llm_router/scheduling.py): the config field min_residency; a swap that must close a
backend that became ready less than min_residency ago waits, while that backend goes on serving
(unless nobody uses it for IDLE_GRACE); the
start limit a swap clears. systemctl is a script that records its arguments (as in test_lifecycle.py);
the order of events is asserted, never a duration."""

import asyncio
import math
import time

import pytest

from llm_router import config, lifecycle
from test_lifecycle import ENV, MODELS_OK, board_for, calls, ready_answers, systemctl_script

# A unit whose start limit was hit: `start` is refused until `reset-failed` (systemd's message and
# Result); every start of 'failing' fails the same way, whatever reset-failed did.
LIMITED = r'''
import os, sys
args = sys.argv[1:]
with open(sys.argv[0] + '.log', 'a') as f:
    f.write(' '.join(args) + '\n')
verb, unit = args[0], args[-1]
cleared = os.path.exists(sys.argv[0] + '.cleared')
if verb == 'reset-failed':
    open(sys.argv[0] + '.cleared', 'w').close()
elif verb == 'show':         # systemd keeps an earlier failure's result (e.g. a stop that timed out)
    result = open(sys.argv[0] + '.result').read() if os.path.exists(sys.argv[0] + '.result') else 'start-limit-hit'
    print('ActiveState=failed\nSubState=failed\nResult=%s\nExecMainCode=0\nExecMainStatus=0' % result)
elif verb == 'start' and (unit.startswith('two') and not cleared or unit.startswith('broken')):
    print('Job for %s failed because start of the service was attempted too often.' % unit)
    sys.exit(1)
'''


@pytest.fixture
def systemctl(tmp_path):
    return systemctl_script(tmp_path)           # test_lifecycle's stand-in


@pytest.fixture
def limited(tmp_path):
    return systemctl_script(tmp_path, LIMITED)


def doc(**extra):
    d = {'backends': {'one': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}}, 'models': {'m': {'backend': 'one'}}}
    d.update(extra)
    return d


def test_min_residency_defaults_to_30_s_and_accepts_0_to_3600():
    assert config.parse_config(doc(), ENV).min_residency == 30.0
    for value in (0, 0.5, 12, 3600):
        assert config.parse_config(doc(min_residency=value), ENV).min_residency == float(value)
    assert config.parse_config(doc(min_residency=None), ENV).min_residency == 30.0


@pytest.mark.parametrize('value, message', [
    (-1, 'min_residency: must be 0 (no wait) to 3600 seconds, got -1'),
    (3600.5, 'min_residency: must be 0 (no wait) to 3600 seconds, got 3600.5'),
    (math.nan, 'min_residency: must be 0 (no wait) to 3600 seconds, got nan'),
    ('30s', 'min_residency: expected float, got str'),
    (True, 'min_residency: expected float, got bool'),
    ([30], 'min_residency: expected float, got list'),
])
def test_a_bad_min_residency_is_refused_naming_the_field(value, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse_config(doc(min_residency=value), ENV)
    assert str(e.value) == message


def exclusive_board(systemctl, residency):
    cfg, board = board_for(systemctl, min_residency=residency)
    for name in ('broken', 'crashy'):
        cfg.backends[name].state = 'stopped'
    ready_answers(board, {'one': MODELS_OK, 'two': MODELS_OK})
    return cfg, board


def test_a_swap_away_from_a_backend_ready_for_less_than_min_residency_waits_while_it_serves(systemctl):
    cfg, board = exclusive_board(systemctl, 0.3)
    one, two = cfg.backends['one'], cfg.backends['two']
    order = []

    async def go():
        await board.acquire(cfg.models['m1'])              # swap: stop two, start one; one ready now
        assert one.state == 'ready' and one.ready_since > time.monotonic() - 5
        before = list(calls(systemctl))
        other = asyncio.ensure_future(board.acquire(cfg.models['m2']))
        await asyncio.sleep(0)                             # the swap to two has begun: it waits (one is busy)
        assert board.swap is not None and board.swap.waiting
        assert board.swap.closing == {'one'} and board.swap.closed == frozenset()
        for dummy in range(3):                             # one keeps serving meanwhile, at once
            await board.acquire(cfg.models['m1'])
            order.append('m1 served')
            board.release(one)
        assert calls(systemctl) == before                  # nothing stopped yet
        board.release(one)                                 # the first m1 request ends
        await other
        order.append('m2 served')
        board.release(two)
    asyncio.run(go())
    assert order == ['m1 served'] * 3 + ['m2 served']
    assert calls(systemctl)[-2:] == ['stop -- one.service', 'start -- two.service']
    assert (one.state, two.state) == ('stopped', 'ready')


def test_requests_for_the_resident_backend_wait_once_its_residency_is_over(systemctl):
    """Bounded both ways: once min_residency is over, the swap closes the backend; a request for it
    that comes then waits for the swap, and the swap back waits for the other's residency in turn."""
    cfg, board = exclusive_board(systemctl, 3600)
    one, two = cfg.backends['one'], cfg.backends['two']

    async def go():
        await board.acquire(cfg.models['m1'])              # in flight until the residency is over
        one.ready_since = time.monotonic() - 3600 + 0.2    # its residency ends in 0.2 s
        other = asyncio.ensure_future(board.acquire(cfg.models['m2']))
        await asyncio.sleep(0)
        assert board.swap.waiting
        while board.swap.waiting:                          # one serves until then
            await board.acquire(cfg.models['m1'])
            board.release(one)
            await asyncio.sleep(0.02)
        assert board.swap.closed == {'one'}
        board.release(one)                                 # the first m1 request ends: the drain is over
        late = asyncio.ensure_future(board.acquire(cfg.models['m1']))   # waits for the swap to two
        await other
        assert two.state == 'ready' and one.state == 'stopped' and not late.done()
        await asyncio.sleep(0.05)                          # m2's request is in flight on two
        assert board.swap.model.name == 'm1' and board.swap.waiting    # the swap back waits for two's
        assert not late.done()
        board.swap.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
    asyncio.run(go())
    assert calls(systemctl)[-2:] == ['stop -- one.service', 'start -- two.service']


def test_no_wait_for_a_backend_ready_long_ago_or_not_ready(systemctl):
    cfg, board = exclusive_board(systemctl, 3600)
    one = cfg.backends['one']
    one.state, one.ready_since = 'ready', time.monotonic() - 3601
    assert board.residency_left([one]) == 0.0
    one.ready_since = time.monotonic()
    assert 3590 < board.residency_left([one]) <= 3600
    one.state = 'unknown'                                  # lost its backend: nothing to protect
    assert board.residency_left([one]) == 0.0
    asyncio.run(board.acquire(cfg.models['m2']))
    assert calls(systemctl) == ['stop -- one.service', 'start -- two.service']


def test_a_backend_in_its_residency_that_nobody_uses_is_closed_after_the_idle_grace(systemctl):
    """One request after the other for two models (a lone user, the role's proof requests): the
    backend that served the first gets no request while the swap waits, so the swap goes on after
    IDLE_GRACE (1 s), not after min_residency (an hour here)."""
    cfg, board = exclusive_board(systemctl, 3600)
    one, two = cfg.backends['one'], cfg.backends['two']

    async def go():
        await board.acquire(cfg.models['m1'])
        board.release(one)
        swap = asyncio.ensure_future(board.acquire(cfg.models['m2']))
        await asyncio.sleep(0)
        assert board.swap is not None and board.swap.waiting
        await asyncio.wait_for(swap, 30)
    asyncio.run(go())
    assert calls(systemctl)[-2:] == ['stop -- one.service', 'start -- two.service']
    assert (one.state, two.state) == ('stopped', 'ready')


def test_an_admin_drain_does_not_wait_for_a_swap_still_waiting_for_residency(systemctl):
    cfg, board = exclusive_board(systemctl, 3600)
    one = cfg.backends['one']

    async def go():
        await board.acquire(cfg.models['m1'])              # in flight: the swap to two waits
        other = asyncio.ensure_future(board.acquire(cfg.models['m2']))
        await asyncio.sleep(0)
        assert board.swap.waiting
        left = await asyncio.wait_for(board.drain([cfg.backends['two']], 10), 5)
        assert left == 0 and not other.done()
        board.swap.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
    asyncio.run(go())


def test_a_start_limit_hit_by_swaps_is_cleared_and_the_start_tried_again(limited):
    cfg, board = exclusive_board(limited, 0)
    asyncio.run(board.acquire(cfg.models['m2']))
    assert calls(limited) == ['stop -- one.service', 'start -- two.service',
                              'show --property=ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,StatusText '
                              '-- two.service', 'reset-failed -- two.service', 'start -- two.service']
    assert cfg.backends['two'].state == 'ready' and cfg.backends['two'].failures == 0


def test_a_start_limit_hidden_behind_an_earlier_failure_is_cleared_too(limited):
    """A unit left failed by its stop (Result=timeout) keeps that result when the limit refuses its
    start: a start refused while the unit is failed is cleared all the same."""
    limited.with_name(limited.name + '.result').write_text('timeout')
    cfg, board = exclusive_board(limited, 0)
    asyncio.run(board.acquire(cfg.models['m2']))
    assert calls(limited)[-2:] == ['reset-failed -- two.service', 'start -- two.service']
    assert cfg.backends['two'].state == 'ready'


def test_a_start_limit_is_not_cleared_for_a_unit_whose_last_start_failed(limited):
    cfg, board = exclusive_board(limited, 0)
    cfg.backends['two'].failures = 1                       # the router's last start of it failed
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['m2']))
    assert e.value.code == 'backend_unit_failed' and 'Result=start-limit-hit' in e.value.message
    assert 'reset-failed -- two.service' not in calls(limited)
    assert cfg.backends['two'].failures == 2               # the back-off goes on


def test_a_start_still_refused_after_reset_failed_fails_the_swap_once(limited):
    cfg, board = exclusive_board(limited, 0)
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['x']))
    assert e.value.code == 'backend_unit_failed' and 'attempted too often' in e.value.message
    assert [c.split()[0] for c in calls(limited)].count('start') == 2
    assert cfg.backends['broken'].failures == 1
