# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router's own HTTP/1.1 server (llm_router/server.py), over raw sockets on loopback: framing of
what clients send (chunked bodies, pipelining, malformed requests, limits, Expect), HEAD, 405, backpressure
towards a client that reads slowly, the client timeout (idle, trickled head, trickled body; slow
streams are not cut; a pipelined request's time starts after the answer before it), a bodiless 204
relayed, a stream's head sent before a slow first chunk, and the open-file limit raised at start."""

import hashlib
import json
import resource
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from router_helpers import AUTH, CLIENT_KEY, SGLANG_KEY, chat

KEY = b'Authorization: Bearer ' + CLIENT_KEY.encode() + b'\r\n'


@pytest.fixture
def stack(procs):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}})
    assert httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH).status_code == 200
    return sg, r


class Reader:
    """Reads HTTP/1.1 answers (Content-Length or chunked) one after the other from a socket."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b''

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError('connection closed')
        self.buf += data

    def _until(self, sep):
        while sep not in self.buf:
            self._fill()
        line, dummy, self.buf = self.buf.partition(sep)
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def answer(self, head_only=False):
        """(status, headers with lower-case names, body)."""
        head = self._until(b'\r\n\r\n').decode('latin-1').split('\r\n')
        headers = dict((k.lower(), v.strip()) for k, dummy, v in (h.partition(':') for h in head[1:]))
        if head_only:
            return int(head[0].split()[1]), headers, b''
        if headers.get('transfer-encoding') == 'chunked':
            body = b''
            while (size := int(self._until(b'\r\n').split(b';')[0], 16)):
                body += self._exactly(size)
                self._exactly(2)
            self._until(b'\r\n')
        else:
            body = self._exactly(int(headers['content-length']))
        return int(head[0].split()[1]), headers, body

    def closed(self, timeout=5):
        """True when the router closes the connection (nothing more arrives) within timeout;
        False when it is still open after timeout, or sends more."""
        self.sock.settimeout(timeout)
        try:
            return not self.buf and self.sock.recv(65536) == b''
        except TimeoutError:
            return False
        except OSError:                  # reset by the router: closed too
            return True


def connect(r):
    return socket.create_connection(('127.0.0.1', r.port), timeout=15)


def post(body, path='/v1/chat/completions', extra=b''):
    return (b'POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s'
            % (path.encode(), KEY, len(body), extra, body))


@pytest.mark.parametrize('raw', [
    b'GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n',
    b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n'
    b'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n' + KEY + b'Transfer-Encoding: chunked\r\n\r\nzz\r\n',
    b'CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n',
    b'GET http://example.org/health HTTP/1.1\r\nHost: x\r\n\r\n',
], ids=['bad-header-name', 'length-and-chunked', 'bad-chunk-size', 'connect', 'absolute-form'])
def test_malformed_request_gets_400_and_the_connection_is_closed(stack, raw):
    r = stack[1]
    with connect(r) as s:
        s.sendall(raw)
        reader = Reader(s)
        status, headers, body = reader.answer()
        assert status == 400 and headers['connection'] == 'close'
        assert json.loads(body)['error']['type'] == 'invalid_request_error'
        assert reader.closed()
    assert 'Traceback' not in r.log()


def test_limits_answered_before_the_body_is_read(stack):
    r = stack[1]
    with connect(r) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n'
                  % (KEY, 300 * 1024 * 1024))
        reader = Reader(s)
        assert reader.answer()[0] == 413 and reader.closed()
    with connect(r) as s:
        s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n' % (b'a' * 70000))
        reader = Reader(s)
        assert reader.answer()[0] == 431 and reader.closed()


def test_chunked_request_body_reaches_the_backend_unchanged(stack):
    sg, r = stack
    body = chat('s1', max_tokens=7)
    pieces = [body[:10], body[10:11], body[11:]]
    chunked = b''.join(b'%x;ext=1\r\n%s\r\n' % (len(p), p) for p in pieces) + b'0\r\nX-Trailer: t\r\n\r\n'
    with connect(r) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n' % KEY)
        time.sleep(0.05)                                 # the body arrives later, in pieces
        for i in range(0, len(chunked), 17):
            s.sendall(chunked[i:i + 17])
        status, dummy, answer = Reader(s).answer()
    assert status == 200 and json.loads(answer)['object'] == 'chat.completion'
    assert sg.stats()['last_body_sha256'] == hashlib.sha256(body).hexdigest()


def test_pipelined_requests_are_answered_in_order_on_one_connection(stack):
    r = stack[1]
    stream = chat('s1', stream=True)
    raw = (post(chat('nope')) + b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' + post(stream)
           + b'GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: wrong\r\n\r\n' + post(chat('s1'))
           + b'DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n')
    with connect(r) as s:
        s.sendall(raw)                                   # all six at once, before any answer
        reader = Reader(s)
        answers = [reader.answer() for dummy in range(6)]
    # a request without a body and with a wrong key is a 401 that keeps the connection
    assert [a[0] for a in answers] == [404, 200, 200, 401, 200, 405]
    assert json.loads(answers[0][2])['error']['code'] == 'model_not_found'
    assert json.loads(answers[1][2])['status'] == 'ok'
    assert answers[2][1]['content-type'].startswith('text/event-stream') and answers[2][2].endswith(b'data: [DONE]\n\n')
    assert json.loads(answers[4][2])['object'] == 'chat.completion'
    assert answers[5][1]['allow'] == 'GET, HEAD'
    assert json.loads(answers[5][2])['error']['type'] == 'invalid_request_error'


def test_expect_100_continue_and_other_expectations(stack):
    r = stack[1]
    body = chat('s1')
    with connect(r) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sExpect: 100-continue\r\n'
                  b'Content-Length: %d\r\n\r\n' % (KEY, len(body)))
        reader = Reader(s)
        assert reader.answer(head_only=True)[0] == 100   # before the body was sent
        s.sendall(body)
        assert reader.answer()[0] == 200
    with connect(r) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sExpect: \x80magic\r\nContent-Length: 2\r\n\r\n{}'
                  % KEY)
        status, dummy, answer = Reader(s).answer()
        assert status == 417 and b'magic' not in answer


def test_a_request_without_a_key_is_refused_on_its_head_and_its_body_never_read(stack):
    r = stack[1]
    big = 50 * 1024 * 1024
    for head in (b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n',
                 b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-key\r\n',
                 b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nx-api-key: \r\n'):
        with connect(r) as s:
            s.sendall(head + b'Content-Length: %d\r\n\r\n' % big)
            reader = Reader(s)
            status, headers, body = reader.answer()     # no 100 Continue: 401 at once, before any body
            assert status == 401 and json.loads(body)['error']['code'] == 'invalid_api_key', body
            assert headers['connection'] == 'close' and reader.closed()


def test_bodies_without_a_key_do_not_stay_in_the_router_s_memory(stack):
    """Four clients each send a 50 MB body without a key: the router answers 401 on the head and
    reads none of it (before: the whole body was buffered first, and RSS went from 31 MB to 327 MB
    and stayed there after the connections closed)."""
    r = stack[1]
    before = rss_kib(r.pid)
    chunk, total = b'x' * (1 << 20), 50
    socks = [connect(r) for dummy in range(4)]
    for s in socks:
        s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n' % (total * len(chunk)))
    for s in socks:
        s.settimeout(10)
        try:
            for _i in range(total):
                s.sendall(chunk)
        except OSError:
            pass                                       # closed by the router after its 401: as it should be
    peak = rss_kib(r.pid)
    for s in socks:
        s.close()
    assert peak - before < 20 * 1024, 'RSS grew from %d to %d KiB' % (before, peak)
    assert httpx.get(r.url + '/v1/models', headers=AUTH).status_code == 200


def test_head_http10_and_unknown_paths(stack):
    r = stack[1]
    with connect(r) as s:
        s.sendall(b'HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n')
        reader = Reader(s)
        status, headers, dummy = reader.answer(head_only=True)
        assert status == 200 and int(headers['content-length']) > 0
        status, dummy, body = reader.answer()          # the HEAD answer had no body: the next one follows
        assert status == 404 and json.loads(body)['error']['code'] == 'not_found'
    with connect(r) as s:                              # HTTP/1.0 without keep-alive: closed after one answer
        s.sendall(b'POST /v1/chat/completions HTTP/1.0\r\n%sContent-Length: %d\r\n\r\n%s'
                  % (KEY, len(chat('s1', stream=True)), chat('s1', stream=True)))
        data = b''
        while chunk := s.recv(65536):
            data += chunk
    head, dummy, body = data.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 200') and b'chunked' not in head.lower()
    assert body.endswith(b'data: [DONE]\n\n')


def rss_kib(pid):
    for line in Path('/proc/%d/status' % pid).read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


def test_slow_client_holds_back_the_backend(procs):
    """A client that does not read: the router stops reading the backend (pause_writing) instead
    of buffering the whole stream; once the client reads, everything arrives intact."""
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', chunks=60000)   # ~12 MB of events
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}, 'log_level': 'INFO'})
    assert httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH).status_code == 200
    before = rss_kib(r.pid)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)       # no receive-window autotuning
    s.connect(('127.0.0.1', r.port))
    s.sendall(post(chat('s1', stream=True)))
    time.sleep(3)                                                    # the client reads nothing
    stalled = rss_kib(r.pid)
    stats = sg.stats()
    s.settimeout(30)
    data = bytearray()
    while not data.endswith(b'data: [DONE]\n\n\r\n0\r\n\r\n'):
        chunk = s.recv(1 << 20)
        assert chunk, 'closed before the end of the stream'
        data += chunk
    s.close()
    # The router holds back what the client does not read: its memory did not grow by the stream.
    # (Whether the backend itself finished is not checked: the kernel's socket buffers between
    # backend and router autotune up to tcp_rmem's 32 MB here and may take the whole 12 MB.)
    assert stalled - before < 6 * 1024, (before, stalled, stats)   # not the stream's 12 MB
    assert data.count(b'data: ') == 60001


# -- client timeout (config client_timeout), 204, stream head ------------------------------------

TIMEOUT = 1.0          # the router's client_timeout in the tests below; its sweep runs every 0.2 s


@pytest.fixture
def slow(procs):
    """A router with client_timeout 1 s in front of a double that is slower than that on streams
    (1.5 s before the first chunk, 1.5 s between chunks; 2 chunks) and answers model 'empty' with
    204 and no body (a test-only option of the double)."""
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', chunks=2, chunk_delay=1.5,
                first_chunk_delay=1.5, no_content_model='empty')
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}, 'empty': {'backend': 'sg'}}, 'client_timeout': TIMEOUT})
    assert httpx.post(r.url + '/v1/chat/completions', content=chat('s1'), headers=AUTH).status_code == 200
    return sg, r


def trickle(sock, data, gap=0.2, limit=5.0):
    """Send data a byte at a time, gap seconds apart (less than the timeout: never idle that long),
    for at most limit seconds; the seconds after which the router closed the connection without
    sending anything, or None if it was still open."""
    start = time.monotonic()
    for byte in data:
        if time.monotonic() - start > limit:
            return None
        try:
            sock.sendall(bytes([byte]))
        except OSError:                  # reset: the router had closed it
            return time.monotonic() - start
        if select.select([sock], [], [], gap)[0]:
            try:
                got = sock.recv(65536)
            except OSError:
                got = b''
            assert got == b'', 'the router answered a trickling client: %r' % got[:100]
            return time.monotonic() - start
    return None


def test_idle_keep_alive_connection_is_closed_after_client_timeout(slow):
    r = slow[1]
    with connect(r) as s:
        s.sendall(post(chat('s1')))
        reader = Reader(s)
        assert reader.answer()[0] == 200
        start = time.monotonic()
        assert reader.closed(timeout=5)
        waited = time.monotonic() - start
    assert 0.8 * TIMEOUT <= waited < 3 * TIMEOUT, waited


def test_trickled_request_head_and_body_are_cut(slow):
    """One byte every 0.2 s never leaves the connection idle for the 1 s timeout; the head (or the
    body) is still not complete 1 s after it began, so the router closes the connection, without an
    answer, well before the trickle would have ended (~25 s) and without logging the request."""
    r = slow[1]
    head = b'GET /health HTTP/1.1\r\nHost: x\r\nX-Secret-Pad: %s\r\n\r\n' % (b'p' * 100)
    with connect(r) as s:
        cut = trickle(s, head)
    assert cut is not None, 'a trickled head was not cut within 5 s'
    assert 0.8 * TIMEOUT <= cut < 3 * TIMEOUT, cut
    body = chat('s1') + b' ' * 100
    with connect(r) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n' % (KEY, len(body)))
        cut = trickle(s, body)
    assert cut is not None, 'a trickled body was not cut within 5 s'
    assert 0.8 * TIMEOUT <= cut < 3 * TIMEOUT, cut
    log = r.log()
    assert 'Secret-Pad' not in log and 'ppppp' not in log and 'Traceback' not in log
    assert 'closed a client connection: request head not complete' in log
    assert 'closed a client connection: request body too slow' in log


def test_slow_stream_is_not_cut_by_the_client_timeout(slow):
    """A stream that takes ~3 s (1.5 s to its first chunk, 1.5 s between chunks: each gap longer
    than the 1 s client timeout) arrives whole, and the connection serves the next request."""
    r = slow[1]
    with connect(r) as s:
        start = time.monotonic()
        s.sendall(post(chat('s1', stream=True)))
        reader = Reader(s)
        status, headers, body = reader.answer()
        took = time.monotonic() - start
        assert status == 200 and headers['content-type'].startswith('text/event-stream')
        assert body.count(b'data: ') == 3 and body.endswith(b'data: [DONE]\n\n')
        assert took > 2.5 * TIMEOUT, took
        s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
        assert reader.answer()[0] == 200


def test_a_pipelined_request_gets_its_time_after_the_answer_before_it(slow):
    """The client pipelines half of a second head behind a ~3 s stream: the head began 3 s (three
    timeouts) before the stream ended, but the router was busy, not the client, so the client's
    time starts when that answer ends. The rest of the head, sent 0.5 s after the stream's end, is
    answered; the idle connection is then closed about one timeout after that answer."""
    r = slow[1]
    with connect(r) as s:
        s.sendall(post(chat('s1', stream=True)) + b'GET /health HTTP/1.1\r\n')
        reader = Reader(s)
        status, dummy, body = reader.answer()
        assert status == 200 and body.endswith(b'data: [DONE]\n\n')
        time.sleep(TIMEOUT / 2)
        s.sendall(b'Host: x\r\n\r\n')
        status, dummy, body = reader.answer()
        assert status == 200 and json.loads(body)['status']
        start = time.monotonic()
        assert reader.closed(timeout=5)
        assert 0.8 * TIMEOUT <= time.monotonic() - start < 3 * TIMEOUT


def test_204_from_the_backend_is_relayed_without_a_body(slow):
    """The double answers model 'empty' with 204 and no body or Content-Type (test-only): the
    client gets 204 without Content-Length, Transfer-Encoding, Content-Type or body (the router adds
    no header the backend did not send), and the connection stays usable."""
    sg, r = slow
    with connect(r) as s:
        empty = json.dumps({'model': 'empty', 'messages': []}).encode()
        s.sendall(post(empty))
        reader = Reader(s)
        status, headers, dummy = reader.answer(head_only=True)
        assert status == 204
        assert 'content-length' not in headers and 'transfer-encoding' not in headers
        assert 'content-type' not in headers
        assert 'connection' not in headers                 # keep-alive
        assert sg.stats()['last_body_sha256'] == hashlib.sha256(empty).hexdigest()
        s.sendall(post(chat('s1')))                          # a body after the 204 would break this answer
        status, dummy, body = reader.answer()
        assert status == 200 and json.loads(body)['object'] == 'chat.completion'
        assert reader.buf == b''


def test_stream_head_is_sent_before_a_slow_first_chunk(slow):
    """The backend sends its stream's head at once and its first chunk 1.5 s later: the client gets
    the status line and headers through the router within 0.5 s, the first chunk after 1.5 s."""
    r = slow[1]
    with connect(r) as s:
        start = time.monotonic()
        s.sendall(post(chat('s1', stream=True)))
        reader = Reader(s)
        status, headers, dummy = reader.answer(head_only=True)
        head_at = time.monotonic() - start
        assert status == 200 and headers['transfer-encoding'] == 'chunked'
        assert headers['content-type'].startswith('text/event-stream')
        assert reader.buf == b''                             # no chunk came with the head
        size = int(reader._until(b'\r\n'), 16)             # pylint: disable=protected-access
        first_at = time.monotonic() - start
        assert reader._exactly(size).startswith(b'data: ')  # pylint: disable=protected-access
    assert head_at < 0.5, head_at
    assert first_at >= 1.4, first_at


def assert_a_chat_is_served(r):
    """A chat request on a new raw connection gets its completion."""
    with connect(r) as s:
        s.sendall(post(chat('s1')))
        status, dummy, body = Reader(s).answer()
        assert status == 200 and json.loads(body)['object'] == 'chat.completion'


def test_open_file_limit_is_raised_to_the_hard_limit(procs):
    """Each client and each backend connection is a file descriptor, and systemd starts a service
    with a soft open-file limit of 1024. Started with a soft limit of 128, the router raises it to
    the hard limit and then holds 200 client connections open at once, each answered, and still
    proxies a request on a new backend connection while they are open."""
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 512, 'this test needs a hard open-file limit of at least 512, not %d' % hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))      # while the router starts: it inherits it
    try:
        r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                    'models': {'s1': {'backend': 'sg'}}})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path('/proc/%d/limits' % r.pid).read_text()
    line = next(x for x in limits.splitlines() if x.startswith('Max open files')).split()
    assert int(line[3]) == int(line[4]) == hard, line
    assert 'open-file limit %d' % hard in r.log()
    socks = []
    try:
        for dummy in range(200):
            s = connect(r)
            socks.append(s)
            s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
            assert Reader(s).answer()[0] == 200
        assert_a_chat_is_served(r)
    finally:
        for s in socks:
            s.close()


def test_client_connections_are_capped_below_the_open_file_limit(procs):
    """With 256 descriptors the router takes 192 clients (64 stay for backends, systemctl and its log).
    Before, 1,030 idle connections in a 1,024 limit made every client get EOF, and the router's own
    "Too many open files" was taken for a backend failure (502, a swap, the backend shown failed)."""
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    r = router({'backends': {'sg': {'kind': 'sglang', 'url': sg.url, 'key_env': 'SGLANG_KEY'}},
                'models': {'s1': {'backend': 'sg'}}, 'log_level': 'INFO'}, nofile=256)
    assert 'open-file limit 256 (192 client connections)' in r.log()
    socks = []
    try:
        for dummy in range(230):                       # idle clients without a key, beyond the cap
            s = connect(r)
            socks.append(s)
        for s in socks[192:]:                          # the 38 over the cap
            status, headers, body = Reader(s).answer()
            assert status == 503 and headers['retry-after'] == '5' and headers['connection'] == 'close'
            assert json.loads(body)['error']['code'] == 'too_many_connections'
        for s in socks[:192]:                          # the ones within the cap are served
            s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
            assert Reader(s).answer()[0] == 200
        for s in socks[:10]:
            s.close()
        time.sleep(0.2)
        assert_a_chat_is_served(r)                     # room again: served, the backend never blamed
    finally:
        for s in socks:
            s.close()
    health = httpx.get(r.url + '/health', headers=AUTH).json()
    assert health['backends']['sg']['state'] == 'ready' and health['backends']['sg']['last_error'] is None
    metrics = httpx.get(r.url + '/metrics', headers=AUTH).text
    assert 'llm_router_client_connections_refused_total 38' in metrics
