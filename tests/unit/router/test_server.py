# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client-facing HTTP/1.1 server (llm_router/server.py) on a fake transport: answers in request
order, the framing of whole and streamed answers, Expect, and the limits the server refuses (each
answered in turn by App.respond, without a handler). Over real sockets: tests/integration/router/test_router_http.py; client timeouts:
test_server_client_timeout.py."""

import asyncio
import re
from llm_router import app as app_module, config, server


class Transport:
    def __init__(self):
        self.data, self.closed, self.reading = b'', False, True

    def write(self, data):
        self.data += data

    def close(self):
        self.closed = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def get_write_buffer_size(self):
        return 0


def App():
    """The real dispatch (refused requests are answered there), with one handler for every path used
    here: it answers with the method, path and body, after a turn of the loop."""
    cfg = config.parse_config({'backends': {'b': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
                               'models': {'m': {'backend': 'b'}}}, {'LLM_ROUTER_CLIENT_API_KEYS': 'ck'})
    app = app_module.App(cfg)
    app.seen = []

    async def echo(app, req):
        app.seen.append(req.path)
        await asyncio.sleep(0.01)
        return server.Reply(200, b'%s %s %s' % (req.method.encode(), req.path.encode(), req.body), 'text/plain')
    app.routes = {path: {'GET': echo, 'POST': echo} for path in ('/a', '/b', '/c')}
    return app


def serve(*chunks, app=None):
    """Feed the chunks to a new connection; return (what was written, the transport)."""
    app = app or App()

    async def go():
        conn = server.Connection(app, False)
        conn.connection_made(Transport())
        for chunk in chunks:
            conn.data_received(chunk)
            await asyncio.sleep(0)
        while conn.task is not None:
            await asyncio.sleep(0.01)
        return conn.transport
    transport = asyncio.run(go())
    return transport.data, transport


def answers(data):
    """(status, headers, body) of each answer with Content-Length."""
    out = []
    while data:
        head, dummy, data = data.partition(b'\r\n\r\n')
        lines = head.split(b'\r\n')
        headers = dict(l.split(b': ', 1) for l in lines[1:])
        n = int(headers.get(b'Content-Length', b'0'))
        out.append((int(lines[0].split()[1]), headers, data[:n]))
        data = data[n:]
    return out


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    data, transport = serve(b'GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n'
                            b'abcGET /c HTTP/1.1\r\nHost: x\r\n\r\n')
    got = answers(data)
    assert [(s, b) for s, h, b in got] == [(200, b'GET /a '), (200, b'POST /b abc'), (200, b'GET /c ')]
    assert all(b'Date' in h and b'Connection' not in h for s, h, b in got)
    assert not transport.closed and transport.reading                 # keep-alive, reading again


def test_connection_close_and_http10():
    data, transport = serve(b'GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    assert answers(data)[0][1][b'Connection'] == b'close' and transport.closed
    data, transport = serve(b'GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
    assert answers(data)[0][1][b'Connection'] == b'keep-alive' and not transport.closed
    data, transport = serve(b'GET /a HTTP/1.0\r\n\r\n')
    assert answers(data)[0][1][b'Connection'] == b'close' and transport.closed


def test_expect_100_continue_before_the_body_other_expectations_417():
    data, dummy = serve(b'POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n', b'hi')
    assert data.startswith(b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n') and data.endswith(b'POST /b hi')
    data, transport = serve(b'POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: \xff\r\n\r\nhi')
    (status, headers, body), = answers(data)
    assert status == 417 and b'Unsupported Expect header' in body and b'\xff' not in body
    assert headers[b'Connection'] == b'close' and transport.closed


def test_limits_are_answered_by_the_server_and_close_the_connection():
    app = App()
    cases = [
        (b'GET /a HTTP/1.1\r\n' + b''.join(b'X-%d: y\r\n' % i for i in range(101)) + b'\r\n', 431),
        # the limit counts lines: one name repeated 101 times is as many lines (60,000 were accepted before)
        (b'GET /a HTTP/1.1\r\n' + b'X: y\r\n' * 101 + b'\r\n', 431),
        (b'GET /' + b'a' * (64 * 1024) + b' HTTP/1.1\r\n\r\n', 414),
        (b'POST /b HTTP/1.1\r\nContent-Length: %d\r\n\r\n' % (server.MAX_BODY + 1), 413),
        (b'GET http://elsewhere/a HTTP/1.1\r\nHost: x\r\n\r\n', 400),
        (b'GET /a HTTP/1.1\r\nBad Header: x\r\n\r\n', 400),
    ]
    for raw, status in cases:
        data, transport = serve(raw, app=app)
        assert answers(data)[0][0] == status, raw[:60]
        assert transport.closed
    assert app.seen == []                                             # answered before any handler ran


def test_a_hundred_header_lines_are_allowed_repeated_names_included():
    data, transport = serve(b'GET /a HTTP/1.1\r\nHost: x\r\n' + b'X: y\r\n' * 99 + b'\r\n')
    assert answers(data)[0][0] == 200 and not transport.closed


def test_an_error_after_good_requests_is_answered_in_turn():
    data, transport = serve(b'GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nBad Header: x\r\n\r\n')
    assert [s for s, h, b in answers(data)] == [200, 400] and transport.closed


def test_head_and_204_answers_carry_no_body():
    conn = server.Connection(App(), False)
    conn.transport = Transport()
    req = server.Request(conn)
    req.method = 'HEAD'
    conn.send(req, server.Reply(200, b'12345', 'text/plain'))
    assert conn.transport.data.endswith(b'Content-Length: 5\r\n\r\n')
    conn.transport.data = b''
    req.method = 'GET'
    conn.send(req, server.Reply(204, b'ignored', None, (('Retry-After', '3'),)))
    assert b'Content-Length' not in conn.transport.data and b'Content-Type' not in conn.transport.data
    assert conn.transport.data.startswith(b'HTTP/1.1 204 No Content\r\n') and conn.transport.data.endswith(
        b'Retry-After: 3\r\n\r\n')


def test_a_stream_is_chunked_for_http11_and_ends_with_the_connection_for_http10():
    async def go(http10):
        conn = server.Connection(App(), False)
        conn.transport = Transport()
        req = server.Request(conn)
        req.http10 = http10
        stream = conn.stream(req, 200, 'text/event-stream')
        await stream.write(b'data: 1\n\n')
        stream.end(b'data: 2\n\n')
        return conn.transport.data, req.keep_alive, conn.answered
    data, keep_alive, answered = asyncio.run(go(False))
    head, dummy, body = data.partition(b'\r\n\r\n')
    assert b'Transfer-Encoding: chunked' in head and keep_alive and answered
    assert body == b'9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n'
    data, keep_alive, answered = asyncio.run(go(True))
    head, dummy, body = data.partition(b'\r\n\r\n')
    assert b'Transfer-Encoding' not in head and b'Connection: close' in head and not keep_alive
    assert body == b'data: 1\n\ndata: 2\n\n'
    assert re.match(rb'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nDate: ', head)
