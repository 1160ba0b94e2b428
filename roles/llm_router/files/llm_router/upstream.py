# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Upstream HTTP/1.1 client (router -> backends).

Small on purpose: it costs a fraction of aiohttp's client per request (numbers in docs/router.md).
It speaks only what the router needs: one request at a time per connection, keep-alive, request
bodies always sent with Content-Length, and answers framed by Content-Length, chunked
transfer-encoding or connection close (RFC 9112 section 6.3). Anything else is an UpstreamError.
Each connection is an asyncio.Protocol (Link) whose answers llhttp parses (httptools, as for the
server side): the body arrives with chunk framing removed, and nothing runs per read but the
parser's callbacks. A read timeout is one timer per answer, re-armed only when it fires early.
"""

import asyncio
import errno
import ssl

import httptools


class UpstreamError(Exception):
    """The backend could not be reached or broke the HTTP exchange."""


class RouterOverloaded(UpstreamError):
    """The router itself is out of a resource (file descriptors, memory) for a backend connection:
    never the backend's fault, so it is not marked failed, swapped or backed off for it."""


class _Stale(Exception):
    """A reused keep-alive connection the backend had closed: the request is sent again fresh."""


NO_BODY = frozenset((204, 304))
_OWN_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_MAX_HEAD = 64 * 1024
_HIGH_WATER = 1 << 20              # body bytes held for a slow client before the backend is paused


class Answer:
    """One backend answer: ``status`` and ``headers`` (lower-case names) once its head arrived,
    then the body through read() or chunks(), once. ``length``: the Content-Length (0 when there is
    no body), None for chunked or close-delimited answers."""

    def __init__(self, link, timeout):
        self.link, self.timeout = link, timeout
        self.status, self.headers, self.length = 0, {}, None
        self.parts, self.held = [], 0  # body pieces not taken yet, and their size
        self.complete = False          # the whole answer arrived
        self.error = None              # an UpstreamError that ends this answer
        self.last = False              # the piece chunks() yields now is the last one
        self.heard = False             # any byte of this answer arrived
        self.whole = False             # taken by read(): never paused (else paused at 1 MiB held)
        self.waiter = None
        loop = link.loop
        self.seen = loop.time()        # when bytes last arrived
        self.timer = loop.call_at(self.seen + timeout, self._check_timeout)

    def wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error):
        if self.error is None and not self.complete:
            self.error = error
            self.link.transport.close()
        self.wake()

    def _check_timeout(self):
        if self.complete or self.error is not None:
            return
        due = self.seen + self.timeout
        if self.link.loop.time() < due:
            self.timer = self.link.loop.call_at(due, self._check_timeout)
        elif self.status:
            self.fail(UpstreamError('no data for %g s' % self.timeout))
        else:
            self.fail(UpstreamError('no answer within %g s' % self.timeout))

    async def _wait(self):
        self.waiter = self.link.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def head(self):
        while not self.status:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self

    async def read(self):
        self.whole = True
        self.link.resume()
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._wait()
        parts, self.parts = self.parts, []
        self.release()
        return parts[0] if len(parts) == 1 else b''.join(parts)

    async def chunks(self):
        """Yield the body as it arrives; what arrived together comes out as one piece (``last`` is
        set before the final one). The connection goes back to the pool after the last piece."""
        link = self.link
        while True:
            if self.parts:
                parts, self.parts, self.held = self.parts, [], 0
                link.resume()
                self.last = self.complete
                yield parts[0] if len(parts) == 1 else b''.join(parts)
            elif self.complete:
                break
            elif self.error is not None:
                raise self.error
            else:
                await self._wait()
        self.release()

    def release(self):
        """Back to the pool when the answer arrived whole, else the connection is closed."""
        link = self.link
        if link is None:
            return
        self.link = None
        self.timer.cancel()
        if link.answer is self:
            link.answer = None
        if self.complete and link.reusable and not link.closed and not link.paused:
            link.upstream.idle.append(link)
        else:
            link.transport.close()


class Link(asyncio.Protocol):
    """One keep-alive connection to a backend; parses the answer to the request in flight."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer = None             # the answer being received
        self.closed = self.paused = self.reused = self.chunked = False
        self.reusable = False          # the current answer leaves the connection open
        self.received = 0              # body bytes of the current answer
        self.fed = 0                   # bytes fed while the current answer's head was incomplete
        self.head_size = 0             # header (then trailer) bytes of the current answer

    async def exchange(self, data, timeout, reused):
        """Send one request; return its Answer once the head arrived (else the connection is closed).
        reused: the connection served an answer before (a close without a byte is then _Stale)."""
        self.reused = reused
        self.answer = answer = Answer(self, timeout)
        self.fed = self.head_size = 0
        self.transport.write(data)
        try:
            return await answer.head()
        except BaseException:
            answer.release()
            raise

    def resume(self):
        """Read again after a pause for a slow consumer."""
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        a = self.answer
        if a is None or a.complete:    # bytes nobody asked for: the connection is not trusted again
            self.reusable = False
            self.transport.close()
            return
        a.heard, a.seen = True, self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self.reusable = False
            a.fail(e.__context__ if isinstance(e.__context__, UpstreamError) else UpstreamError('broken answer'))
            return
        except httptools.HttpParserError as e:
            self.reusable = False
            a.fail(UpstreamError('broken answer: %s' % e))
            return
        if not a.status:               # the head is still incomplete: bounded
            self.fed += len(data)
            if self.fed > _MAX_HEAD:
                self.reusable = False
                a.fail(UpstreamError('answer head larger than %d bytes' % _MAX_HEAD))

    def connection_lost(self, exc):
        self.closed = True
        a = self.answer
        if a is None or a.complete or a.error is not None:
            return
        if a.status and a.length is None and not self.chunked:
            a.complete = True          # a close-delimited body ends here
            a.wake()
        elif not a.heard:
            a.fail(_Stale() if self.reused else UpstreamError('connection closed without an answer'))
        elif a.length is not None:
            a.fail(UpstreamError('connection closed %d bytes before the end of the body'
                                 % (a.length - self.received)))
        else:
            a.fail(UpstreamError('connection closed before the end of the answer'))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self):
        a = self.answer
        if a.status:                   # a second answer to one request
            raise UpstreamError('more than one answer to one request')
        a.headers, self.chunked, self.received = {}, False, 0

    def on_header(self, name, value):
        a = self.answer
        self.head_size += len(name) + len(value)
        if self.head_size > _MAX_HEAD:
            raise UpstreamError('%s larger than %d bytes' % ('trailers' if a.status else 'answer head', _MAX_HEAD))
        if a.status:                   # a trailer: dropped
            return
        headers = a.headers
        name, value = name.decode('latin-1').lower(), value.decode('latin-1')
        headers[name] = headers[name] + ', ' + value if name in headers else value

    def on_headers_complete(self):
        a, parser = self.answer, self.parser
        status = parser.get_status_code()
        if status < 200:
            return                     # 1xx interim answers are skipped
        te = a.headers.get('transfer-encoding')
        if status in NO_BODY:
            a.length = 0
        elif te is not None:
            if te.rsplit(',', 1)[-1].strip().lower() != 'chunked':
                raise UpstreamError('unsupported transfer-encoding %r' % te)
            self.chunked = True
        elif 'content-length' in a.headers:
            a.length = int(a.headers['content-length'])      # llhttp checked it
        self.reusable = (a.length is not None or self.chunked) and parser.should_keep_alive()
        a.status, self.head_size = status, 0
        a.wake()

    def on_body(self, data):
        a = self.answer
        self.received += len(data)
        a.parts.append(data)
        a.held += len(data)
        if a.held > _HIGH_WATER and not a.whole and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        a.wake()

    def on_message_complete(self):
        a = self.answer
        if not a.status:               # the end of a 1xx
            return
        a.complete = True
        a.wake()


class Upstream:
    """Keep-alive connections to one backend (idle ones are reused, newest first)."""

    def __init__(self, url, connect_timeout):
        scheme, dummy, hostport = url.partition('://')
        host, dummy, port = hostport.rpartition(':') if ':' in hostport.rsplit(']', 1)[-1] else (hostport, '', '')
        self.host = host.strip('[]')
        self.port = int(port) if port else (443 if scheme == 'https' else 80)
        self.ssl = ssl.create_default_context() if scheme == 'https' else None
        self.hostheader = hostport.encode('ascii')
        self.connect_timeout = connect_timeout
        self.idle = []

    def close(self):
        while self.idle:
            self.idle.pop().transport.close()

    async def request(self, method, path, headers, body=b'', timeout=600.0):
        """Send one request; return an Answer once its status line and headers arrived."""
        head = [b'%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n'
                % (method.encode(), path.encode(), self.hostheader, len(body))]
        head += [b'%s: %s\r\n' % (k.encode('latin-1'), v.encode('utf-8', 'surrogateescape'))
                 for k, v in headers.items()]   # values as the client's bytes
        data = b''.join(head) + b'\r\n' + body
        while self.idle:                  # a reused connection the backend closed meanwhile: retry fresh
            link = self.idle.pop()
            if link.closed:
                continue
            try:
                return await link.exchange(data, timeout, reused=True)
            except _Stale:
                pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                dummy, link = await loop.create_connection(lambda: Link(self), self.host, self.port, ssl=self.ssl)
        except TimeoutError:
            raise UpstreamError('connect timed out after %g s' % self.connect_timeout) from None
        except OSError as e:
            if e.errno in _OWN_ERRNOS:
                raise RouterOverloaded('the router cannot open a connection: %s' % e.strerror) from None
            raise UpstreamError('cannot connect: %s' % (e.strerror or type(e).__name__)) from None
        return await link.exchange(data, timeout, reused=False)
