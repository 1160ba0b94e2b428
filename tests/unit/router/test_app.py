# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""App.respond (llm_router/app.py): which handler answers a path and method, and what the client
gets when there is none, when the server refused the request, and when a handler fails."""

import asyncio
import json
import logging

import pytest

from llm_router import app as app_module, config, server, upstream

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'ck'}
CONFIG = {'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}}, 'models': {'m': {'backend': 'b'}}}


class Conn:
    """What App.respond needs of a server.Connection: send() and answered; admin: the admin socket."""

    def __init__(self, admin=False):
        self.admin, self.answered, self.sent = admin, False, []

    def send(self, req, reply):
        self.sent.append(reply)
        self.answered = True


@pytest.fixture
def app():
    return app_module.App(config.parse_config(json.loads(json.dumps(CONFIG)), ENV), '/nonexistent/router.yml')


def respond(app, method, path, conn=None, refused=None, headers=None):
    conn = conn or Conn()
    req = server.Request(conn)
    req.method, req.path, req.refused = method, path, refused
    req.headers = headers or {}
    asyncio.run(app.respond(conn, req))
    return req, conn.sent[0] if conn.sent else None


def error_of(reply):
    return json.loads(reply.body)['error']


def test_routes(app):
    assert {p: sorted(m) for p, m in app.routes.items()} == {
        '/v1/models': ['GET', 'HEAD'], '/health': ['GET', 'HEAD'], '/metrics': ['GET', 'HEAD'],
        '/admin/reload': ['POST'], '/v1/chat/completions': ['POST'], '/v1/completions': ['POST'],
        '/v1/embeddings': ['POST']}


def test_unknown_path_is_404(app):
    dummy, reply = respond(app, 'GET', '/v2/models')
    assert reply.status == 404 and error_of(reply)['code'] == 'not_found'


def test_wrong_method_is_405_with_allow(app):
    dummy, reply = respond(app, 'DELETE', '/health')
    assert reply.status == 405 and error_of(reply)['code'] == 'method_not_allowed'
    assert reply.headers == (('Allow', 'GET, HEAD'),)
    dummy, reply = respond(app, 'GET', '/v1/chat/completions')
    assert reply.headers == (('Allow', 'POST'),)


def test_head_is_answered_like_get(app):
    dummy, reply = respond(app, 'HEAD', '/health')
    assert reply.status == 200 and json.loads(reply.body)['status'] == 'ok'


def test_a_refused_request_gets_its_status_and_message(app):
    dummy, reply = respond(app, 'GET', '/health', refused=(431, 'Request header fields too large', None))
    assert reply.status == 431 and error_of(reply)['message'] == 'Request header fields too large'


def test_admin_paths_exist_only_on_the_admin_socket(app):
    dummy, reply = respond(app, 'POST', '/admin/backends/b/drain')
    assert reply.status == 404                                       # TCP clients: as if it did not exist
    dummy, reply = respond(app, 'POST', '/admin/reload')
    assert reply.status == 404
    for method in ('GET', 'PUT', 'DELETE'):                         # any method: 404, never 405 (docs/router.md)
        for path in ('/admin/reload', '/admin/backends/b/drain', '/admin/anything'):
            dummy, reply = respond(app, method, path)
            assert reply.status == 404 and error_of(reply)['code'] == 'not_found', (method, path)
            assert reply.headers == ()
    dummy, reply = respond(app, 'POST', '/admin/backends/b/explode', conn=Conn(admin=True))
    assert reply.status == 404 and error_of(reply)['code'] == 'not_found'
    dummy, reply = respond(app, 'GET', '/admin/backends/b/drain', conn=Conn(admin=True))
    assert reply.status == 405 and reply.headers == (('Allow', 'POST'),)


def test_a_failing_handler_is_a_500_and_logged(app, caplog):
    async def broken(app, req):
        raise KeyError('boom')
    app.routes['/health'] = {'GET': broken}
    with caplog.at_level(logging.ERROR, logger='llm_router'):
        req, reply = respond(app, 'GET', '/health')
    assert reply.status == 500 and error_of(reply) == {'message': 'Internal error', 'type': 'api_error',
                                                       'param': None, 'code': None}
    assert 'unhandled error in GET /health' in caplog.text and req.keep_alive


def test_an_answer_cut_by_the_backend_closes_the_connection(app):
    async def cut(app, req):
        raise upstream.UpstreamError('connection closed before the end of the answer')
    app.routes['/health'] = {'GET': cut}
    req, reply = respond(app, 'GET', '/health')
    assert reply is None and not req.keep_alive                      # nothing more on this connection
