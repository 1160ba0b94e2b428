# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Counters and histograms in the Prometheus text format, and the tokens of an answer's usage
object (llm_router/metrics.py). Real llama-server answers: tests/integration/router/test_router_metrics.py."""

import json
import re
from pathlib import Path

import pytest

from llm_router import metrics

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = re.compile(r'([a-z_]+)(?:\{(.*)\})? (\S+)\Z')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"(?:,|\Z)')

# llama-server's own answers (build 11434, tests/tools/build-llama-server.sh), cut to what matters.
LLAMA_CHAT = (b'{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":"x"}}],'
              b'"created":1796659048,"model":"tiny.gguf","object":"chat.completion","usage":{"completion_tokens":8,'
              b'"prompt_tokens":54,"total_tokens":62,"prompt_tokens_details":{"cached_tokens":0}},"id":"chatcmpl-x",'
              b'"timings":{"cache_n":0,"prompt_n":54,"predicted_n":8}}')
LLAMA_USAGE_CHUNK = (b'data: {"choices":[],"created":1796659050,"id":"chatcmpl-0","model":"tiny.gguf","object":'
                     b'"chat.completion.chunk","usage":{"completion_tokens":4,"prompt_tokens":54,"total_tokens":58,'
                     b'"prompt_tokens_details":{"cached_tokens":53}},"timings":{"cache_n":53,"prompt_n":1}}\n\n')


def samples(text):
    """{(name, frozenset of (label, value)): value} of a rendered text; fails on a malformed line."""
    out = {}
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = LABEL.findall(m.group(2) or '')
        assert ','.join('%s="%s"' % kv for kv in labels) == (m.group(2) or ''), line
        out[(m.group(1), frozenset(labels))] = float(m.group(3))
    return out


def one_of_each():
    m = metrics.Metrics()
    m.observe('qwen', 200, 0.003, 'team-a')
    m.observe('qwen', 200, 0.2, 'team-a')
    m.observe('qwen', 200, 0.2)
    m.observe('a"b', 502, 1.5, 'k\\"\n')
    m.first_byte('qwen', 0.02)
    m.first_byte('qwen', 7)
    m.usage('qwen', 'team-a', (54, 8))
    m.usage('qwen', 'team-a', (10, 2))
    m.usage('qwen', '', (1, 0))
    m.usage('qwen', 'team-b', None)
    m.swap('tabby', 'ok', 12.5, 'qwen')
    m.unload('tabby', 'qwen', 'idle')
    m.unload('tabby', 'qwen', 'r"e')
    m.backend_auth_failures['sg'] = 2
    m.client_auth_failures = 3
    m.clients_refused = 4
    return m


def test_metrics_render_prometheus_text():
    got = samples(one_of_each().render())

    def value(name, **labels):
        return got[(name, frozenset(labels.items()))]
    assert value('llm_router_requests_total', model='qwen', key='team-a', status='200') == 2
    assert value('llm_router_requests_total', model='qwen', key='-', status='200') == 1       # no key name
    assert value('llm_router_requests_total', model='a\\"b', key='k\\\\\\"\\n', status='502') == 1   # escaped
    assert value('llm_router_request_duration_seconds_bucket', model='qwen', le='0.005') == 1
    assert value('llm_router_request_duration_seconds_bucket', model='qwen', le='0.25') == 3
    assert value('llm_router_request_duration_seconds_bucket', model='qwen', le='+Inf') == 3
    assert value('llm_router_request_duration_seconds_count', model='qwen') == 3
    assert value('llm_router_time_to_first_byte_seconds_bucket', model='qwen', le='0.025') == 1
    assert value('llm_router_time_to_first_byte_seconds_bucket', model='qwen', le='5') == 1
    assert value('llm_router_time_to_first_byte_seconds_bucket', model='qwen', le='10') == 2
    assert value('llm_router_time_to_first_byte_seconds_sum', model='qwen') == pytest.approx(7.02)
    assert value('llm_router_time_to_first_byte_seconds_count', model='qwen') == 2
    assert value('llm_router_tokens_total', model='qwen', key='team-a', type='prompt') == 64
    assert value('llm_router_tokens_total', model='qwen', key='team-a', type='completion') == 10
    assert value('llm_router_tokens_total', model='qwen', key='-', type='prompt') == 1
    assert not [k for k in got if ('key', 'team-b') in k[1]]       # an answer without usage counts nothing
    assert value('llm_router_swaps_total', backend='tabby', model='qwen', result='ok') == 1
    assert value('llm_router_swap_duration_seconds_sum', backend='tabby') == 12.5
    assert value('llm_router_unloads_total', backend='tabby', model='qwen', reason='idle') == 1
    assert value('llm_router_unloads_total', backend='tabby', model='qwen', reason='r\\"e') == 1
    assert value('llm_router_backend_auth_failures_total', backend='sg') == 2
    assert value('llm_router_client_auth_failures_total') == 3
    assert value('llm_router_client_connections_refused_total') == 4


def test_every_sample_belongs_to_a_family_with_help_and_type():
    text = one_of_each().render()
    declared = dict(re.findall(r'^# TYPE (\S+) (\S+)$', text, re.M))
    assert declared == {name: kind for name, (kind, dummy) in metrics.FAMILIES.items()}
    assert set(re.findall(r'^# HELP (\S+) ', text, re.M)) == set(declared)
    seen = set()
    for name, dummy in samples(text):
        family = name if name in declared else re.sub(r'_(bucket|sum|count)\Z', '', name)
        assert family in declared, name
        assert name == family or declared[family] in ('histogram', 'summary'), name
        seen.add(family)
    assert seen == set(declared)                   # one_of_each() fills every family
    assert samples(metrics.Metrics().render()) == {  # an empty router: the two plain counters only
        ('llm_router_client_auth_failures_total', frozenset()): 0,
        ('llm_router_client_connections_refused_total', frozenset()): 0}


def test_docs_list_every_metric():
    doc = (ROOT / 'docs/router.md').read_text()
    section = doc.split('\n## Metrics\n', 1)[1].split('\n## ', 1)[0]
    for name in metrics.FAMILIES:
        assert '`%s' % name in section, name


@pytest.mark.parametrize('body, tokens', [
    (LLAMA_CHAT, (54, 8)),
    (json.dumps({'object': 'list', 'usage': {'prompt_tokens': 7, 'total_tokens': 7},       # embeddings:
                 'data': [{'embedding': [0.125] * 5000}]}).encode(), (7, 0)),           # usage before the data
    (json.dumps({'data': [{'embedding': [0.125] * 5000}], 'usage': {'prompt_tokens': 3}}).encode(), (3, 0)),
    (b'{"choices": [], "usage" :\n {"prompt_tokens": 2, "completion_tokens": 1}}', (2, 1)),
    (b'{"choices": [{"message": {"content": "say \\"usage\\": {\\"prompt_tokens\\": 9}"}}]}', None),   # in a text
    (b'{"object": "usage", "choices": []}', None),               # a value, not a key
    (b'{"usage": null}', None),
    (b'{"usage": {"prompt_tokens": true, "completion_tokens": 1}}', None),
    (b'{"usage": {"prompt_tokens": -1, "completion_tokens": 1}}', None),
    (b'{"usage": {"prompt_tokens": 1.5}}', None),
    (b'{"usage": {"total_tokens": 4}}', None),
    (b'{"usage": {"prompt_tokens": 4, "completion_tokens": 1', None),    # cut short
    (b'{"error": {"message": "usage limit"}}', None),
    (b'', None),
])
def test_usage_tokens_of_a_whole_answer(body, tokens):
    assert metrics.usage_tokens(body) == tokens


def test_usage_tokens_are_looked_for_in_bounded_bytes_only():
    middle = b'{"a": "%s", "usage": {"prompt_tokens": 5, "completion_tokens": 1}, "b": "%s"}' % (
        b'x' * metrics.WINDOW, b'y' * metrics.WINDOW)
    assert metrics.usage_tokens(middle) is None
    long_text = b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % (b'z' * 3 * metrics.WINDOW)
    assert metrics.usage_tokens(tail=[long_text, LLAMA_USAGE_CHUNK, b'data: [DONE]\n\n']) == (54, 4)
    assert metrics.usage_tokens(tail=[LLAMA_USAGE_CHUNK, long_text, b'data: [DONE]\n\n']) is None


def test_usage_tokens_of_a_stream_tail():
    done = b'data: [DONE]\n\n'
    assert metrics.usage_tokens(tail=[b'', b'', LLAMA_USAGE_CHUNK + done]) == (54, 4)
    half = len(LLAMA_USAGE_CHUNK) // 2                            # the usage chunk split over two reads
    assert metrics.usage_tokens(tail=[LLAMA_USAGE_CHUNK[:half], LLAMA_USAGE_CHUNK[half:], done]) == (54, 4)
    # OpenAI with include_usage: "usage": null in every chunk, the object in the last one
    chunks = [b'data: {"choices":[{"delta":{"content":"h"}}],"usage":null}\n\n',
              b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}\n\n', done]
    assert metrics.usage_tokens(tail=chunks) == (11, 3)
    # llama-server without include_usage: a chat stream ends with timings, not usage (nothing counted)
    assert metrics.usage_tokens(tail=[b'', b'data: {"choices":[],"timings":{"prompt_n":1,"predicted_n":4}}\n\n',
                                      done]) is None
