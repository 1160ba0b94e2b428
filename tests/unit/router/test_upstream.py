# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router's upstream HTTP/1.1 client (llm_router/upstream.py) against a scripted raw TCP server
on loopback: framing (content-length, chunked with extensions and trailers, close-delimited), 1xx,
keep-alive reuse, stale-connection retry and broken answers."""

import asyncio

import pytest

from llm_router import upstream


class Script:
    """A loopback server that answers each request on a connection with the next canned reply."""

    def __init__(self, replies, close_after=None):
        self.replies, self.close_after = list(replies), close_after
        self.requests, self.connections = [], 0

    async def handle(self, reader, writer):
        self.connections += 1
        served = 0
        try:
            while self.replies:
                head = await reader.readuntil(b'\r\n\r\n')
                length = int([l for l in head.split(b'\r\n') if l.lower().startswith(b'content-length')][0]
                             .split(b':')[1])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                if reply is None:                   # say nothing for a while
                    await asyncio.sleep(1)
                    continue
                for part in (reply if isinstance(reply, list) else [reply]):
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                served += 1
                if self.close_after and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def run(replies, scenario, close_after=None):
    async def main():
        script = Script(replies, close_after)
        server = await asyncio.start_server(script.handle, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        up = upstream.Upstream('http://127.0.0.1:%d' % port, connect_timeout=2)
        try:
            return await scenario(up), script
        finally:
            up.close()
            server.close()
    return asyncio.run(main())


async def fetch(up, body=b'{}'):
    answer = await up.request('POST', '/v1/x', {'x-api-key': 'k'}, body, timeout=5)
    try:
        return answer.status, answer.headers, await answer.read()
    finally:
        answer.release()


def test_content_length_and_keep_alive_reuse():
    ok = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'

    async def scenario(up):
        return [await fetch(up, b'{"n":%d}' % i) for i in range(3)]
    results, script = run([ok, ok, ok], scenario)
    assert [r[2] for r in results] == [b'{"a":1}'] * 3
    assert results[0][1]['content-type'] == 'application/json'
    assert script.connections == 1                                   # one connection, reused
    assert script.requests[2].endswith(b'\r\n\r\n{"n":2}')
    assert b'Content-Length: 7\r\n' in script.requests[0] and b'x-api-key: k\r\n' in script.requests[0]


def test_chunked_with_extensions_trailers_and_split_writes():
    reply = [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n',
             b'5;ext=1\r\nhello\r\n', b'1', b'0\r\n0123456789abcdef\r\n', b'6\r\n world\r\n',
             b'0\r\nX-Trailer: t\r\n\r\n']
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        answer = await up.request('POST', '/', {}, b'', timeout=5)
        pieces = [c async for c in answer.chunks()]
        answer.release()
        return pieces, await fetch(up)
    (pieces, after), script = run([reply, ok], scenario)
    assert pieces == [b'hello', b'0123456789abcdef', b' world']
    assert after[2] == b'ok' and script.connections == 1            # still reusable after trailers


def test_interim_1xx_is_skipped_and_204_has_no_body():
    replies = [b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew',
               b'HTTP/1.1 204 No Content\r\n\r\n']

    async def scenario(up):
        return [await fetch(up), await fetch(up)]
    results = run(replies, scenario)[0]
    assert (results[0][0], results[0][2]) == (201, b'new')
    assert (results[1][0], results[1][2]) == (204, b'')


def test_close_delimited_body_is_read_to_eof_and_not_reused():
    reply = b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end'
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        return [await fetch(up), await fetch(up)]
    results, script = run([reply, ok], scenario, close_after=1)
    assert results[0][2] == b'until the end' and results[1][2] == b'ok'
    assert script.connections == 2


def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one():
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        first = await fetch(up)
        await asyncio.sleep(0.1)             # the server closed that connection after one answer
        return first, await fetch(up)
    (first, second), script = run([ok, ok], scenario, close_after=1)
    assert first[2] == second[2] == b'ok'
    assert script.connections == 2 and len(script.requests) == 2


@pytest.mark.parametrize('reply,what', [
    (b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort', 'closed 5 bytes before the end'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX', 'broken answer: Expected LF after chunk data'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'broken answer: Invalid character in chunk size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n', 'before the end of the answer'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n', "unsupported transfer-encoding 'gzip'"),
    (b'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'broken answer: Invalid character in Content-Length'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok', 'broken answer: Duplicate Content-Length'),
    (b'SSH-2.0-OpenSSH\r\n\r\n', 'broken answer: Expected HTTP/'),
    (b'HTTP/1.1 200 OK\r\n Folded: header\r\n\r\n', 'broken answer: Unexpected space after start line'),
    (b'HTTP/1.1 200 OK\r\nX-Big: ' + b'a' * 70000 + b'\r\n\r\n', 'answer head larger than 65536 bytes'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ' + b'a' * 70000 + b'\r\n\r\n',
     'trailers larger than 65536 bytes'),
    (b'HTTP/1.1 200 OK\r\n', 'connection closed before the end of the answer'),
    (b'', 'connection closed without an answer'),
])
def test_broken_answers_raise_upstream_error(reply, what):
    async def scenario(up):
        with pytest.raises(upstream.UpstreamError) as e:
            await fetch(up)
        return str(e.value)
    message = run([reply], scenario, close_after=1)[0]
    assert what in message


def test_a_large_whole_answer_is_read_to_its_end():
    body = bytes(range(256)) * 20000                     # 5 MB: over the stream high-water mark
    reply = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body)
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        return [await fetch(up), await fetch(up)]
    results, script = run([reply, ok], scenario)
    assert results[0][2] == body and results[1][2] == b'ok'
    assert script.connections == 1


def test_a_slow_reader_of_a_stream_pauses_the_backend_and_then_gets_every_byte():
    piece = b'x' * 65536
    reply = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + \
        b'10000\r\n%s\r\n' % piece * 64 + b'0\r\n\r\n'                # 4 MB, sent in one write
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        answer = await up.request('POST', '/', {}, b'', timeout=5)
        await asyncio.sleep(0.2)                 # the relay is slow to start taking the body, too
        sizes = []
        async for data in answer.chunks():
            sizes.append(len(data))
            await asyncio.sleep(0.2 if len(sizes) == 1 else 0)   # the client is slow at first
        answer.release()
        return sizes, await fetch(up)
    (sizes, after), script = run([reply, ok], scenario)
    assert sum(sizes) == 64 * 65536
    assert max(sizes) <= (1 << 20) + 256 * 1024               # held: the high-water mark plus one read
    assert after[2] == b'ok' and script.connections == 1     # resumed and reused after the pause


def test_bytes_after_the_answer_make_the_connection_unusable():
    reply = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno'
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

    async def scenario(up):
        return [await fetch(up), await fetch(up)]
    results, script = run([reply, ok], scenario)
    assert [r[2] for r in results] == [b'ok', b'ok']
    assert script.connections == 2                            # the second request went on a fresh one


def test_silence_inside_a_body_ends_the_answer():
    reply = [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n']

    async def scenario(up):
        answer = await up.request('POST', '/', {}, b'', timeout=0.3)
        pieces = []
        with pytest.raises(upstream.UpstreamError, match='no data for 0.3 s'):
            async for data in answer.chunks():
                pieces.append(data)
        answer.release()
        return pieces
    assert run([reply, None], scenario)[0] == [b'hi']


def test_connection_refused_and_idle_pool_closed():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        up = upstream.Upstream('http://127.0.0.1:%d' % port, connect_timeout=2)
        with pytest.raises(upstream.UpstreamError, match='cannot connect'):
            await up.request('GET', '/health', {}, timeout=2)
    asyncio.run(main())


def test_no_answer_within_timeout():
    async def scenario(up):
        with pytest.raises(upstream.UpstreamError, match='no answer within 0.2 s'):
            await up.request('POST', '/', {}, b'{}', timeout=0.2)
        return True
    assert run([None], scenario)[0]


def test_upstream_url_forms():
    assert (upstream.Upstream('http://127.0.0.1:5000', 1).port, upstream.Upstream('https://h.example', 1).port) == (5000, 443)
    v6 = upstream.Upstream('http://[::1]:8080', 1)
    assert (v6.host, v6.port, v6.hostheader) == ('::1', 8080, b'[::1]:8080')
