# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend lifecycle on loopback (backends without a unit): model swaps, rejected keys, crashes,
client disconnects, shutdown. Swaps that start/stop systemd units are tested in a systemd container."""

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from router_helpers import AUTH, CLIENT_KEY, SGLANG_KEY, TABBY_ADMIN_KEY, chat, two_backends


def post(r, model, stream=False, timeout=30, **extra):
    return httpx.post(r.url + '/v1/chat/completions', content=chat(model, stream=stream, **extra),
                      headers=AUTH, timeout=timeout)


def timed_post(r, model, stream=False):
    resp = post(r, model, stream=stream)
    return resp, time.monotonic()


def test_concurrent_requests_for_a_new_model_trigger_one_swap_after_drain(procs):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a,b', delay=1.5, load_delay=0.3)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router(two_backends(tabby, sg))
    assert post(r, 'a').status_code == 200                      # loads a
    assert post(r, 's1').status_code == 200                     # s1's backend checked once
    assert tabby.stats()['loads'] == ['a']
    with ThreadPoolExecutor(12) as pool:
        old = [pool.submit(post, r, 'a') for dummy in range(3)]     # in flight on a for ~1.5 s
        deadline = time.monotonic() + 10
        while tabby.stats()['inflight'] < 3:                    # all three reached the backend (load-proof)
            assert time.monotonic() < deadline, 'the three requests for a never were in flight together'
            time.sleep(0.02)
        new = [pool.submit(timed_post, r, 'b', stream=bool(i % 2)) for i in range(5)]
        time.sleep(0.1)
        # A model on another backend is served while the swap on tabby drains/loads.
        other, other_done = timed_post(r, 's1')
        assert all(f.result().status_code == 200 for f in old)
        assert all(f.result()[0].status_code == 200 for f in new)
    assert other.status_code == 200
    assert other_done < min(f.result()[1] for f in new)         # did not wait for the swap
    stats = tabby.stats()
    assert stats['loads'] == ['a', 'b']                         # five requests for b: ONE swap
    events = stats['events']
    load_b = events.index(['load', 'b'])
    assert [e for e in events[:load_b] if e[0] == 'end'].count(['end', 'a']) == 4   # a drained first
    assert all(e[1] == 'b' for e in events[load_b + 1:])
    assert stats['max_inflight'] >= 3
    assert httpx.get(r.url + '/health', headers=AUTH).json()['backends']['tabby']['loaded'] == 'b'


def test_requests_for_the_loaded_model_do_not_wait(procs):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a,b', loaded='a', load_delay=2.0)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router(two_backends(tabby, sg, swap_policy='shared'))
    assert post(r, 's1').status_code == 200
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, r, 'b')                        # a 2 s model load on tabby
        time.sleep(0.3)
        for dummy in range(5):
            assert post(r, 's1').status_code == 200
        # all five were answered while the load was still in progress: none waited for it
        assert httpx.get(r.url + '/health', headers=AUTH).json()['swapping_to'] == 'b'
        assert slow.result().status_code == 200


def test_backend_rejecting_the_router_key_fails_fast_with_502(procs):
    double, router = procs
    sg = double('openai', api_keys=['the-backends-real-key'], models='s1')
    tabby = double('tabbyapi', api_keys=['x'], admin_key='the-real-admin-key', models='a')
    r = router(two_backends(tabby, sg, readiness_timeout=120))
    for model, header in (('s1', 'Authorization'), ('a', 'x-api-key')):
        t0 = time.monotonic()
        resp = post(r, model)
        took = time.monotonic() - t0
        assert resp.status_code == 502
        assert took < 5, 'a rejected key must not wait for the 120 s readiness timeout'
        err = resp.json()['error']
        backend = 'sg' if model == 's1' else 'tabby'
        assert err['code'] == 'backend_rejected_key'
        assert err['message'].startswith(backend + ' at ')
        assert 'rejected the API key sent as %s' % header in err['message']
        assert '401' in err['message']
    metrics = httpx.get(r.url + '/metrics', headers=AUTH).text
    assert 'llm_router_backend_auth_failures_total{backend="sg"} 1' in metrics
    assert 'llm_router_backend_auth_failures_total{backend="tabby"} 1' in metrics
    assert 'llm_router_swaps_total{backend="sg",model="s1",result="error"} 1' in metrics


def test_tabby_unknown_model_fails_with_backends_message(procs):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a')
    r = router({'backends': {'tabby': {'kind': 'tabbyapi', 'url': tabby.url, 'key_env': 'TABBY_KEY'}},
                'models': {'ghost': {'backend': 'tabby', 'model': 'not-in-model-dir'}}})
    resp = post(r, 'ghost')
    assert resp.status_code == 502
    assert 'Could not find the model path for load' in resp.json()['error']['message']


def test_backend_dying_mid_stream_and_never_coming_back(procs):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a', loaded='a',
                   chunks=10, chunk_delay=0.05, die_after_chunks=2)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router(two_backends(tabby, sg, readiness_timeout=2))
    assert post(r, 'a').status_code == 200                      # non-stream works, backend ready
    with pytest.raises(httpx.RemoteProtocolError):              # truncated: no terminating chunk
        with httpx.stream('POST', r.url + '/v1/chat/completions', content=chat('a', stream=True),
                          headers=AUTH) as resp:
            assert resp.status_code == 200
            body = b''.join(resp.iter_raw())
    tabby.proc.wait(5)
    t0 = time.monotonic()
    again = post(r, 'a')
    assert again.status_code == 504                             # never comes back: readiness timeout
    assert time.monotonic() - t0 < 6
    assert 'tabby' in again.json()['error']['message'] and 'not ready' in again.json()['error']['message']
    assert post(r, 's1').status_code == 200                     # the router keeps serving others
    h = httpx.get(r.url + '/health', headers=AUTH).json()
    assert h['backends']['tabby']['state'] == 'failed' and h['backends']['sg']['state'] == 'ready'


def test_backend_gone_before_a_request_gives_502(procs):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}, 'readiness_timeout': 1})
    assert post(r, 's1').status_code == 200
    sg.stop()
    resp = post(r, 's1')
    assert resp.status_code == 502
    assert resp.json()['error']['message'].startswith('backend sg (%s) failed during the request' % sg.url)
    assert post(r, 's1').status_code == 504                     # re-checked, still not there


def test_client_disconnect_mid_stream_cancels_upstream(procs):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', chunks=100, chunk_delay=0.1)
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}})
    assert post(r, 's1').status_code == 200
    s = socket.create_connection(('127.0.0.1', r.port))
    body = chat('s1', stream=True)
    s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Length: %d\r\n\r\n%s'
              % (CLIENT_KEY.encode(), len(body), body))
    got = b''
    while b'data: ' not in got:
        got += s.recv(65536)
    s.close()                                                   # the client goes away after ~1 chunk
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sg.stats()['disconnects'] == 0:
        time.sleep(0.05)
    stats = sg.stats()
    assert stats['disconnects'] == 1 and stats['inflight'] == 0
    assert stats['completed'] == 1                              # only the warm-up request completed
    m = httpx.get(r.url + '/metrics', headers=AUTH).text
    assert 'llm_router_requests_total{model="s1",key="client-1",status="499"} 1' in m
    assert httpx.get(r.url + '/health', headers=AUTH).json()['backends']['sg']['in_flight'] == 0


def test_sigterm_lets_in_flight_requests_finish(procs):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', delay=1.0)
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}, 'shutdown_timeout': 10})
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, r, 's1')
        time.sleep(0.4)
        r.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):                 # no longer accepting
            httpx.get(r.url + '/health', headers=AUTH)
        assert pending.result().status_code == 200              # but the one in flight finished
    assert r.proc.wait(10) == 0


def test_systemctl_that_cannot_run_fails_the_swap_with_502(procs):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY',
                                    'unit': 'dbl-sg.service'}},
                'models': {'s1': {'backend': 'sg'}}, 'systemctl': ['/nonexistent/systemctl']})
    resp = post(r, 's1')
    assert resp.status_code == 502
    err = resp.json()['error']
    assert err['code'] == 'backend_unit_failed'
    assert 'systemctl start dbl-sg.service failed (did not complete): cannot run /nonexistent/systemctl' in err['message']
    assert httpx.get(r.url + '/health', headers=AUTH).json()['status'] == 'ok'
