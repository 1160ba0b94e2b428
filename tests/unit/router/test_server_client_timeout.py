# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The client timeout rules of the router's HTTP server (llm_router/server.py: Connection.overdue;
llm_router/app.py: App.sweep), on a Connection fed bytes at chosen times: no network, no event
loop, no sleeping."""

from types import SimpleNamespace

import pytest

from llm_router import app as app_module, server

T = 10.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Transport:
    def __init__(self):
        self.closed = self.aborted = False
        self.buffered = 0

    def get_write_buffer_size(self):
        return self.buffered

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def pause_reading(self):
        pass

    def write(self, data):
        pass


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(server.time, 'monotonic', c)
    return c


def connection(clock):
    app = app_module.App.__new__(app_module.App)         # only what the HTTP server part uses
    app.cfg = SimpleNamespace(client_timeout=T)
    app.connections, app.stopping = set(), False
    app.keyed = frozenset()                              # no path needs a key here (keys: test_router_http.py)
    conn = server.Connection(app, False)
    conn.connection_made(Transport())
    return app, conn


def feed(conn, clock, data, at):
    clock.now = at
    conn.data_received(data)


def test_idle_connection_is_closed_after_the_timeout(clock):
    app, conn = connection(clock)
    clock.now += T - 0.1
    app.sweep()
    assert not conn.transport.closed
    clock.now += 0.2
    assert conn.overdue(clock.now) == 'nothing received'
    app.sweep()
    assert conn.transport.closed


def test_a_steady_head_trickle_is_cut_when_the_head_is_overdue(clock):
    app, conn = connection(clock)
    start = clock.now
    head = b'GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ' + b'p' * 200
    for i, byte in enumerate(head):             # a byte every 0.1 s: never idle for long
        feed(conn, clock, bytes([byte]), start + 0.1 * i)
        if clock.now - start <= T:
            assert conn.overdue(clock.now) == '', i
    assert conn.overdue(clock.now) == 'request head not complete'
    app.sweep()
    assert conn.transport.closed and conn.parser is None


def test_a_body_gets_the_timeout_plus_a_second_per_64_kib(clock):
    app, conn = connection(clock)
    start = clock.now
    body_size = 1 << 20
    feed(conn, clock, b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n' % body_size, start)
    feed(conn, clock, b'x' * (256 * 1024), start + 1)        # 4 s of credit: due at start + T + 4
    for t in range(2, int(T) + 4):                            # then a byte a second: never idle
        feed(conn, clock, b'x', start + t)
        assert conn.overdue(clock.now) == '', t
    feed(conn, clock, b'x', start + T + 4.5)
    assert conn.overdue(clock.now) == 'request body too slow'
    conn.transport.buffered = 10                              # an answer it left unread is dropped
    app.sweep()
    assert conn.transport.aborted and not conn.transport.closed


def test_a_stalled_body_is_cut_by_the_idle_rule(clock):
    app, conn = connection(clock)
    start = clock.now
    feed(conn, clock, b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n', start)
    feed(conn, clock, b'x' * (4 << 20), start + 0.5)         # plenty of credit, then silence
    clock.now = start + 0.5 + T + 0.1
    assert conn.overdue(clock.now) == 'request stalled'


def test_connections_being_answered_are_not_swept(clock):
    app, conn = connection(clock)
    conn.task = object()                                      # an answer is being prepared or sent
    feed(conn, clock, b'GET /hea', clock.now)
    clock.now += 10 * T
    app.sweep()
    assert not conn.transport.closed
