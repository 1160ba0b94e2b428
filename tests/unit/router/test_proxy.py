# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The proxy handler (llm_router/proxy.py) up to the backend: the client's key, the body's model,
a drained backend; and the access log (its line format, its batching, its order with log records).
Relaying to real backends: tests/integration/router/test_router_proxy.py."""

import asyncio
import io
import json
import logging
import re

import pytest

from llm_router import app as app_module, config, proxy, server

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'ck', 'LLM_ROUTER_CLIENT_KEYS': 'team-a:ka'}   # names: client-1, team-a
CONFIG = {'retry_after': 9, 'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
          'models': {'m': {'backend': 'b'}}}
LINE = re.compile(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO llm_router: (.*)\n\Z')


@pytest.fixture
def app():
    return app_module.App(config.parse_config(json.loads(json.dumps(CONFIG)), ENV))


def post(app, body, key='ck'):
    req = server.Request(conn=None)
    req.method, req.path, req.target = 'POST', '/v1/chat/completions', '/v1/chat/completions'
    req.headers = {'authorization': 'Bearer ' + key} if key else {}
    req.body = body
    reply = asyncio.run(proxy.proxy(app, req))
    return reply.status, json.loads(reply.body)['error'], reply.headers


@pytest.mark.parametrize('key', [None, 'wrong', 'ck2'])
def test_without_a_client_key_401_and_counted(app, key):
    status, error, dummy = post(app, b'{"model": "m"}', key=key)
    assert (status, error['code']) == (401, 'invalid_api_key')
    assert app.metrics.client_auth_failures == 1 and app.metrics.requests == {}


@pytest.mark.parametrize('body', [b'not json', b'[1]', b'{"model": 3}', b'{}', b'[' * 100000, b'\xff\xfe'])
def test_a_body_without_a_model_string_is_400(app, body):
    status, error, dummy = post(app, body)
    assert (status, error['param']) == (400, 'model')
    assert 'JSON object with a "model" string' in error['message']


def test_an_unknown_model_is_404_under_one_metrics_label(app):
    status, error, dummy = post(app, b'{"model": "' + b'x' * 500 + b'"}')
    assert (status, error['code']) == (404, 'model_not_found')
    assert len(error['message']) < 150                                # the name is cut at 100 characters
    assert list(app.metrics.requests) == [('(unknown)', 'client-1', 404)]


def test_requests_are_counted_by_the_name_of_their_key_never_its_value(app):
    post(app, b'{"model": "nope"}', key='ka')
    app.cfg.backends['b'].drained = True
    post(app, b'{"model": "m"}', key='ka')
    post(app, b'{"model": "m"}')
    assert list(app.metrics.requests) == [('(unknown)', 'team-a', 404), ('m', 'team-a', 503), ('m', 'client-1', 503)]
    text = app.metrics.render()
    assert 'llm_router_requests_total{model="m",key="team-a",status="503"} 1' in text
    assert 'llm_router_requests_total{model="m",key="client-1",status="503"} 1' in text
    assert '"ck"' not in text and '"ka"' not in text   # the keys' values (ENV) are no label values


def test_a_drained_backend_is_503_with_retry_after_and_an_access_line(app, capsys):
    app.cfg.backends['b'].drained = True
    proxy.ACCESS.enabled = True
    try:
        status, error, headers = post(app, b'{"model": "m"}')
    finally:
        proxy.ACCESS.enabled = False
        proxy.ACCESS.flush()
    assert (status, error['code'], headers) == (503, 'backend_draining', (('Retry-After', '9'),))
    assert list(app.metrics.requests) == [('m', 'client-1', 503)]
    assert app.cfg.backends['b'].inflight == 0
    line = LINE.match(capsys.readouterr().err)
    assert line and re.fullmatch(r'POST /v1/chat/completions key=client-1 model=m status=503 \d+\.\dms', line.group(1))


def test_access_lines_go_out_in_batches_and_before_later_log_records(monkeypatch):
    out = io.StringIO()
    access = proxy.AccessLog()
    monkeypatch.setattr(proxy.sys, 'stderr', out)
    monkeypatch.setattr(proxy, 'ACCESS', access)               # what FlushingHandler flushes
    handler = proxy.FlushingHandler(out)
    handler.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))

    async def go():
        access.add('first')
        access.add('second')
        assert out.getvalue() == ''                                   # not yet: within 0.1 s, one write
        await asyncio.sleep(0.15)
        assert [LINE.match(l + '\n').group(1) for l in out.getvalue().splitlines()] == ['first', 'second']
        access.add('third')
        handler.emit(logging.LogRecord('llm_router', logging.ERROR, __file__, 1, 'a record', None, None))
    asyncio.run(go())
    lines = out.getvalue().splitlines()
    assert lines[2].endswith('INFO llm_router: third') and lines[3] == 'ERROR llm_router: a record'
    assert access.timer is None and access.lines == []
