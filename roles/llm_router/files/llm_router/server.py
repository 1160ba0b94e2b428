# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP/1.1 server (clients -> router).

An asyncio.Protocol per connection; requests are parsed by httptools (the llhttp parser, the one
Node.js and aiohttp use), so the router never splits request bytes itself. What llhttp enforces:
the request line, header syntax, Content-Length and chunked framing (both at once is an error),
the HTTP version. What this server adds on top:

* Limits: request head (target + headers) <= 64 KiB and <= 100 header lines (else 431), body
  <= 256 MiB (else 413, checked on Content-Length before reading, and while reading a chunked
  body). The request target must be origin-form ("/..." of visible ASCII), else 400.
* Any framing error is a 400 with "Connection: close", after the answers to the requests that
  came before it on the connection; nothing of the request is logged (it may hold a key).
* Sequencing: one request at a time per connection. Pipelined requests are parsed as they arrive
  and queued (reading pauses once 2 wait, so at most a few bodies are held); each is answered
  only after the one before it, so answers go out in request order.
* Answers: with Content-Length, head and body in one write; streams (event-stream, or any answer
  without Content-Length from the backend) with chunked transfer-encoding, one write per chunk as
  it arrives (pieces that arrived together in one write; the head goes out at once, or together
  with the first chunk if that had already arrived); HTTP/1.0 clients get the stream until close.
  When the client reads slowly the transport's buffer fills, pause_writing() is called, and the
  relay waits for resume_writing() before the next chunk: memory stays bounded.
* Expect: 100-continue is answered before the body is read (when the request is next in line);
  any other expectation is a 417 that does not echo the value.
* A client that disconnects cancels the task serving its request: relay() then closes the
  upstream connection, so the backend sees the disconnect too.
* Client timeout (config ``client_timeout``, default 75 s; T below). While no answer is being
  prepared or sent on a connection, the router is waiting for its client, and a client that keeps
  it waiting too long is closed without an answer (nothing of its request is logged):
  - idle: nothing received for T (an idle keep-alive connection, or a client stuck mid-request);
  - head: the request line and headers not complete T after the request's first byte
    (slow-loris: a head trickled a byte at a time is cut, however steady the trickle);
  - body: the body not complete T plus 1 s per 64 KiB of body received after the head was
    complete (a body must average 64 KiB/s after a grace of T; 256 MiB at that rate is ~68 min).
  The clocks of a request that began while an earlier answer was still being sent start when
  that answer ended (reading may have been paused meanwhile), and Expect: 100-continue bodies
  are timed from the 100. Answers are never cut by this: a stream that is slow because the
  backend is slow is the backend's business (read_timeout). The sweep runs every T/5, 15 s at
  the longest, so a cut comes at most that long after its due time. No 408 is sent (the client
  may not be reading); an answer a cut client left unread is dropped (transport.abort()).
* HEAD is answered for the GET endpoints; unknown paths get 404, other methods 405 (with Allow).
"""

import asyncio
import collections
import email.utils
import http
import json
import re
import time

import httptools

from .upstream import NO_BODY

MAX_BODY = 256 * 1024 * 1024
MAX_HEAD = 64 * 1024
MAX_HEADER_LINES = 100
MAX_QUEUED = 2
MIN_BODY_RATE = 64 * 1024              # bytes/s a request body must average after client_timeout
_TARGET_RE = re.compile(rb'/[!-~]*\Z')
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_date = [0, b'']


def _date_header():
    """The Date header line, formatted once per second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, b'Date: %s\r\n' % email.utils.formatdate(now, usegmt=True).encode()
    return _date[1]


class Reply:
    """A whole answer: status, body bytes, content type (None: no Content-Type header), extra
    (name, value) headers."""
    __slots__ = ('status', 'body', 'ctype', 'headers')

    def __init__(self, status, body, ctype, headers=()):
        self.status, self.body, self.ctype, self.headers = status, body, ctype, headers


def json_reply(obj, status=200, headers=()):
    return Reply(status, json.dumps(obj).encode(), 'application/json; charset=utf-8', headers)


def openai_error(status, message, type_, code=None, param=None, retry_after=None):
    body = {'error': {'message': message, 'type': type_, 'param': param, 'code': code}}
    return json_reply(body, status, (('Retry-After', str(retry_after)),) if retry_after else ())


def not_found():
    return openai_error(404, 'Not found', 'invalid_request_error', code='not_found')


class Refused(Exception):
    """A request the server answers itself (status, message, OpenAI error code) and then closes the
    connection."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Request:
    __slots__ = ('conn', 'method', 'target', 'path', 'query', 'headers', 'lines', 'body', 'parts', 'size',
                 'keep_alive', 'http10', 'refused', 'expect', 'client', 'key_name')

    def __init__(self, conn):
        self.conn = conn
        self.method = self.path = self.query = ''
        self.target = b''
        self.headers = {}                # lower-case name -> first value (non-UTF-8 bytes as surrogates)
        self.lines = 0                   # header lines received (a repeated name counts each time)
        self.body = b''
        self.parts = []
        self.size = 0
        self.keep_alive = True
        self.http10 = False
        self.refused = None              # (status, message, code): answered by the server itself
        self.expect = False              # 100-continue still owed
        self.client, self.key_name = None, ''   # auth.client_of(): Client (False: refused), the key's name


class Stream:
    """A chunked answer being relayed; write() waits while the client's transport buffer is full."""

    def __init__(self, conn, req, status, ctype):
        self.conn, self.req = conn, req
        self.chunked = not req.http10
        if not self.chunked:
            req.keep_alive = False       # HTTP/1.0: the end of the stream is the connection close
        self.head = conn.head(req, status, ctype,
                              b'Transfer-Encoding: chunked\r\n' if self.chunked else b'')
        self.started = False
        # The head goes out with the first chunk if that has already arrived (the relay reaches
        # write() before the loop turns), else on its own at the next turn of the loop.
        asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self):
        if not self.started and not self.conn.closed:
            self.started = True
            self.conn.transport.write(self.head)

    def _frame(self, data):
        if self.chunked and data:
            data = b'%x\r\n%s\r\n' % (len(data), data)
        if not self.started:
            data, self.started = self.head + data, True
        return data

    async def write(self, data):
        """Relay one piece now; wait while the client's transport buffer is over its high-water mark."""
        conn = self.conn
        if conn.closed:
            raise ConnectionResetError('client gone')
        if data:
            conn.transport.write(self._frame(data))
        if conn.paused:
            await conn.drain()

    def end(self, data=b''):
        """The last piece (possibly empty) and the end of the answer, in one write."""
        data = self._frame(data) + (b'0\r\n\r\n' if self.chunked else b'')
        if not self.conn.closed:
            self.conn.transport.write(data)
        self.conn.answered = True


class Connection(asyncio.Protocol):
    """One client connection (TCP or the admin unix socket)."""

    def __init__(self, app, admin):
        self.app, self.admin = app, admin
        self.transport = None
        self.parser = None
        self.req = None                  # the request being parsed
        self.last = None                 # the request parsed last
        self.queue = collections.deque()  # parsed requests waiting for their turn
        self.task = None                 # serves the queue, one request at a time
        self.closed = self.paused = self.reading_paused = False
        self.answered = False
        self.waiter = None
        self.last_active = 0.0           # when the client's last bytes arrived (or its last answer ended)
        self.deadline = 0.0              # self.req's head (or body, plus MIN_BODY_RATE credit) is due by then

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.last_active = time.monotonic()
        self.app.connections.add(self)
        if self.app.stopping:
            transport.close()

    def connection_lost(self, exc):
        self.closed = True
        self.app.connections.discard(self)
        self.parser = self.req = None    # parser <-> connection: else a half-read body waits for the GC
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()
        self._wake()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._wake()

    def _wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def drain(self):
        while self.paused and not self.closed:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.closed:
            raise ConnectionResetError('client gone')

    def data_received(self, data):
        if self.parser is None:
            return                       # after a refused request: the rest is not read
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__        # what the callback raised
            if isinstance(cause, Refused):
                self._refuse(cause.status, cause.message, cause.code)
            else:
                self._refuse(400, 'Bad request')
        except httptools.HttpParserUpgrade:
            if self.req is not None:     # CONNECT and friends, never complete
                self._refuse(400, 'Bad request')
            else:                        # Upgrade: answered as plain HTTP, then the connection closes
                self.parser = None
                self.last.keep_alive = False
        except httptools.HttpParserError:
            self._refuse(400, 'Malformed HTTP request')

    def _refuse(self, status, message, code=None):
        """Answer (in turn) with an error, then close; nothing more is read from this client."""
        req = self.req or Request(self)
        self.req, self.parser = None, None
        req.refused, req.keep_alive = (status, message, code), False
        req.parts = []                   # a body read so far is dropped at once
        self.transport.pause_reading()
        self._enqueue(req)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self):
        self.req = Request(self)
        self.deadline = self.last_active + self.app.cfg.client_timeout   # for the head

    def on_url(self, url):
        req = self.req
        req.target += url
        req.size += len(url)
        if req.size > MAX_HEAD:
            raise Refused(414, 'Request target too long')

    def on_header(self, name, value):
        req = self.req
        req.size += len(name) + len(value)
        req.lines += 1
        if req.size > MAX_HEAD or req.lines > MAX_HEADER_LINES:
            raise Refused(431, 'Request header fields too large')
        name = name.decode('latin-1').lower()
        if name not in req.headers:
            req.headers[name] = value.decode('utf-8', 'surrogateescape')

    def on_headers_complete(self):
        req, parser = self.req, self.parser
        if _TARGET_RE.match(req.target) is None:
            raise Refused(400, 'Bad request target')
        req.method = parser.get_method().decode('ascii')
        path, dummy, query = req.target.decode('ascii').partition('?')
        req.path, req.query, req.target = path, query, req.target.decode('ascii')
        req.keep_alive = parser.should_keep_alive()
        req.http10 = parser.get_http_version() == '1.0'
        req.size = 0
        # A body is read only after the key (refused: 401 and close, no 100 Continue, nothing buffered).
        self.app.head_check(self, req)
        self.deadline = self.last_active + self.app.cfg.client_timeout   # for the body
        length = req.headers.get('content-length')
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise Refused(413, 'Request body larger than %d bytes' % MAX_BODY)
        expect = req.headers.get('expect')
        if expect is not None:
            if expect.lower() != '100-continue':
                raise Refused(417, 'Unsupported Expect header')
            req.expect = not req.http10
            self._continue()

    def on_body(self, data):
        req = self.req
        req.size += len(data)
        if req.size > MAX_BODY:
            raise Refused(413, 'Request body larger than %d bytes' % MAX_BODY)
        req.parts.append(data)

    def on_message_complete(self):
        req, self.req = self.req, None
        if req.parts:
            req.body = req.parts[0] if len(req.parts) == 1 else b''.join(req.parts)
            req.parts = None
        self._enqueue(req)

    # -- serving, one request at a time -------------------------------------------------------

    def _continue(self):
        """Send '100 Continue' to the request being parsed once it is next in line."""
        req = self.req
        if req is not None and req.expect and self.task is None and not self.queue:
            req.expect = False
            self.transport.write(b'HTTP/1.1 100 Continue\r\n\r\n')

    def _enqueue(self, req):
        self.last = req
        if self.task is None:
            self.task = asyncio.ensure_future(self._serve(req))
        else:
            self.queue.append(req)
            if len(self.queue) >= MAX_QUEUED and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()

    async def _serve(self, req):
        try:
            while True:
                await self.app.respond(self, req)
                if not req.keep_alive or self.app.stopping:
                    self.parser = None
                    self.transport.close()
                    return
                if not self.queue:
                    return
                req = self.queue.popleft()
                if self.reading_paused and not self.queue and self.parser is not None:
                    self.reading_paused = False
                    self.transport.resume_reading()
        finally:
            self.task = None
            self.last_active = time.monotonic()
            if self.req is not None:     # begun meanwhile: its client's time starts now
                self.deadline = self.last_active + self.app.cfg.client_timeout
            if not self.closed:
                self._continue()

    def overdue(self, now):
        """Why the client has kept the router waiting too long ('' if it has not): see the
        module docstring (Client timeout). Only asked while no answer is being prepared or sent."""
        if self.last_active < now - self.app.cfg.client_timeout:
            return 'nothing received' if self.req is None else 'request stalled'
        req = self.req
        if req is None:
            return ''
        if not req.method:               # set once the head is complete
            return 'request head not complete' if now > self.deadline else ''
        return 'request body too slow' if now > self.deadline + req.size / MIN_BODY_RATE else ''

    def cut(self):
        """Close without an answer; an answer the client left unread is dropped."""
        self.parser = None
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def head(self, req, status, ctype, extra=b''):
        """Status line and headers of an answer to req (no Content-Type when ctype is None)."""
        return b'HTTP/1.1 %d %s\r\n%s%s%s%s\r\n' % (
            status, _REASONS.get(status, b'Unknown'),
            b'' if ctype is None else b'Content-Type: %s\r\n' % ctype.encode('latin-1', 'replace'),
            _date_header(), extra, b'' if req.keep_alive else b'Connection: close\r\n')

    def send(self, req, reply):
        """A whole answer in one write (204 and 304 carry neither body nor Content-Length)."""
        body = reply.body if reply.status not in NO_BODY else b''
        extra = b'Content-Length: %d\r\n' % len(body) if reply.status not in NO_BODY else b''
        for name, value in reply.headers:
            extra += b'%s: %s\r\n' % (name.encode('latin-1'), value.encode('latin-1'))
        if req.http10 and req.keep_alive:
            extra += b'Connection: keep-alive\r\n'
        head = self.head(req, reply.status, reply.ctype, extra)
        if not self.closed:
            self.transport.write(head if req.method == 'HEAD' else head + body)
        self.answered = True

    def stream(self, req, status, ctype):
        return Stream(self, req, status, ctype)
