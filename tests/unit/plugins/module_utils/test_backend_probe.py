# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_backend_probe: which endpoint and header per backend, and how answers are read."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.gpufleet.llm.plugins.module_utils import _backend_probe as probe


@pytest.mark.parametrize('backend, model, expected', [
    ('tabbyapi', None, ('/v1/models', 'x-api-key')),
    ('tabbyapi', 'm', ('/v1/model', 'x-api-key')),
    ('llamacpp', None, ('/props', 'Authorization')),
    ('llamacpp', 'm', ('/props', 'Authorization')),
    ('sglang', None, ('/v1/models', 'Authorization')),
    ('vllm', 'm', ('/v1/models', 'Authorization')),
    ('openai', None, ('/v1/models', 'Authorization')),
])
def test_probe_plan_uses_an_endpoint_that_checks_the_key(backend, model, expected):
    endpoint, header = probe.probe_plan(backend, model)
    assert (endpoint, header) == expected
    assert not endpoint.startswith('/health')


def test_probe_plan_overrides():
    assert probe.probe_plan('tabbyapi', 'm', endpoint='/v1/models', auth_header='Authorization') == \
        ('/v1/models', 'Authorization')


def test_probe_plan_unknown_backend():
    with pytest.raises(ValueError, match='ollama'):
        probe.probe_plan('ollama')


def test_auth_headers():
    assert probe.auth_headers('Authorization', 'k') == {'Authorization': 'Bearer k'}
    assert probe.auth_headers('authorization', 'k') == {'authorization': 'Bearer k'}
    assert probe.auth_headers('x-api-key', 'k') == {'x-api-key': 'k'}
    assert probe.auth_headers('x-api-key', None) == {}
    assert probe.auth_headers('Authorization', '') == {}


@pytest.mark.parametrize('body, text', [
    (b'{"detail":"Please provide an API key"}', 'Please provide an API key'),
    ('{"detail":"Invalid API key"}', 'Invalid API key'),
    (b'{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}', 'Invalid API Key'),
    (b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}', 'Loading model'),
    (b'{"error":"Unauthorized"}', 'Unauthorized'),
    (b'{"detail":[{"loc":["body","name"],"msg":"field required"}]}', 'field required'),
    (b'<html><body>\n  502 Bad   Gateway\n</body></html>', '<html><body> 502 Bad Gateway </body></html>'),
    (b'', ''),
    (b'\xff\xfe broken', '\ufffd\ufffd broken'),
])
def test_server_message(body, text):
    assert probe.server_message(body) == text


def test_server_message_is_shortened():
    text = probe.server_message(json.dumps({'detail': 'x' * 1000}))
    assert text == 'x' * 300 + '...'


@pytest.mark.parametrize('body, models', [
    ({'id': 'Qwen3-8B-exl3', 'object': 'model', 'owned_by': 'tabbyAPI'}, ['Qwen3-8B-exl3']),
    ({'object': 'list', 'data': [{'id': 'a'}, {'id': 'b'}, {'object': 'model'}]}, ['a', 'b']),
    ({'object': 'list', 'data': []}, []),
    ({'model_path': '/srv/models/q.gguf', 'total_slots': 1}, ['/srv/models/q.gguf', 'q.gguf']),
    ({'model_alias': 'chat', 'model_path': 'C:\\models\\q.gguf'}, ['chat', 'C:\\models\\q.gguf', 'q.gguf']),
    ([1, 2], []),
])
def test_reported_models(body, models):
    assert probe.reported_models(json.dumps(body).encode()) == models


def test_reported_models_of_non_json():
    assert probe.reported_models(b'OK') == []


@pytest.mark.parametrize('status, body, model, verdict', [
    (200, b'{"data":[{"id":"m"}]}', None, probe.READY),
    (200, b'{"data":[{"id":"m"}]}', 'm', probe.READY),
    (200, b'{"data":[{"id":"m"}]}', 'other', probe.WAIT),
    (401, b'{"detail":"Invalid API key"}', None, probe.REJECTED),
    (403, b'{"error":"Forbidden"}', None, probe.REJECTED),
    (503, b'{"detail":"No models are currently loaded."}', 'm', probe.WAIT),
    (502, b'Bad Gateway', None, probe.WAIT),
    (504, b'', None, probe.WAIT),
    (429, b'', None, probe.WAIT),
    (404, b'{"detail":"Not Found"}', None, probe.FATAL),
    (400, b'{"detail":"bad"}', None, probe.FATAL),
])
def test_classify(status, body, model, verdict):
    assert probe.classify(status, body, model)[0] == verdict


def test_classify_details():
    assert probe.classify(401, b'{"detail":"Invalid API key"}') == (probe.REJECTED, 'Invalid API key', [])
    assert probe.classify(200, b'{"id":"old"}', 'new') == \
        (probe.WAIT, 'model new is not loaded yet (backend reports: old)', ['old'])
    assert probe.classify(200, b'{"data":[]}', 'new')[1] == 'model new is not loaded yet (backend reports: none)'
    assert probe.classify(200, b'{"model_path":"/m/q.gguf"}', 'q.gguf') == (probe.READY, '', ['/m/q.gguf', 'q.gguf'])


def test_classify_honours_reject_statuses():
    assert probe.classify(403, b'', reject_statuses=(401,))[0] == probe.FATAL
    assert probe.classify(418, b'', reject_statuses=(401, 418))[0] == probe.REJECTED


def test_rejection_messages():
    assert probe.rejection_message('tabbyapi', 'http://h:5000', '/v1/model', 'x-api-key', 401, 'Invalid API key',
                                   True) == \
        'tabbyapi at http://h:5000 rejected the API key sent as x-api-key on /v1/model: 401 Invalid API key'
    assert probe.rejection_message('tabbyapi', 'http://h:5000', '/v1/model', 'x-api-key', 401,
                                   'Please provide an API key', False) == \
        ('tabbyapi at http://h:5000 demands an API key, but no key was sent (set api_key) on /v1/model: '
         '401 Please provide an API key')


@settings(max_examples=300, deadline=None, database=None)   # no .hypothesis/ left in the checkout
@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=400),
       model=st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_classify_reads_any_answer(status, body, model):
    verdict, detail, models = probe.classify(status, body, model)
    assert verdict in (probe.READY, probe.WAIT, probe.REJECTED, probe.FATAL)
    assert isinstance(detail, str) and len(detail) <= 400
    assert verdict != probe.READY or (200 <= status < 300 and (model is None or model in models))
    assert (verdict == probe.REJECTED) == (status in probe.DEFAULT_REJECT_STATUSES)


def test_long_model_lists_are_shortened():
    body = json.dumps({'data': [{'id': 'model-%04d' % i} for i in range(500)]})
    verdict, detail, models = probe.classify(200, body, 'wanted')
    assert verdict == probe.WAIT and len(models) == 500
    assert detail.startswith('model wanted is not loaded yet (backend reports: model-0000, model-0001')
    assert detail.endswith('...)') and len(detail) < 400
