# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router in front of real loopback backends: pass-through, streaming, auth, errors, metrics."""

import hashlib
import json
import re
import socket
import time

import httpx
import pytest

from router_helpers import (ALL_KEYS, AUTH, CLIENT_KEY, OLD_CLIENT_KEY, SGLANG_KEY, TABBY_ADMIN_KEY,
                            chat, two_backends)


@pytest.fixture
def stack(procs):
    double, router = procs
    tabby = double('tabbyapi', api_keys=['tabby-api-5b1e7c22'], admin_key=TABBY_ADMIN_KEY, models='a,b', loaded='a')
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router(two_backends(tabby, sg))
    return tabby, sg, r


def direct(backend, path, body, key):
    return httpx.post(backend.url + path, content=body, headers={'x-api-key': key,
                                                                 'Content-Type': 'application/json'})


@pytest.mark.parametrize('path,body', [
    ('/v1/chat/completions', chat('a')),
    ('/v1/chat/completions', chat('a', stream=True)),
    ('/v1/completions', json.dumps({'model': 'a', 'prompt': 'Es war einmal', 'stream': False}).encode()),
    ('/v1/completions', json.dumps({'model': 'a', 'prompt': 'Es war einmal', 'stream': True}).encode()),
    ('/v1/embeddings', json.dumps({'model': 'a', 'input': ['eins', 'zwei', 'drei']}).encode()),
])
def test_bodies_are_byte_identical_to_direct(stack, path, body):
    tabby, r = stack[0], stack[2]
    via = httpx.post(r.url + path, content=body, headers=dict(AUTH, **{'Content-Type': 'application/json'}))
    seen = tabby.stats()
    ref = direct(tabby, path, body, TABBY_ADMIN_KEY)
    assert via.status_code == ref.status_code == 200
    assert via.content == ref.content
    assert via.headers['content-type'] == ref.headers['content-type']
    # the request body reached the backend unchanged, with the router's backend key, not the client's
    assert seen['last_body_sha256'] == hashlib.sha256(body).hexdigest()
    assert seen['last_headers']['x-api-key'] == TABBY_ADMIN_KEY
    assert CLIENT_KEY not in json.dumps(seen['last_headers'])


def test_stream_false_is_json_and_stream_true_is_event_stream(stack):
    r = stack[2]
    plain = httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH)
    assert plain.headers['content-type'].startswith('application/json')
    assert plain.json()['object'] == 'chat.completion'
    assert b'data:' not in plain.content
    streamed = httpx.post(r.url + '/v1/chat/completions', content=chat('s1', stream=True), headers=AUTH)
    assert streamed.headers['content-type'].startswith('text/event-stream')
    events = [e for e in streamed.text.split('\n\n') if e]
    assert events[-1] == 'data: [DONE]'
    assert all(json.loads(e[6:])['object'] == 'chat.completion.chunk' for e in events[:-1])


def test_backend_status_and_error_body_preserved(stack):
    tabby, r = stack[0], stack[2]
    body = chat('a', max_tokens=-1)
    via = httpx.post(r.url + '/v1/chat/completions', content=body, headers=AUTH)
    ref = direct(tabby, '/v1/chat/completions', body, TABBY_ADMIN_KEY)
    assert via.status_code == ref.status_code == 400
    assert via.content == ref.content


def test_stream_is_relayed_as_it_arrives(procs):
    double, router = procs
    slow = double('openai', api_keys=[SGLANG_KEY], models='s1', chunks=4, chunk_delay=0.4)
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': slow.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}})
    httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH)  # readiness done
    arrivals = []
    t0 = time.monotonic()
    with httpx.stream('POST', r.url + '/v1/chat/completions', content=chat('s1', stream=True), headers=AUTH) as resp:
        for piece in resp.iter_raw():
            arrivals.append((time.monotonic() - t0, piece))
    text = b''.join(p for dummy, p in arrivals)
    assert text.count(b'data: ') == 5
    first_chunk_at = next(t for t, p in arrivals if b'data: ' in p)
    # The backend needs 1.2 s for the whole answer; the first chunk must not wait for it.
    assert first_chunk_at < 0.35
    assert arrivals[-1][0] > 1.1
    assert len(arrivals) >= 4


@pytest.mark.parametrize('headers', [
    {},
    {'Authorization': 'Bearer wrong-key'},
    {'x-api-key': 'wrong-key'},
    {'Authorization': 'Basic ' + CLIENT_KEY},
    {'Authorization': 'Bearer'},
])
def test_requests_without_a_valid_key_get_401(stack, headers):
    sg, r = stack[1], stack[2]
    for path, method in (('/v1/chat/completions', 'POST'), ('/v1/models', 'GET'), ('/metrics', 'GET')):
        resp = httpx.request(method, r.url + path, content=chat('s1') if method == 'POST' else None, headers=headers)
        assert resp.status_code == 401, path
        err = resp.json()['error']
        assert err['type'] == 'invalid_request_error' and err['code'] == 'invalid_api_key'
    assert sg.stats()['requests'] == 0


@pytest.mark.parametrize('headers', [
    {'Authorization': 'Bearer ' + CLIENT_KEY},
    {'authorization': 'bearer ' + CLIENT_KEY},
    {'x-api-key': CLIENT_KEY},
    {'Authorization': 'Bearer ' + OLD_CLIENT_KEY},
    {'x-api-key': OLD_CLIENT_KEY},
])
def test_current_and_grace_window_keys_accepted(stack, headers):
    r = stack[2]
    assert httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=headers).status_code == 200
    assert httpx.get(r.url + '/v1/models', headers=headers).status_code == 200


def test_models_list_and_health(stack):
    r = stack[2]
    models = httpx.get(r.url + '/v1/models', headers=AUTH).json()
    assert models['object'] == 'list'
    assert [m['id'] for m in models['data']] == ['a', 'b', 's1']
    assert all(m['object'] == 'model' for m in models['data'])
    health = httpx.get(r.url + '/health')          # liveness needs no key, and says no more than that
    assert health.status_code == 200 and health.json() == {'status': 'ok'}
    health = httpx.get(r.url + '/health', headers=AUTH)   # the details: to a client key
    assert health.status_code == 200
    h = health.json()
    assert h['status'] == 'ok' and set(h['backends']) == {'tabby', 'sg'}
    httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH)
    assert httpx.get(r.url + '/health', headers=AUTH).json()['backends']['sg']['state'] == 'ready'


def test_unknown_model_is_404_in_openai_shape(stack):
    r = stack[2]
    resp = httpx.post(r.url + '/v1/chat/completions', content=chat('no-such-model'), headers=AUTH)
    assert resp.status_code == 404
    assert resp.json() == {'error': {'message': "The model 'no-such-model' does not exist",
                                     'type': 'invalid_request_error', 'param': 'model',
                                     'code': 'model_not_found'}}


@pytest.mark.parametrize('body', [b'not json', b'[1,2]', b'{"messages":[]}', b'{"model": 7}'])
def test_body_without_model_is_400(stack, body):
    r = stack[2]
    resp = httpx.post(r.url + '/v1/chat/completions', content=body, headers=AUTH)
    assert resp.status_code == 400
    assert resp.json()['error']['param'] == 'model'


def test_large_request_body_passes_through(stack):
    tabby, r = stack[0], stack[2]
    body = json.dumps({'model': 'a', 'input': ['x' * 1000] * 5000}).encode()   # ~5 MB
    via = httpx.post(r.url + '/v1/embeddings', content=body, headers=AUTH, timeout=30)
    assert via.status_code == 200
    assert tabby.stats()['last_body_sha256'] == hashlib.sha256(body).hexdigest()
    assert len(via.json()['data']) == 5000


def test_keep_alive_connection_serves_many_requests(stack):
    r = stack[2]
    with httpx.Client(headers=AUTH) as c:
        for i in range(30):
            assert c.post(r.url + '/v1/chat/completions', content=chat('s1', stream=bool(i % 2))).status_code == 200
    # raw HTTP/1.1 pipelining-free keep-alive with Content-Length: two requests on one socket
    s = socket.create_connection(('127.0.0.1', r.port))
    body = chat('s1')
    req = (b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n'
           b'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (CLIENT_KEY.encode(), len(body), body))
    s.sendall(req)
    first = s.recv(65536)
    s.sendall(req)
    second = s.recv(65536)
    s.close()
    assert first.startswith(b'HTTP/1.1 200') and second.startswith(b'HTTP/1.1 200')


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + ' '):
            return float(line.rsplit(' ', 1)[1])
    return 0.0


def test_metrics_counters_move(stack):
    r = stack[2]
    m0 = httpx.get(r.url + '/metrics', headers=AUTH).text
    for dummy in range(3):
        httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH)
    httpx.post(r.url + '/v1/chat/completions', content=chat('nope'), headers=AUTH)
    httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers={'x-api-key': 'bad'})
    m1 = httpx.get(r.url + '/metrics', headers=AUTH).text
    ok = 'llm_router_requests_total{model="s1",key="client-1",status="200"}'
    assert metric(m1, ok) == metric(m0, ok) + 3
    assert metric(m1, 'llm_router_requests_total{model="(unknown)",key="client-1",status="404"}') == 1   # no label per name
    assert metric(m1, 'llm_router_client_auth_failures_total') == metric(m0, 'llm_router_client_auth_failures_total') + 1
    assert metric(m1, 'llm_router_request_duration_seconds_count{model="s1"}') == metric(m0, 'llm_router_request_duration_seconds_count{model="s1"}') + 3
    assert metric(m1, 'llm_router_swaps_total{backend="sg",model="s1",result="ok"}') == 1
    assert 'llm_router_swap_duration_seconds_count{backend="sg"} 1' in m1


def test_access_lines_keep_their_place_in_the_log(stack):
    """Each proxied request gets an INFO line in the log's format. The lines are written in
    batches, yet one written before another record comes before it, and none is lost at stop."""
    r = stack[2]
    for model in ('a', 's1', 's1'):
        assert httpx.post(r.url + '/v1/chat/completions', content=chat(model), headers=AUTH).status_code == 200
    r.stop()
    lines = r.log().splitlines()
    access = [i for i, line in enumerate(lines) if ' INFO llm_router: POST /v1/chat/completions key=' in line]
    assert len(access) == 3
    for i, model in zip(access, ('a', 's1', 's1')):
        assert re.fullmatch(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO llm_router: '
                            r'POST /v1/chat/completions key=client-1 model=%s status=200 \d+\.\dms' % model, lines[i]), lines[i]
    swap_to_s1 = [i for i, line in enumerate(lines) if 'swap to model s1' in line]
    assert swap_to_s1 and access[0] < swap_to_s1[0] < access[1]   # the 'a' line came out before the swap's
    assert 'INFO llm_router: stopped' in lines[-1]                # and the last ones before 'stopped'


def test_no_key_in_logs_or_answers(procs):
    """Run successes and every kind of failure, then grep everything the router wrote."""
    double, router = procs
    tabby = double('tabbyapi', api_keys=['tabby-api-5b1e7c22'], admin_key=TABBY_ADMIN_KEY, models='a,b')
    sg = double('openai', api_keys=['another-key'], models='s1')        # rejects the router's key
    r = router(two_backends(tabby, sg, readiness_timeout=5))
    answers = []
    for model, stream in (('a', False), ('b', True), ('s1', False), ('zz', False)):
        answers.append(httpx.post(r.url + '/v1/chat/completions', content=chat(model, stream=stream), headers=AUTH))
    answers.append(httpx.post(r.url + '/v1/chat/completions', content=chat('a'), headers={'x-api-key': 'wrong'}))
    answers.append(httpx.get(r.url + '/health', headers=AUTH))
    answers.append(httpx.get(r.url + '/metrics', headers=AUTH))
    assert [a.status_code for a in answers] == [200, 200, 502, 404, 401, 200, 200]
    r.stop()
    log = r.log()
    assert 'swap to model a' in log and 'rejected' in log        # the log did record the events
    for key in ALL_KEYS + ('another-key',):
        assert key not in log
        for a in answers:
            assert key not in a.text
