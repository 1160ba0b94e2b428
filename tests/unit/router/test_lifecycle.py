# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Switchboard (llm_router/lifecycle.py) without a backend: systemctl is a script that records
its arguments, and the backend's readiness answer is scripted (Switchboard._probe_get). What a swap
stops and starts, in which order; drained backends; failures as the client's status and code."""

import asyncio
import json
import sys

import pytest

from llm_router import config, lifecycle, metrics

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'ck', 'SG_KEY': 'sg-key'}
SYSTEMCTL = r'''
import sys
args = sys.argv[1:]
with open(sys.argv[0] + '.log', 'a') as f:
    f.write(' '.join(args) + '\n')
unit = args[-1]
if args[0] == 'show' and unit.startswith('crashy'):
    # its server exited with status 3; Restart=on-failure will start it again (the launcher's lines)
    print('ActiveState=activating\nSubState=auto-restart\nResult=exit-code\nExecMainCode=1\nExecMainStatus=3\n'
          'StatusText=last lines: loading model | CUDA error: out of memory')
elif args[0] == 'show':
    print('ActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=3')
elif unit.startswith('broken') and args[0] == 'start':
    print('Job for %s failed.' % unit)
    sys.exit(1)
'''


def systemctl_script(tmp_path, text=SYSTEMCTL):
    """The systemctl stand-in script text as tmp_path/systemctl.py (it logs its calls next to itself: calls())."""
    script = tmp_path / 'systemctl.py'
    script.write_text(text)
    return script


@pytest.fixture
def systemctl(tmp_path):
    return systemctl_script(tmp_path)


def board_for(systemctl, policy='exclusive', **extra):
    doc = {
        'swap_policy': policy, 'readiness_timeout': 5, 'drain_timeout': 0.2, 'retry_after': 7,
        'min_residency': 0,                 # a swap closes at once (the wait: test_scheduling.py)
        'systemctl': [sys.executable, str(systemctl)],
        'backends': {
            'one': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'unit': 'one.service'},
            'two': {'kind': 'sglang', 'url': 'http://127.0.0.1:9', 'unit': 'two.service', 'key_env': 'SG_KEY'},
            'fixed': {'kind': 'openai', 'url': 'http://127.0.0.1:9'},
            'broken': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'unit': 'broken.service'},
            'crashy': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'unit': 'crashy.service'},
        },
        'models': {'m1': {'backend': 'one'}, 'm2': {'backend': 'two'}, 'f': {'backend': 'fixed'},
                   'x': {'backend': 'broken'}, 'c': {'backend': 'crashy'}},
    }
    doc.update(extra)
    cfg = config.parse_config(doc, ENV)
    board = lifecycle.Switchboard(cfg, metrics.Metrics())
    return cfg, board


def calls(systemctl):
    log = systemctl.with_name(systemctl.name + '.log')
    return log.read_text().splitlines() if log.exists() else []


def ready_answers(board, answers):
    """The backend answers its key-checking endpoint with answers[backend name] (status, body)."""
    seen = []

    async def probe_get(b, path, headers, deadline):
        seen.append((b.name, path, headers))
        return answers[b.name]
    board._probe_get = probe_get          # pylint: disable=protected-access
    return seen


MODELS_OK = (200, json.dumps({'data': [{'id': 'm'}]}).encode())


def test_exclusive_swap_stops_the_others_then_starts_the_target_and_checks_its_key(systemctl):
    cfg, board = board_for(systemctl)
    seen = ready_answers(board, {'two': MODELS_OK})
    cfg.backends['broken'].state = cfg.backends['crashy'].state = 'stopped'

    async def go():
        await board.acquire(cfg.models['m2'])
        assert cfg.backends['two'].inflight == 1 and not cfg.backends['two'].idle.is_set()
        board.release(cfg.backends['two'])
        assert cfg.backends['two'].idle.is_set()
    asyncio.run(go())
    # the unit-managed backends not known to be stopped are stopped, the fixed one is never touched
    assert calls(systemctl) == ['stop -- one.service', 'start -- two.service']
    assert (cfg.backends['one'].state, cfg.backends['two'].state) == ('stopped', 'ready')
    assert cfg.backends['fixed'].state == 'unknown'
    assert seen == [('two', '/v1/models', {'Authorization': 'Bearer sg-key'})]
    assert board.metrics.swaps == {('two', 'm2', 'ok'): 1}
    assert board.swap is None


def test_shared_policy_starts_without_stopping(systemctl):
    cfg, board = board_for(systemctl, policy='shared')
    ready_answers(board, {'one': MODELS_OK})
    asyncio.run(board.acquire(cfg.models['m1']))
    assert calls(systemctl) == ['start -- one.service']


def test_a_ready_backend_is_acquired_without_a_swap(systemctl):
    cfg, board = board_for(systemctl)
    cfg.backends['fixed'].state = 'ready'
    asyncio.run(board.acquire(cfg.models['f']))
    assert calls(systemctl) == [] and cfg.backends['fixed'].inflight == 1


def test_a_failed_start_is_a_502_naming_the_unit_state(systemctl):
    cfg, board = board_for(systemctl, policy='shared')
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['x']))
    assert (e.value.status, e.value.code) == (502, 'backend_unit_failed')
    assert 'systemctl start broken.service failed (exit 1): Job for broken.service failed.' in e.value.message
    assert 'unit state: ActiveState=failed' in e.value.message
    reason = cfg.backends['broken'].last_error
    assert cfg.backends['broken'].state == 'failed' and e.value.message == reason + '; not started again for 30 s'
    assert board.metrics.swaps == {('broken', 'x', 'error'): 1}


def test_a_failed_backend_is_refused_at_once_for_a_doubling_back_off_without_stopping_anything(systemctl):
    cfg, board = board_for(systemctl, failure_backoff=10)
    for name in ('two', 'crashy', 'broken'):
        cfg.backends[name].state = 'stopped'
    ready_answers(board, {'one': MODELS_OK})
    asyncio.run(board.acquire(cfg.models['m1']))                       # one serves
    board.release(cfg.backends['one'])
    with pytest.raises(lifecycle.SwapError) as first:
        asyncio.run(board.acquire(cfg.models['x']))                    # stops one, broken fails to start
    assert first.value.status == 502 and first.value.message.endswith('; not started again for 10 s')
    asyncio.run(board.acquire(cfg.models['m1']))                       # one again
    board.release(cfg.backends['one'])
    before = calls(systemctl)
    for _attempt in range(3):                                          # the ping-pong: refused at once
        with pytest.raises(lifecycle.SwapError) as again:
            asyncio.run(board.acquire(cfg.models['x']))
        assert (again.value.status, again.value.code) == (503, 'backend_backoff')
        assert again.value.retry_after in (9, 10) and 'Job for broken.service failed.' in again.value.message
    assert calls(systemctl) == before and cfg.backends['one'].state == 'ready'   # one was not stopped
    cfg.backends['broken'].retry_at = 0.0                              # the back-off has passed
    with pytest.raises(lifecycle.SwapError) as second:
        asyncio.run(board.acquire(cfg.models['x']))
    assert second.value.status == 502 and second.value.message.endswith('; not started again for 20 s')
    assert cfg.backends['broken'].failures == 2
    asyncio.run(board.resume([cfg.backends['broken']]))               # not drained: nothing to resume
    cfg.backends['broken'].drained = True
    board.key_refused = lambda b: asyncio.sleep(0, result=False)
    asyncio.run(board.resume([cfg.backends['broken']]))               # its owner restarted it: try again
    assert (cfg.backends['broken'].failures, cfg.backends['broken'].retry_at) == (0, 0.0)


def test_a_server_that_exits_during_its_start_fails_the_swap_at_once_with_its_last_lines(systemctl):
    cfg, board = board_for(systemctl, policy='shared', readiness_timeout=300)

    async def refused(b, path, headers, deadline):
        raise lifecycle.UpstreamError('cannot connect to 127.0.0.1:9: connection refused')
    board._probe_get = refused            # pylint: disable=protected-access

    async def go():
        started = asyncio.get_running_loop().time()
        with pytest.raises(lifecycle.SwapError) as e:
            await board.acquire(cfg.models['c'])
        return e.value, asyncio.get_running_loop().time() - started
    error, took = asyncio.run(go())
    # auto-restart is a crash, not a slow start: no waiting for Restart= or for the 300 s timeout
    assert (error.status, error.code) == (502, 'backend_unit_failed')
    assert took < 5
    assert 'unit crashy.service is not running (ActiveState=activating ExecMainCode=1 ExecMainStatus=3' in error.message
    assert 'SubState=auto-restart' in error.message and 'its server exited with status 3' in error.message
    assert 'last lines: loading model | CUDA error: out of memory' in error.message
    assert 'last answer: cannot connect' in error.message


def test_without_the_launcher_s_lines_the_message_names_the_command_that_shows_them(systemctl):
    cfg, board = board_for(systemctl, policy='shared')
    b = cfg.backends['broken']
    why = board.unit_dead(b, {'ActiveState': 'failed', 'ExecMainCode': '2', 'ExecMainStatus': '9'}, 'ActiveState=failed',
                          'cannot connect')
    assert 'its server was killed by signal 9' in why
    assert 'its last lines: journalctl -u broken.service -n 50 --no-pager' in why
    assert board.unit_dead(b, {'ActiveState': 'activating', 'SubState': 'start'}, '', '') is None


def test_a_refused_key_is_a_502_and_counted(systemctl):
    cfg, board = board_for(systemctl, policy='shared')
    ready_answers(board, {'two': (401, b'{"error": "bad key"}')})
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['m2']))
    assert (e.value.status, e.value.code) == (502, 'backend_rejected_key')
    assert "comes from SG_KEY" in e.value.message and 'sg-key' not in e.value.message
    assert board.metrics.backend_auth_failures == {'two': 1}


def test_a_drained_backend_gets_503_with_retry_after_and_no_swap_touches_it(systemctl):
    cfg, board = board_for(systemctl)
    cfg.backends['one'].drained = True
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['m1']))
    assert (e.value.status, e.value.code, e.value.retry_after) == (503, 'backend_draining', 7)
    # a swap to another backend would have to stop the drained one: it is refused, not the backend's fault
    ready_answers(board, {'two': MODELS_OK})
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['m2']))
    assert e.value.code == 'backend_draining'
    assert calls(systemctl) == [] and cfg.backends['two'].state == 'unknown'
    assert board.metrics.swaps == {('two', 'm2', 'drained'): 1}


def test_drain_waits_for_requests_in_flight_within_its_timeout(systemctl):
    cfg, board = board_for(systemctl)
    b = cfg.backends['fixed']
    b.state = 'ready'

    async def go():
        await board.acquire(cfg.models['f'])
        left = await board.drain([b], 0.05)          # the request is still in flight
        assert left == 1 and b.drained
        asyncio.get_running_loop().call_later(0.05, board.release, b)
        assert await board.drain([b], 5) == 0
    asyncio.run(go())


def test_resume_keeps_a_backend_drained_while_it_refuses_the_key(systemctl):
    cfg, board = board_for(systemctl)
    b = cfg.backends['two']
    b.drained, b.state = True, 'ready'
    ready_answers(board, {'two': (403, b'forbidden')})
    assert asyncio.run(board.resume([b])) == ([], ['two'])
    assert b.drained and b.resume_pending and 'SG_KEY' in b.last_error
    ready_answers(board, {'two': MODELS_OK})
    assert asyncio.run(board.resume([b])) == (['two'], [])
    assert not b.drained and not b.resume_pending and b.state == 'unknown'   # re-checked before use


def test_a_lost_backend_is_checked_again(systemctl):
    cfg, board = board_for(systemctl)
    b = cfg.backends['one']
    b.state = 'ready'
    board.backend_failed(b, 'connection reset')
    assert (b.state, b.last_error) == ('unknown', 'connection reset')


def test_the_router_s_own_trouble_blames_no_backend(systemctl):
    """Out of file descriptors (EMFILE) while it connects to the backend or runs systemctl: 503
    router_overloaded with Retry-After; the backend is not marked failed, nor backed off."""
    cfg, board = board_for(systemctl, policy='shared')

    async def no_descriptors(b, path, headers, deadline):
        raise lifecycle.RouterOverloaded('the router cannot open a connection: Too many open files')
    board._probe_get = no_descriptors        # pylint: disable=protected-access
    with pytest.raises(lifecycle.SwapError) as e:
        asyncio.run(board.acquire(cfg.models['m1']))
    assert (e.value.status, e.value.code, e.value.retry_after) == (503, 'router_overloaded', 7)
    assert 'Too many open files' in e.value.message
    one = cfg.backends['one']
    assert one.state != 'failed' and (one.failures, one.retry_at, one.last_error) == (0, 0.0, '')

    cfg, board = board_for(systemctl, policy='shared')

    async def emfile(*args, **kwargs):
        raise OSError(24, 'Too many open files')
    lifecycle.asyncio.create_subprocess_exec, saved = emfile, lifecycle.asyncio.create_subprocess_exec
    try:
        with pytest.raises(lifecycle.SwapError) as e:
            asyncio.run(board.acquire(cfg.models['m1']))
    finally:
        lifecycle.asyncio.create_subprocess_exec = saved
    assert (e.value.status, e.value.code) == (503, 'router_overloaded')
    assert cfg.backends['one'].failures == 0 and board.metrics.swaps == {('one', 'm1', 'overloaded'): 1}


def test_a_finished_swap_whose_callback_has_not_run_is_not_waited_on_again(systemctl):
    """A request that arrives after a swap's task finished but before its done callback cleared it
    (the callback waits its turn in the event loop) must not spin on the finished task: awaiting a
    done task does not yield, and the router froze (200 clients across model swaps, under load)."""
    import threading  # pylint: disable=import-outside-toplevel
    cfg, board = board_for(systemctl, policy='shared')
    ready_answers(board, {'one': MODELS_OK, 'two': MODELS_OK})
    outcome = {}

    async def go():
        finished = asyncio.ensure_future(asyncio.sleep(0))
        await finished                                     # done; no callback will ever clear it
        board.swap = lifecycle.Swap(cfg.models['m1'], finished, frozenset({'one'}))
        await board.acquire(cfg.models['m1'])               # must start its own swap, not spin
        outcome['ready'] = cfg.backends['one'].state
        await board.acquire(cfg.models['m2'])
        outcome['both'] = (cfg.backends['one'].inflight, cfg.backends['two'].inflight)

    thread = threading.Thread(target=lambda: asyncio.run(go()), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), 'acquire() spun on a finished swap'
    assert outcome == {'ready': 'ready', 'both': (1, 1)}
