# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router's metrics in front of a REAL llama-server (the CPU build of tests/tools/build-llama-server.sh,
`make llama-server`, serving the tiny random GGUF of tests/tools/make-tiny-gguf.py) on loopback:
tokens as the backend's usage object said, time to first byte, requests by model and key name,
swaps by model; no key value anywhere in /metrics; the Grafana dashboard's metric names are the
ones this router exports."""

import json
import re

import httpx
import pytest

from router_helpers import ALL_KEYS, AUTH, CLIENT_KEY, ROOT, Proc, chat, free_port

LLAMA_KEY = 'llama-key-6c2f9d04'
SAMPLE = re.compile(r'^(llm_router_[a-z_]+)(?:\{(.*)\})? (\S+)$', re.M)


@pytest.fixture
def stack(procs, llama_files, tmp_path):
    """A real llama-server (model id 'tiny', key LLAMA_KEY) and the router in front of it."""
    dummy, router = procs
    binary, model = llama_files
    port = free_port()
    llama = Proc([binary, '-m', str(model), '--alias', 'tiny', '--host', '127.0.0.1', '--port', str(port),
                  '--api-key', LLAMA_KEY, '-c', '512', '-t', '1', '--no-webui'], port, tmp_path / 'llama-server.log')
    try:
        r = router({'backends': {'llama': {'kind': 'llamacpp', 'url': llama.url, 'key_env': 'LLAMA_KEY'}},
                    'models': {'tiny': {'backend': 'llama'}}}, env={'LLAMA_KEY': LLAMA_KEY})
        yield r, llama
    finally:
        llama.stop()


def samples(text):
    """{(name, ((label, value), ...) sorted): value} of the router's /metrics text."""
    out = {}
    for name, labels, value in SAMPLE.findall(text):
        out[(name, tuple(sorted(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', labels))))] = float(value)
    return out


def value(got, name, **labels):
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def sse_usage(raw):
    """The usage object of an event stream as the client received it (None when no event had one)."""
    usage = None
    for line in raw.decode().splitlines():
        if line.startswith('data: {'):
            usage = json.loads(line[6:]).get('usage') or usage
    return usage


def test_tokens_first_byte_and_requests_by_model_and_key_from_llama_server(stack):
    r, llama = stack
    url = r.url + '/v1/chat/completions'
    # 1. non-stream: usage in the JSON answer
    whole = httpx.post(url, content=chat('tiny', max_tokens=8), headers=AUTH, timeout=120)
    assert whole.status_code == 200, whole.text
    expected = [whole.json()['usage']]
    # 2. stream with include_usage: llama-server sends a last chunk with usage before [DONE]
    with httpx.stream('POST', url, content=chat('tiny', stream=True, max_tokens=6, stream_options={'include_usage': True}),
                      headers=AUTH, timeout=60) as answer:
        assert answer.status_code == 200
        raw = answer.read()
    assert raw.rstrip().endswith(b'data: [DONE]')
    expected.append(sse_usage(raw))
    assert expected[1] and expected[1]['completion_tokens'] > 0
    # 3. stream without it: llama-server's chat stream ends with timings, no usage: nothing is counted
    with httpx.stream('POST', url, content=chat('tiny', stream=True, max_tokens=5), headers=AUTH, timeout=60) as answer:
        raw = answer.read()
    assert b'"timings"' in raw and sse_usage(raw) is None
    # 4. a text completion stream: llama-server puts usage in its final chunk, unasked
    with httpx.stream('POST', r.url + '/v1/completions', headers=AUTH, timeout=60,
                      content=json.dumps({'model': 'tiny', 'prompt': 'Hallo', 'max_tokens': 4, 'stream': True})) as answer:
        raw = answer.read()
    expected.append(sse_usage(raw))
    assert expected[2] and expected[2]['prompt_tokens'] > 0

    got = samples(httpx.get(r.url + '/metrics', headers=AUTH).text)
    ok = [labels for (name, labels) in got if name == 'llm_router_requests_total' and ('model', 'tiny') in labels]
    assert len(ok) == 1 and ('status', '200') in ok[0]
    key = dict(ok[0])['key']            # the accepted key's name ('-' while the router's keys have no names)
    assert key and key not in ALL_KEYS + (LLAMA_KEY,)
    assert value(got, 'llm_router_requests_total', model='tiny', key=key, status='200') == 4
    assert value(got, 'llm_router_tokens_total', model='tiny', key=key, type='prompt') == sum(
        u['prompt_tokens'] for u in expected)
    assert value(got, 'llm_router_tokens_total', model='tiny', key=key, type='completion') == sum(
        u['completion_tokens'] for u in expected)
    assert value(got, 'llm_router_time_to_first_byte_seconds_count', model='tiny') == 4
    assert value(got, 'llm_router_request_duration_seconds_count', model='tiny') == 4
    # each answer's first byte came before its end (the first request includes the swap's readiness wait)
    assert 0 < value(got, 'llm_router_time_to_first_byte_seconds_sum', model='tiny') <= value(
        got, 'llm_router_request_duration_seconds_sum', model='tiny')
    assert value(got, 'llm_router_swaps_total', backend='llama', model='tiny', result='ok') == 1


def test_no_key_value_in_metrics_and_the_dashboard_reads_what_the_router_exports(stack):
    r, dummy = stack
    for key in (CLIENT_KEY, 'not-a-key'):
        httpx.post(r.url + '/v1/chat/completions', content=chat('tiny', max_tokens=2), timeout=120,
                   headers={'Authorization': 'Bearer ' + key})
    httpx.post(r.url + '/v1/chat/completions', content=chat('nope'), headers=AUTH)
    text = httpx.get(r.url + '/metrics', headers=AUTH).text
    assert 'llm_router_client_auth_failures_total 1' in text
    for secret in ALL_KEYS + (LLAMA_KEY,):
        assert secret not in text
    exported = set(re.findall(r'^# TYPE (\S+) ', text, re.M))
    for name, kind in re.findall(r'^# TYPE (\S+) (\S+)$', text, re.M):
        if kind in ('histogram', 'summary'):
            exported |= {name + '_sum', name + '_count'} | ({name + '_bucket'} if kind == 'histogram' else set())
    board = json.loads((ROOT / 'docs/grafana/llm_router.json').read_text())
    used = set(re.findall(r'\bllm_router_[a-z_]+', json.dumps(board)))
    assert used and used <= exported, used - exported
