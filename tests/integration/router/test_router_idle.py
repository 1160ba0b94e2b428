# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idle unload (ttl) and preload (llm_router/idle.py) on loopback: a REAL llama-server (built once by
tests/tools/build-llama-server.sh, the tiny GGUF model of tests/tools/make-tiny-gguf.py) as a unit
the router starts and stops through tests/support/systemctl_standin.py (its systemctl here), and
the TabbyAPI double (tests/doubles/openai_backend.py --kind tabbyapi), whose model is unloaded
through its admin API.
Under real systemd: the Molecule scenario llm_router."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from router_helpers import AUTH, ROOT, TABBY_ADMIN_KEY, chat, free_port

LLAMA_KEY = 'llama-idle-key-8c1d2e'
UNITS = ROOT / 'tests/support/systemctl_standin.py'


@pytest.fixture
def units(tmp_path):
    """Units of the systemctl stand-in: add(name, argv, stop_delay) -> unit; calls() -> the starts and
    stops the router asked for, in order ("start UNIT")."""
    state = tmp_path / 'units'
    state.mkdir()
    table = {}

    class Units:
        systemctl = [sys.executable, str(UNITS), str(state)]

        @staticmethod
        def add(unit, argv, stop_delay=0.0):
            table[unit] = {'argv': [str(a) for a in argv], 'stop_delay': stop_delay}
            (state / 'units.json').write_text(json.dumps(table))
            return unit

        @staticmethod
        def calls():
            log = state / 'calls.log'
            lines = log.read_text().splitlines() if log.exists() else []
            return [' '.join(line.split()[1:]) for line in lines if line.split()[1] in ('start', 'stop')]

        @staticmethod
        def active(unit):
            return subprocess.run(Units.systemctl + ['show', '--', unit], capture_output=True, text=True,
                                  check=True).stdout.startswith('ActiveState=active')

    yield Units
    for unit in table:
        subprocess.run(Units.systemctl + ['stop', '--', unit], check=False, timeout=30)


def llama_unit(units, llama_files, stop_delay=0.0):
    binary, model = llama_files
    port = free_port()
    units.add('tiny.service', [binary, '-m', model, '--host', '127.0.0.1', '--port', port, '--api-key', LLAMA_KEY,
                               '-c', 256, '-t', 1, '--no-webui'], stop_delay=stop_delay)
    return 'http://127.0.0.1:%d' % port


def config(units, backends, models, **extra):
    cfg = {'backends': backends, 'models': models, 'systemctl': units.systemctl, 'readiness_timeout': 60}
    cfg.update(extra)
    return cfg


ENV = {'LLAMA_KEY': LLAMA_KEY}


def post(r, model, timeout=60):
    return httpx.post(r.url + '/v1/chat/completions', content=chat(model, max_tokens=2), headers=AUTH, timeout=timeout)


def health(r):
    return httpx.get(r.url + '/health', headers=AUTH, timeout=10).json()


def until(what, timeout=20, step=0.05):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, 'not within %s s' % timeout
        time.sleep(step)
    return time.monotonic()


@pytest.mark.parametrize('policy', ['exclusive', 'shared'])
def test_an_idle_llama_server_is_stopped_after_its_ttl_and_the_next_request_starts_it(procs, units, llama_files, policy):
    dummy, router = procs
    url = llama_unit(units, llama_files)
    r = router(config(units, {'llama': {'kind': 'llamacpp', 'url': url, 'unit': 'tiny.service', 'key_env': 'LLAMA_KEY',
                                        'ttl': 1.5}},
                      {'tiny': {'backend': 'llama'}}, swap_policy=policy), env=ENV)
    first = post(r, 'tiny')
    answered = time.monotonic()
    assert first.status_code == 200 and first.json()['object'] == 'chat.completion', first.text
    assert units.active('tiny.service')
    b = health(r)['backends']['llama']
    assert b['state'] == 'ready' and b['ttl'] == 1.5 and 0 < b['unload_in'] <= 1.5, b
    stopped = until(lambda: not units.active('tiny.service'))
    assert stopped - answered >= 1.4, 'stopped %.2f s after the last answer, before its ttl' % (stopped - answered)
    assert stopped - answered < 10
    b = health(r)['backends']['llama']
    assert (b['state'], b['unload_in']) == ('stopped', None), b
    metrics = httpx.get(r.url + '/metrics', headers=AUTH).text
    assert 'llm_router_unloads_total{backend="llama",model="tiny",reason="ttl"} 1' in metrics, metrics
    again = post(r, 'tiny')                                  # starts the unit again
    assert again.status_code == 200, again.text
    assert units.calls() == ['start tiny.service', 'stop tiny.service', 'start tiny.service']
    assert 'backend llama idle for 1.5 s (ttl): unloading unit tiny.service' in r.log()
    assert LLAMA_KEY not in r.log()


def test_a_request_arriving_while_the_unit_stops_waits_and_is_served(procs, units, llama_files):
    """The unit takes 1.5 s to stop: a request that arrives meanwhile waits for the stop, then the
    router starts the unit again and answers 200 (never a 5xx from the unload)."""
    dummy, router = procs
    url = llama_unit(units, llama_files, stop_delay=1.5)
    r = router(config(units, {'llama': {'kind': 'llamacpp', 'url': url, 'unit': 'tiny.service', 'key_env': 'LLAMA_KEY'}},
                      {'tiny': {'backend': 'llama', 'ttl': 1}}), env=ENV)
    assert post(r, 'tiny').status_code == 200
    until(lambda: units.calls()[-1:] == ['stop tiny.service'])
    h = health(r)
    assert h['backends']['llama']['state'] == 'unloading' and h['swapping_to'] is None, h   # an unload is no swap
    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(post, r, 'tiny') for dummy in range(3)]
        assert all(f.result().status_code == 200 for f in waiting), [f.result().text for f in waiting]
    assert units.calls() == ['start tiny.service', 'stop tiny.service', 'start tiny.service']   # one start for three
    assert units.active('tiny.service')


def test_tabbyapi_model_unloaded_through_its_admin_api_never_while_a_request_is_in_flight(procs):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a,b', delay=3)
    r = router({'backends': {'tabby': {'kind': 'tabbyapi', 'url': tabby.url, 'key_env': 'TABBY_KEY', 'ttl': 1}},
                'models': {'a': {'backend': 'tabby'}, 'b': {'backend': 'tabby', 'ttl': 0}}})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, r, 'a')                     # 3 s in flight: three times the ttl
        until(lambda: tabby.stats()['inflight'] == 1)
        b = health(r)['backends']['tabby']
        assert (b['loaded'], b['ttl'], b['unload_in'], b['in_flight']) == ('a', 1.0, None, 1), b
        time.sleep(2)
        assert tabby.stats()['unloads'] == 0                 # in flight: not idle
        done = slow.result()
    answered = time.monotonic()
    assert done.status_code == 200
    until(lambda: tabby.stats()['unloads'] == 1)
    assert time.monotonic() - answered >= 0.9
    b = health(r)['backends']['tabby']
    assert (b['loaded'], b['state'], b['unload_in']) == (None, 'unknown', None), b
    assert tabby.stats()['events'][-2:] == [['end', 'a'], ['unload', 'a']]
    # the next request loads the model again; a model with ttl 0 is never unloaded
    assert post(r, 'b').status_code == 200
    assert tabby.stats()['loads'] == ['a', 'b']
    assert health(r)['backends']['tabby']['ttl'] is None
    time.sleep(2)
    assert tabby.stats()['unloads'] == 1
    assert TABBY_ADMIN_KEY not in r.log()


def test_a_drained_backend_is_not_unloaded(procs, tmp_path):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a')
    sock = tmp_path / 'admin.sock'
    r = router({'backends': {'tabby': {'kind': 'tabbyapi', 'url': tabby.url, 'key_env': 'TABBY_KEY'}},
                'models': {'a': {'backend': 'tabby'}}, 'default_ttl': 1, 'admin_socket': str(sock)})
    assert post(r, 'a').status_code == 200

    def admin(path):
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as c:
            return c.post('http://localhost' + path)
    assert admin('/admin/backends/tabby/drain').status_code == 200
    assert health(r)['backends']['tabby']['unload_in'] is None
    time.sleep(2.5)
    assert tabby.stats()['unloads'] == 0                     # planned maintenance owns it
    assert admin('/admin/backends/tabby/resume').json()['resumed'] == ['tabby']
    assert post(r, 'a').status_code == 200                   # checked again, then counting down
    until(lambda: tabby.stats()['unloads'] == 1)


def test_preload_starts_and_gates_the_models_at_start_and_a_failure_does_not_stop_the_router(procs, units, llama_files):
    double, router = procs
    url = llama_unit(units, llama_files)
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a')     # no model "missing" on disk
    r = router(config(units, {
        'llama': {'kind': 'llamacpp', 'url': url, 'unit': 'tiny.service', 'key_env': 'LLAMA_KEY'},
        'tabby': {'kind': 'tabbyapi', 'url': tabby.url, 'key_env': 'TABBY_KEY'}},
        {'tiny': {'backend': 'llama'}, 'missing': {'backend': 'tabby'}, 'a': {'backend': 'tabby'}},
        preload=['missing', 'tiny']), env=ENV)
    until(lambda: 'preload: model tiny ready on backend llama' in r.log(), timeout=60)
    assert units.calls() == ['start tiny.service'] and units.active('tiny.service')    # no request asked
    b = health(r)['backends']
    assert b['llama']['state'] == 'ready' and b['llama']['ttl'] is None
    log = r.log()
    assert 'preload: model missing on backend tabby failed, the router serves the other models' in log
    assert 'could not load model missing' in log
    assert log.index('preload: starting model missing') < log.index('preload: starting model tiny')   # in order
    assert post(r, 'tiny').status_code == 200                # the router serves the others
    assert TABBY_ADMIN_KEY not in log and LLAMA_KEY not in log
