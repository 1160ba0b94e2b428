# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""/v1/models, /health and /metrics (llm_router/endpoints.py): which need a client key, and that
health shows names and states but never a key."""

import asyncio
import json
import time

import pytest

from llm_router import app as app_module, config, endpoints, server

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'ck-1,ck-2', 'SG_KEY': 'secret-sg-key'}
CONFIG = {
    'backends': {'sg': {'kind': 'sglang', 'url': 'http://127.0.0.1:9', 'unit': 'sg.service', 'key_env': 'SG_KEY'},
                 'fixed': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
    'models': {'s1': {'backend': 'sg'}, 'f1': {'backend': 'fixed', 'model': 'own-id'}},
}


@pytest.fixture
def app():
    return app_module.App(config.parse_config(json.loads(json.dumps(CONFIG)), ENV))


def call(handler, app, key=None):
    req = server.Request(conn=None)
    req.method, req.path = 'GET', '/'
    req.headers = {'x-api-key': key} if key else {}
    return asyncio.run(handler(app, req))


def test_models_list_needs_a_client_key(app):
    reply = call(endpoints.list_models, app)
    assert reply.status == 401 and app.metrics.client_auth_failures == 1
    reply = call(endpoints.list_models, app, key='ck-2')              # a grace-window key counts
    assert reply.status == 200 and reply.ctype == 'application/json; charset=utf-8'
    assert json.loads(reply.body) == {'object': 'list', 'data': [
        {'id': 's1', 'object': 'model', 'created': 0, 'owned_by': 'sg'},
        {'id': 'f1', 'object': 'model', 'created': 0, 'owned_by': 'fixed'}]}


def test_health_without_a_client_key_says_only_that_the_router_is_up(app):
    app.cfg.backends['sg'].state, app.cfg.backends['sg'].last_error = 'ready', 'unit sg.service failed'
    for key in (None, 'wrong-key', 'secret-sg-key'):                  # a backend's key is no client key
        reply = call(endpoints.health, app, key=key)
        assert reply.status == 200 and json.loads(reply.body) == {'status': 'ok'}, key
    assert app.metrics.client_auth_failures == 0                      # liveness probes are no auth failures


def test_health_details_to_a_client_key_and_never_a_key(app):
    app.cfg.backends['sg'].state, app.cfg.backends['sg'].last_error = 'ready', ''
    app.cfg.backends['fixed'].drained, app.cfg.backends['fixed'].last_error = True, 'drained for a restart'
    reply = call(endpoints.health, app, key='ck-2')
    health = json.loads(reply.body)
    assert reply.status == 200 and health['status'] == 'ok' and health['active_backends'] == ['sg']
    assert health['swapping_to'] is None and health['swap_policy'] == 'exclusive'
    assert health['backends']['sg'] == {'kind': 'sglang', 'unit': 'sg.service', 'state': 'ready', 'loaded': None,
                                        'in_flight': 0, 'drained': False, 'resume_pending': False, 'last_error': None,
                                        'ttl': None, 'unload_in': None}
    assert health['backends']['fixed']['drained'] and health['backends']['fixed']['last_error'] == 'drained for a restart'
    assert b'secret-sg-key' not in reply.body and b'ck-1' not in reply.body


def test_health_shows_when_an_idle_backend_is_unloaded(app):
    sg = app.cfg.backends['sg']
    sg.ttl, sg.state = 30.0, 'ready'
    sg.last_used = time.monotonic()                          # its last request ended now
    health = json.loads(call(endpoints.health, app, key='ck-1').body)
    assert health['backends']['sg']['ttl'] == 30.0 and 0 < health['backends']['sg']['unload_in'] <= 30.0
    assert health['backends']['fixed']['ttl'] is None and health['backends']['fixed']['unload_in'] is None
    sg.inflight = 1                                          # busy: not counting down
    assert json.loads(call(endpoints.health, app, key='ck-1').body)['backends']['sg']['unload_in'] is None


def test_metrics_need_a_client_key(app):
    assert call(endpoints.metrics_endpoint, app).status == 401
    reply = call(endpoints.metrics_endpoint, app, key='ck-1')
    assert reply.status == 200 and reply.ctype == 'text/plain; charset=utf-8'
    assert b'# TYPE llm_router_client_auth_failures_total counter\n' in reply.body
