# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named client keys with a scope and a cap, through the real router on loopback: in front of the real
llama-server (tests/tools/build-llama-server.sh, a tiny GGUF model) for the scopes, and of the test
double (streams held open by its chunk delay) for the cap on requests in flight."""


import httpx
import pytest

from router_helpers import Proc, chat, free_port

ALICE_NEW, ALICE_OLD = 'alice-key-new-4b7e19c2', 'alice-key-old-8d2a6f05'
OPS_KEY, BOB_KEY = 'ops-key-5c1d7e93', 'bob-key-2f8a4c61'
FLAT_KEY = 'flat-key-9e3b6d14'
LLAMA_KEY = 'llama-key-7a5c2e80'
NAMED = 'alice:%s,alice:%s,ops:%s,bob:%s' % (ALICE_NEW, ALICE_OLD, OPS_KEY, BOB_KEY)
CLIENT_KEYS = (ALICE_NEW, ALICE_OLD, OPS_KEY, BOB_KEY, FLAT_KEY)


def bearer(key):
    return {'Authorization': 'Bearer ' + key}


@pytest.fixture(scope='module')
def llama(llama_files, tmp_path_factory):
    """The real llama-server with a tiny model, two slots, the key LLAMA_KEY."""
    work = tmp_path_factory.mktemp('llama')
    binary, model = llama_files
    port = free_port()
    proc = Proc([binary, '-m', str(model), '--host', '127.0.0.1', '--port', str(port), '--api-key',
                 LLAMA_KEY, '-c', '1024', '-np', '2', '-t', '1'], port, work / 'llama-server.log')
    yield proc
    proc.stop()


@pytest.fixture
def scoped(procs, llama):
    """The router with named keys (alice: model tiny only, no metrics, no detailed health; ops: all;
    bob: not listed, so all) and a flat key (named client-1), in front of the real llama-server."""
    dummy, router = procs
    cfg = {'backends': {'llama': {'kind': 'llamacpp', 'url': llama.url, 'key_env': 'LLAMA_KEY'}},
           'models': {'tiny': {'backend': 'llama'}, 'tiny-too': {'backend': 'llama'}},
           'clients': {'alice': {'models': ['tiny'], 'metrics': False, 'health': False},
                       'ops': {'metrics': True, 'health': True}},
           'log_level': 'INFO'}
    return router(cfg, env={'LLM_ROUTER_CLIENT_API_KEYS': FLAT_KEY, 'LLM_ROUTER_CLIENT_KEYS': NAMED,
                            'LLAMA_KEY': LLAMA_KEY})


def ask(r, key, model, **extra):
    return httpx.post(r.url + '/v1/chat/completions', content=chat(model, max_tokens=4, **extra),
                      headers=bearer(key), timeout=120)


def test_a_scoped_key_sees_and_uses_only_its_models(scoped):
    r = scoped
    for key in (ALICE_NEW, ALICE_OLD):                     # the grace-window key has the same scope
        assert [m['id'] for m in httpx.get(r.url + '/v1/models', headers=bearer(key)).json()['data']] == ['tiny']
        answer = ask(r, key, 'tiny')
        assert answer.status_code == 200 and answer.json()['object'] == 'chat.completion'
        refused = ask(r, key, 'tiny-too')                  # as if it did not exist
        assert refused.status_code == 404
        assert refused.json() == {'error': {'message': "The model 'tiny-too' does not exist", 'type': 'invalid_request_error',
                                            'param': 'model', 'code': 'model_not_found'}}
    for key in (OPS_KEY, BOB_KEY, FLAT_KEY):               # unscoped names, and the flat list: unchanged
        assert [m['id'] for m in httpx.get(r.url + '/v1/models', headers=bearer(key)).json()['data']] == ['tiny', 'tiny-too']
        assert ask(r, key, 'tiny-too').status_code == 200


def test_metrics_and_detailed_health_only_to_keys_allowed_them(scoped):
    r = scoped
    refused = httpx.get(r.url + '/metrics', headers=bearer(ALICE_NEW))
    assert refused.status_code == 403 and refused.json()['error']['code'] == 'permission_denied'
    assert ALICE_NEW not in refused.text
    assert httpx.get(r.url + '/metrics').status_code == 401
    assert httpx.get(r.url + '/health', headers=bearer(ALICE_NEW)).json() == {'status': 'ok'}
    for key in (OPS_KEY, FLAT_KEY):
        assert httpx.get(r.url + '/metrics', headers=bearer(key)).status_code == 200
        assert httpx.get(r.url + '/health', headers=bearer(key)).json()['backends']['llama']['kind'] == 'llamacpp'


def test_the_access_log_names_the_key_never_the_key(scoped):
    r = scoped
    assert ask(r, ALICE_OLD, 'tiny').status_code == 200
    assert ask(r, FLAT_KEY, 'tiny-too', stream=True).status_code == 200
    assert ask(r, 'not-a-key-3f9c1a', 'tiny').status_code == 401
    r.stop()
    log = r.log()
    lines = [line for line in log.splitlines() if 'POST /v1/chat/completions' in line]
    assert len(lines) == 2, log
    assert ' POST /v1/chat/completions key=alice model=tiny status=200 ' in lines[0]
    assert ' POST /v1/chat/completions key=client-1 model=tiny-too status=200 ' in lines[1]
    for key in CLIENT_KEYS + (LLAMA_KEY, 'not-a-key-3f9c1a'):
        assert key not in log


def test_over_its_cap_a_name_gets_429_with_retry_after(procs):
    """alice may have 2 requests in flight over both her keys; bob, and the flat key, are not capped."""
    double, router = procs
    slow = double('openai', models='m1', chunks=6, chunk_delay=1.0)
    r = router({'backends': {'d': {'kind': 'openai', 'url': slow.url}}, 'models': {'m1': {'backend': 'd'}},
                'clients': {'alice': {'max_concurrent': 2}}},
               env={'LLM_ROUTER_CLIENT_API_KEYS': FLAT_KEY, 'LLM_ROUTER_CLIENT_KEYS': NAMED})
    with httpx.Client(timeout=60) as c1, httpx.Client(timeout=60) as c2, httpx.Client(timeout=60) as c3:
        held = []
        for client, key in ((c1, ALICE_NEW), (c2, ALICE_OLD)):   # old and new key of one name share the cap
            stream = client.stream('POST', r.url + '/v1/chat/completions', content=chat('m1', stream=True),
                                   headers=bearer(key))
            response = stream.__enter__()
            chunks = response.iter_bytes()
            assert response.status_code == 200 and next(chunks)          # the stream is open, and held
            held.append((stream, chunks))
        for key in (ALICE_NEW, ALICE_OLD):
            over = c3.post(r.url + '/v1/chat/completions', content=chat('m1'), headers=bearer(key))
            assert over.status_code == 429 and over.headers['retry-after'] == '1'
            assert over.json()['error']['code'] == 'rate_limit_exceeded' and over.json()['error']['type'] == 'requests'
            assert 'alice' in over.json()['error']['message'] and key not in over.text
        for key in (BOB_KEY, FLAT_KEY):                  # other names are not held back by alice's cap
            assert c3.post(r.url + '/v1/chat/completions', content=chat('m1'), headers=bearer(key)).status_code == 200
        stream, chunks = held.pop()
        assert b''.join(chunks).rstrip().endswith(b'data: [DONE]')     # one of alice's streams ends
        stream.__exit__(None, None, None)
        assert c3.post(r.url + '/v1/chat/completions', content=chat('m1'), headers=bearer(ALICE_NEW)).status_code == 200
        stream, chunks = held.pop()
        stream.__exit__(None, None, None)
    metrics = httpx.get(r.url + '/metrics', headers=bearer(BOB_KEY)).text
    assert 'llm_router_requests_total{model="m1",key="alice",status="429"} 2' in metrics
