# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The admin endpoints (llm_router/admin.py) without a socket: drain and resume by backend or unit
name, the drain timeout's bounds, a key reload from the key file (what changes, what is kept on an
error), and ``--reload``'s answers when it cannot reach the router. Over the real admin socket:
tests/integration/router/test_router_admin.py."""

import asyncio
import json
import socket

import pytest
import yaml

from llm_router import admin, app as app_module, config, server

CONFIG = {
    'backends': {'sg': {'kind': 'sglang', 'url': 'http://127.0.0.1:9', 'unit': 'sg@x.service', 'key_env': 'SG_KEY'},
                 'sg2': {'kind': 'sglang', 'url': 'http://127.0.0.1:9', 'unit': 'sg@x.service', 'key_env': 'SG_KEY'},
                 'fixed': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
    'models': {'s1': {'backend': 'sg'}, 'f1': {'backend': 'fixed'}},
}


class Conn:
    def __init__(self, admin_socket=True):
        self.admin = admin_socket


@pytest.fixture
def setup(tmp_path):
    """An App whose config names a key file; returns (app, write_keys, config path)."""
    keys, path = tmp_path / 'env', tmp_path / 'router.yml'

    def write_keys(client, sg):
        keys.write_text('LLM_ROUTER_CLIENT_API_KEYS="%s"\nSG_KEY="%s"\n' % (client, sg))
    write_keys('ck-1', 'sg-1')
    doc = dict(CONFIG, key_file=str(keys))
    path.write_text(yaml.safe_dump(doc))
    return app_module.App(config.load_config(str(path), environ={}), str(path)), write_keys, path


def post(app, path, conn=None):
    req = server.Request(conn or Conn())
    req.method = 'POST'
    req.path, dummy, req.query = path.partition('?')
    reply = asyncio.run(admin.admin_action(app, req))
    return reply.status, json.loads(reply.body)


def test_only_the_admin_socket_may_drain(setup):
    app = setup[0]
    assert post(app, '/admin/backends/sg/drain', conn=Conn(admin_socket=False))[0] == 404
    assert not app.cfg.backends['sg'].drained


def test_drain_by_unit_names_every_backend_of_the_unit(setup):
    app = setup[0]
    status, body = post(app, '/admin/units/sg%40x.service/drain?timeout=0')
    assert status == 200 and body['drained'] == ['sg', 'sg2'] and body['in_flight'] == 0 and not body['timed_out']
    assert app.cfg.backends['sg'].drained and app.cfg.backends['sg2'].drained
    assert not app.cfg.backends['fixed'].drained


@pytest.mark.parametrize('query', ['timeout=-1', 'timeout=86401', 'timeout=soon', 'timeout=nan'])
def test_drain_timeout_out_of_bounds_is_400(setup, query):
    status, body = post(setup[0], '/admin/backends/sg/drain?' + query)
    assert status == 400 and body == {'error': 'timeout: expected seconds between 0 and 86400'}


def test_an_unknown_backend_or_unit_is_404(setup):
    assert post(setup[0], '/admin/backends/nope/resume') == (404, {'error': "no backend with name 'nope'"})
    assert post(setup[0], '/admin/units/x.service/drain') == (404, {'error': "no backend with unit 'x.service'"})


def test_resume_reopens_a_backend_whose_key_is_accepted(setup, monkeypatch):
    app = setup[0]
    post(app, '/admin/backends/sg/drain?timeout=0')

    async def accepted(b):
        return False
    monkeypatch.setattr(app.board, 'key_refused', accepted)
    status, body = post(app, '/admin/backends/sg/resume')
    assert status == 200 and body == {'resumed': ['sg'], 'still_drained_key_refused': [], 'drained': []}


def test_reload_applies_new_keys_and_rechecks_ready_backends(setup):
    app, write_keys, dummy = setup
    app.cfg.backends['sg'].state = 'ready'
    write_keys('ck-2,ck-1', 'sg-2')
    result = asyncio.run(admin.reload_keys(app))
    assert result == {'reloaded': True, 'client_keys': 2, 'resumed': [], 'still_drained_key_refused': [],
                      'config_changed_beyond_keys': False}
    assert [k.key for k in app.cfg.client_keys] == ['ck-2', 'ck-1']
    assert app.cfg.backends['sg'].key == 'sg-2' and app.cfg.backends['sg'].state == 'unknown'


def test_a_failed_reload_keeps_the_old_keys(setup):
    app, write_keys, path = setup
    write_keys('', 'sg-2')
    req = server.Request(Conn())
    reply = asyncio.run(admin.admin_reload(app, req))
    assert reply.status == 500 and json.loads(reply.body)['reloaded'] is False
    assert 'LLM_ROUTER_CLIENT_API_KEYS' in json.loads(reply.body)['error']
    assert [k.key for k in app.cfg.client_keys] == ['ck-1'] and app.cfg.backends['sg'].key == 'sg-1'


def test_reload_says_when_the_config_changed_beyond_keys(setup):
    app, dummy, path = setup
    doc = yaml.safe_load(path.read_text())
    doc['backends']['fixed']['url'] = 'http://127.0.0.1:10'
    path.write_text(yaml.safe_dump(doc))
    assert asyncio.run(admin.reload_keys(app))['config_changed_beyond_keys'] is True
    assert app.cfg.backends['fixed'].url == 'http://127.0.0.1:9'      # that takes a restart


def test_request_reload_without_an_admin_socket(tmp_path, capsys):
    path = tmp_path / 'router.yml'
    path.write_text(yaml.safe_dump(CONFIG))
    assert admin.request_reload(str(path)) == 2
    assert 'admin_socket is not set in %s; send SIGHUP instead' % path in capsys.readouterr().err
    assert admin.request_reload(str(tmp_path / 'missing.yml')) == 2


def test_request_reload_reports_the_routers_answer(tmp_path, capsys):
    sock_path = str(tmp_path / 'admin.sock')
    path = tmp_path / 'router.yml'
    path.write_text(yaml.safe_dump(dict(CONFIG, admin_socket=sock_path)))
    assert admin.request_reload(str(path)) == 1                       # nobody listens
    assert 'reload over %s failed' % sock_path in capsys.readouterr().err
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock_path)
        listener.listen()

        async def answer():
            loop = asyncio.get_running_loop()
            listener.setblocking(False)
            conn, dummy = await loop.sock_accept(listener)
            with conn:
                request = await loop.sock_recv(conn, 65536)
                assert request.startswith(b'POST /admin/reload HTTP/1.1\r\n')
                await loop.sock_sendall(conn, b'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\n\r\n'
                                              b'{"reloaded": false}')

        async def both():
            task = asyncio.ensure_future(answer())
            rc = await asyncio.to_thread(admin.request_reload, str(path))
            await task
            return rc
        assert asyncio.run(both()) == 1                               # not a 200: systemctl reload fails
    assert capsys.readouterr().out.strip() == '{"reloaded": false}'
