# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpufleet.llm.wait_for_backend against real HTTP servers on 127.0.0.1 (tests/support/fake_backend.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.gpufleet.llm.plugins.modules import wait_for_backend

KEY = 'sk-right-7f3a9c'
WRONG = 'sk-wrong-0b1d2e'


@pytest.fixture
def wait(run_module):
    def run(**args):
        return run_module(wait_for_backend.main, args)
    return run


def seen_headers(fake):
    return [r[3] for r in fake.requests]


def test_ready_at_once_sends_x_api_key_to_tabbyapi(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='Qwen3-8B-exl3')
    rc, result, out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, timeout=10)
    assert rc == 0, result
    assert result['ready'] is True
    assert result['changed'] is False
    assert result['attempts'] == 1
    assert result['status'] == 200
    assert result['endpoint'] == '/v1/models'
    assert result['model'] == 'Qwen3-8B-exl3'
    assert [(r[2], r[3].get('x-api-key'), 'authorization' in r[3]) for r in fake.requests] == [('/v1/models', KEY, False)]
    assert KEY not in out


def test_model_is_checked_on_v1_model(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='Qwen3-8B-exl3')
    rc, result, _out = wait(url=fake.url + '/', backend='tabbyapi', api_key=KEY, model='Qwen3-8B-exl3', timeout=10)
    assert rc == 0, result
    assert result['endpoint'] == '/v1/model'
    assert [r[2] for r in fake.requests] == ['/v1/model']


def test_refused_then_ready(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m', start_after=0.6)
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, timeout=10)
    assert rc == 0, result
    assert result['attempts'] >= 3
    assert 0.5 < result['elapsed']        # it waited for the server (rc 0: before the timeout)
    assert len(fake.requests) == 1   # every earlier attempt was refused before reaching the server


def test_llamacpp_loading_503_then_ready_with_bearer(backend, wait):
    fake = backend('llamacpp', keys=[KEY], model='qwen3-8b-q4_k_m.gguf', loading=True)
    fake.at(0.5, loading=False)
    rc, result, _out = wait(url=fake.url, backend='llamacpp', api_key=KEY, model='qwen3-8b-q4_k_m.gguf', timeout=10)
    assert rc == 0, result
    assert result['endpoint'] == '/props'
    assert result['model'] == 'qwen3-8b-q4_k_m.gguf'
    statuses = [r[4] for r in fake.requests]
    assert statuses[0] == 503 and statuses[-1] == 200 and statuses.count(200) == 1
    assert all(h.get('authorization') == 'Bearer ' + KEY for h in seen_headers(fake))


def test_llamacpp_wrong_key_after_load_fails_fast(backend, wait):
    fake = backend('llamacpp', keys=[KEY], model='m.gguf', loading=True)
    fake.at(0.3, loading=False)
    rc, result, out = wait(url=fake.url, backend='llamacpp', api_key=WRONG, timeout=60)
    assert rc == 1
    assert result['msg'] == ('llamacpp at %s rejected the API key sent as Authorization on /props: 401 Invalid API Key'
                             % fake.url)
    assert result['elapsed'] < 30          # long before the 60 s timeout (any load)
    assert WRONG not in out


def test_llamacpp_accepts_x_api_key_override(backend, wait):
    fake = backend('llamacpp', keys=[KEY], model='m.gguf')
    rc, result, _out = wait(url=fake.url, backend='llamacpp', api_key=KEY, auth_header='X-Api-Key', timeout=5)
    assert rc == 0, result
    assert seen_headers(fake)[0].get('x-api-key') == KEY
    assert 'authorization' not in seen_headers(fake)[0]


def test_tabbyapi_401_without_key_says_no_key_was_sent(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', model='m', timeout=60)
    assert rc == 1
    assert result['msg'] == ('tabbyapi at %s demands an API key, but no key was sent (set api_key) on /v1/model: '
                             '401 Please provide an API key' % fake.url)
    assert result['ready'] is False
    assert result['status'] == 401
    assert result['attempts'] == 1
    assert result['elapsed'] < 30          # long before the 60 s timeout (any load)
    assert not any('x-api-key' in h or 'authorization' in h for h in seen_headers(fake))


def test_tabbyapi_wrong_key_fails_long_before_timeout(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, out = wait(url=fake.url, backend='tabbyapi', api_key=WRONG, model='m', timeout=60)
    assert rc == 1
    assert result['msg'] == ('tabbyapi at %s rejected the API key sent as x-api-key on /v1/model: 401 Invalid API key'
                             % fake.url)
    assert result['elapsed'] < 30          # long before the 60 s timeout (any load)
    assert result['attempts'] == 1
    assert result['changed'] is False
    assert WRONG not in out and KEY not in out


def test_tabbyapi_key_in_a_header_it_ignores_is_named(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, auth_header='X-Key', timeout=60)
    assert rc == 1
    assert 'rejected the API key sent as X-Key on /v1/models: 401 Please provide an API key' in result['msg']
    assert 'the server saw no key' in result['msg']
    assert KEY not in out


def test_tabbyapi_accepts_bearer_override(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, auth_header='Authorization', timeout=5)
    assert rc == 0, result
    assert seen_headers(fake)[0]['authorization'] == 'Bearer ' + KEY


def test_vllm_only_takes_bearer(backend, wait):
    fake = backend('vllm', keys=[KEY], model='meta/llama')
    rc, result, _out = wait(url=fake.url, backend='vllm', api_key=KEY, model='meta/llama', timeout=5)
    assert rc == 0, result
    rc, result, _out = wait(url=fake.url, backend='vllm', api_key=KEY, auth_header='x-api-key', timeout=5)
    assert rc == 1
    assert result['msg'].endswith('rejected the API key sent as x-api-key on /v1/models: 401 Unauthorized')


def test_sglang_default_is_bearer_on_v1_models(backend, wait):
    fake = backend('sglang', keys=[KEY], model='qwen')
    rc, result, _out = wait(url=fake.url, backend='sglang', api_key=KEY, timeout=5)
    assert rc == 0, result
    assert (fake.requests[0][2], seen_headers(fake)[0]['authorization']) == ('/v1/models', 'Bearer ' + KEY)


def test_403_is_a_rejection(backend, wait):
    fake = backend('vllm', keys=[KEY], model='m')
    fake.forced = (403, {'error': {'message': 'Forbidden by proxy policy'}})
    rc, result, _out = wait(url=fake.url, api_key=KEY, timeout=60)
    assert rc == 1
    assert result['msg'] == ('openai at %s rejected the API key sent as Authorization on /v1/models: '
                             '403 Forbidden by proxy policy' % fake.url)
    assert result['elapsed'] < 30          # long before the 60 s timeout (any load)


def test_reject_statuses_can_be_narrowed(backend, wait):
    fake = backend('vllm', keys=[KEY], model='m')
    fake.forced = (403, {'error': 'Forbidden'})
    rc, result, _out = wait(url=fake.url, api_key=KEY, reject_statuses=[401], timeout=60)
    assert rc == 1
    assert result['msg'].startswith('openai at %s answered 403 on /v1/models: Forbidden' % fake.url)


def test_wrong_model_then_right_one(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='old-model')
    fake.at(0.5, model='new-model')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, model='new-model', timeout=10)
    assert rc == 0, result
    assert result['model'] == 'new-model'
    assert result['attempts'] >= 3
    assert fake.requests[0][4] == 200  # the old model answered 200 and was still not accepted


def test_timeout_names_last_answer_and_attempts(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model=None)
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, model='m', timeout=1.2)
    assert rc == 1
    assert result['msg'] == ('tabbyapi at %s was not ready on /v1/model after 1.2 s and %d attempts; '
                             'last: 503 No models are currently loaded.' % (fake.url, result['attempts']))
    assert result['attempts'] == len(fake.requests) >= 2
    assert 1.2 <= result['elapsed'] < 1.2 + 8   # the timeout, plus at most one request in progress
    assert result['status'] == 503


def test_timeout_while_refused_says_so(wait):
    from fake_backend import free_port
    url = 'http://127.0.0.1:%d' % free_port()
    rc, result, _out = wait(url=url, backend='sglang', api_key=KEY, timeout=0.8)
    assert rc == 1
    assert result['msg'].endswith('attempts; last: connection refused')
    assert result['status'] is None


def test_timeout_with_wrong_model_names_what_is_loaded(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='other')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, model='wanted', timeout=0.6)
    assert rc == 1
    assert result['msg'].endswith('last: 200 model wanted is not loaded yet (backend reports: other)')


def test_slow_answers_count_as_not_ready(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    fake.delay = 1.0
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, timeout=1.5, request_timeout=0.3)
    assert rc == 1
    assert result['msg'].endswith('last: request timed out')
    assert result['elapsed'] < 1.5 + 8   # the timeout, plus at most one request in progress


def test_404_is_fatal_at_once(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, endpoint='v1/does-not-exist', timeout=60)
    assert rc == 1
    assert result['msg'].startswith('tabbyapi at %s answered 404 on /v1/does-not-exist: Not Found' % fake.url)
    assert result['attempts'] == 1
    assert result['elapsed'] < 30          # long before the 60 s timeout (any load)


def test_key_echoed_by_server_is_scrubbed(backend, wait):
    fake = backend('vllm', keys=[KEY], model='m')
    fake.forced = (401, {'error': 'Unauthorized: key %s is not allowed here' % WRONG})
    rc, result, out = wait(url=fake.url, backend='vllm', api_key=WRONG, timeout=5)
    assert rc == 1
    assert WRONG not in out
    assert 'is not allowed here' in result['msg']


def test_scrub_masks_the_key_itself():
    assert wait_for_backend.scrub('bad key sk-1 sent; sk-1 again', 'sk-1') == 'bad key ******** sent; ******** again'
    assert wait_for_backend.scrub(b'bytes too: sk-1', 'sk-1') == 'bytes too: ********'
    assert wait_for_backend.scrub('nothing to hide', None) == 'nothing to hide'


def expected_pauses(count, cap):
    pauses, pause = [], wait_for_backend.FIRST_INTERVAL
    for _i in range(count):
        pauses.append(pause)
        pause = min(pause * wait_for_backend.BACKOFF, cap)
    return pauses


@pytest.mark.parametrize('max_interval', [None, 0.6])
def test_backoff_starts_fast_grows_and_is_capped(backend, wait, monkeypatch, max_interval):
    fake = backend('tabbyapi', keys=[KEY], model=None)      # 503 "No models are currently loaded." forever
    pauses = []
    real_sleep = wait_for_backend.time.sleep

    def recording_sleep(seconds):           # records the pauses the module asks for, and really sleeps
        pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(wait_for_backend.time, 'sleep', recording_sleep)
    args = dict(url=fake.url, backend='tabbyapi', api_key=KEY, model='m', timeout=4)
    if max_interval:
        args['max_interval'] = max_interval
    rc, result, _out = wait(**args)
    assert rc == 1
    cap = max_interval or 0.25    # the module's default
    planned = expected_pauses(len(pauses), cap)
    # every pause follows the plan, except the last one, which is cut to the time left
    assert pauses[:-1] == pytest.approx(planned[:-1])
    assert 0 < pauses[-1] <= planned[-1]
    assert pauses[0] == 0.05 and max(pauses[:-1]) == pytest.approx(cap)   # the cap was reached, never passed
    assert result['attempts'] == len(pauses) + 1 == len(fake.requests)


def test_check_mode_waits_the_same_way(backend, wait):
    fake = backend('tabbyapi', keys=[KEY], model='m')
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, _ansible_check_mode=True, timeout=5)
    assert rc == 0 and result['ready'] is True and result['changed'] is False


@pytest.mark.parametrize('name', ['timeout', 'max_interval', 'request_timeout'])
def test_non_positive_durations_are_refused(wait, name):
    rc, result, _out = wait(url='http://127.0.0.1:9', **{name: 0})
    assert rc == 1
    assert result['msg'] == '%s must be greater than 0, got 0.0' % name


def test_unknown_backend_is_refused(wait):
    rc, result, _out = wait(url='http://127.0.0.1:9', backend='ollama')
    assert rc == 1
    assert 'backend' in result['msg'] and 'ollama' in result['msg']


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 made by the openssl command."""
    import subprocess
    d = tmp_path_factory.mktemp('tls')
    cert, key = str(d / 'cert.pem'), str(d / 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert,
                    '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def test_untrusted_certificate_is_fatal_at_once(backend, wait, certificate):
    fake = backend('tabbyapi', keys=[KEY], model='m', tls=certificate)
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, timeout=60)
    assert rc == 1
    assert result['msg'].startswith('tabbyapi at %s: TLS verification failed' % fake.url)
    assert result['attempts'] == 1 and result['elapsed'] < 30   # not the 60 s timeout
    assert fake.requests == []


def test_ca_path_trusts_the_certificate(backend, wait, certificate):
    fake = backend('tabbyapi', keys=[KEY], model='m', tls=certificate)
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, ca_path=certificate[0], timeout=10)
    assert rc == 0, result
    assert fake.requests[0][3]['x-api-key'] == KEY


def test_validate_certs_false_skips_verification(backend, wait, certificate):
    fake = backend('tabbyapi', keys=[KEY], model='m', tls=certificate)
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, validate_certs=False, timeout=10)
    assert rc == 0, result


def test_key_reload_grace_waits_while_the_new_key_is_still_refused(backend, wait):
    fake = backend('tabbyapi', keys=['old-key'], model='m')
    fake.after_requests(3, keys=[KEY])          # the backend "re-reads its key file" after 3 answers
    rc, result, out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, key_reload_grace=30, timeout=60)
    assert rc == 0, result
    assert result['ready'] is True and result['attempts'] == 4
    assert [r[4] for r in fake.requests] == [401, 401, 401, 200]
    assert KEY not in out


def test_key_reload_grace_is_bounded_then_fails_as_usual(backend, wait):
    fake = backend('tabbyapi', keys=['old-key'], model='m')
    rc, result, out = wait(url=fake.url, backend='tabbyapi', api_key=WRONG, key_reload_grace=0.5, timeout=60)
    assert rc == 1
    assert result['msg'] == ('tabbyapi at %s rejected the API key sent as x-api-key on /v1/models: 401 Invalid API key'
                             % fake.url)
    assert result['attempts'] > 1
    assert result['elapsed'] < 30            # after the grace, not at the 60 s timeout
    assert WRONG not in out


def test_without_key_reload_grace_a_refusal_still_fails_at_once(backend, wait):
    fake = backend('tabbyapi', keys=['old-key'], model='m')
    fake.after_requests(3, keys=[KEY])
    rc, result, _out = wait(url=fake.url, backend='tabbyapi', api_key=KEY, timeout=60)
    assert rc == 1 and result['attempts'] == 1


@pytest.mark.parametrize('value', [-1, 301])
def test_key_reload_grace_out_of_range_is_refused(wait, value):
    rc, result, _out = wait(url='http://127.0.0.1:9', key_reload_grace=value)
    assert rc == 1
    assert result['msg'] == 'key_reload_grace must be between 0 and 300 seconds, got %s' % float(value)
