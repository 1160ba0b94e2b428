# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpufleet.llm router: one OpenAI-compatible endpoint in front of several inference backends.

Read it top to bottom: config -> auth -> metrics -> upstream HTTP client -> backend lifecycle
-> proxy -> endpoints -> admin endpoints -> HTTP server.

* Config comes from a YAML file (``--config``); every secret comes from the environment
  (the unit's EnvironmentFile): client keys in ``LLM_ROUTER_CLIENT_API_KEYS`` (comma separated,
  current keys plus grace-window old keys), each backend's key in the variable its ``key_env`` names.
* Request and response bodies pass through byte for byte; answers are relayed as they arrive.
* With ``swap_policy: exclusive`` (default) one backend holds the GPU at a time: a request for a
  model whose backend is not active drains the in-flight requests of the backend(s) it must stop,
  stops them (``systemctl stop``), starts its own (``systemctl start``), loads the model through
  TabbyAPI's admin API when needed, and waits until the backend accepts the router's key.
* Readiness is read by ``_backend_probe`` (shipped next to this file), the same code the
  ``gpufleet.llm.wait_for_backend`` module uses.
* Clients are served by the small HTTP/1.1 server at the end of this file (an asyncio.Protocol
  with httptools' llhttp parser); backends are reached through the small keep-alive HTTP/1.1
  client below (one connection pool per backend, for the whole process): see docs/router.md,
  "HTTP stack", for the measurements behind both.
* Planned maintenance (docs/router.md, "Admin socket"): on a unix socket only (``admin_socket``),
  a backend can be DRAINED (new requests for its models get 503 with Retry-After, in-flight ones
  finish) and RESUMED; ``--reload``, POST /admin/reload or SIGHUP re-read the keys from
  ``key_file`` without dropping a connection.
"""

import argparse
import asyncio
import bisect
import collections
import email.utils
import hmac
import http
import json
import logging
import math
import os
import re
import resource
import signal
import socket
import ssl
import stat
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

import httptools
import uvloop
import yaml

import _backend_probe as probe

log = logging.getLogger('llm_router')
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

CLIENT_KEYS_ENV = 'LLM_ROUTER_CLIENT_API_KEYS'
KINDS = tuple(sorted(probe.PROFILES))           # tabbyapi, llamacpp, sglang, vllm, openai
POLICIES = ('exclusive', 'shared')
_UNIT_RE = re.compile(r'^[A-Za-z0-9:_.\\@-]+\.service$')
_ENV_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


class ConfigError(Exception):
    """A config problem; the message names the field and never contains a secret."""


@dataclass
class Backend:
    name: str
    kind: str
    url: str                       # base URL, no trailing slash
    unit: str | None               # systemd unit; None = always running, never started/stopped
    key_env: str | None
    key: str = field(default='', repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 600.0    # longest silence between two bytes of an answer
    # Run-time state, owned by the Switchboard.
    state: str = 'unknown'         # unknown | starting | ready | stopped | failed
    drained: bool = False          # admin drain: new requests get 503 + Retry-After, no swap touches it
    resume_pending: bool = False   # a resume found the router's key refused: resumed by the next key reload
    loaded: str | None = None      # model id the backend reported (TabbyAPI: what we loaded)
    last_error: str = ''
    inflight: int = 0
    idle: asyncio.Event | None = None
    upstream: 'Upstream | None' = None   # this backend's connection pool


@dataclass
class Model:
    name: str                      # what clients send
    backend: Backend
    backend_model: str             # the backend's own id (TabbyAPI: the model_dir entry to load)


@dataclass
class Config:
    host: str
    port: int
    backends: dict
    models: dict
    client_keys: list = field(repr=False)
    swap_policy: str = 'exclusive'
    readiness_timeout: float = 300.0
    drain_timeout: float = 300.0
    shutdown_timeout: float = 30.0
    systemctl: list = field(default_factory=lambda: ['/usr/bin/systemctl'])
    log_level: str = 'INFO'
    admin_socket: str | None = None    # unix socket of the admin endpoints (drain, resume, reload)
    key_file: str | None = None        # NAME="value" lines read at start and at every reload
    retry_after: int = 5               # Retry-After (seconds) of the 503 for a drained backend
    client_timeout: float = 75.0       # seconds a client may keep the router waiting (see class Connection)


def _get(mapping, key, where, kind, default=None, required=False):
    """One typed field of a mapping; the error names ``where.key``."""
    if key not in mapping or mapping[key] is None:
        if required:
            raise ConfigError('%s.%s: required' % (where, key) if where else '%s: required' % key)
        return default
    value = mapping[key]
    name = '%s.%s' % (where, key) if where else key
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError('%s: expected %s, got %s' % (name, kind.__name__, type(value).__name__))
    if kind is float and not math.isfinite(value):
        raise ConfigError('%s: must be a finite number, got %s' % (name, value))
    if kind is float and value <= 0:
        raise ConfigError('%s: must be greater than 0' % name)
    return value


def _show(key):
    """A YAML key as it goes into a one-line message (keys may be of any type, or hold newlines)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() else repr(key)


def _no_unknown(mapping, allowed, where):
    unknown = sorted(set(mapping) - set(allowed), key=str)
    if unknown:
        raise ConfigError('%s: unknown field(s) %s' % (where or 'config', ', '.join(map(_show, unknown))))


def parse_config(data, environ):
    """Check a parsed YAML document and the environment; return a Config or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError('config: expected a mapping at the top level')
    _no_unknown(data, ('listen', 'backends', 'models', 'swap_policy', 'readiness_timeout',
                       'drain_timeout', 'shutdown_timeout', 'systemctl', 'log_level',
                       'admin_socket', 'key_file', 'retry_after', 'client_timeout'), '')
    listen = _get(data, 'listen', '', dict, {})
    _no_unknown(listen, ('host', 'port'), 'listen')
    host = _get(listen, 'host', 'listen', str, '127.0.0.1')
    port = _get(listen, 'port', 'listen', int, 4000)
    if not 0 < port < 65536:
        raise ConfigError('listen.port: must be 1-65535, got %d' % port)

    backends = {}
    raw_backends = _get(data, 'backends', '', dict, required=True)
    if not raw_backends:
        raise ConfigError('backends: at least one backend is required')
    for name, spec in raw_backends.items():
        where = 'backends.%s' % _show(name)
        if not isinstance(spec, dict):
            raise ConfigError('%s: expected a mapping' % where)
        _no_unknown(spec, ('kind', 'url', 'unit', 'key_env', 'connect_timeout', 'read_timeout'), where)
        kind = _get(spec, 'kind', where, str, required=True)
        if kind not in KINDS:
            raise ConfigError('%s.kind: must be one of %s, got %r' % (where, ', '.join(KINDS), kind))
        url = _get(spec, 'url', where, str, required=True).rstrip('/')
        if not re.match(r'^https?://[^/\s]+$', url):
            raise ConfigError('%s.url: expected http(s)://host:port with no path, got %r' % (where, url))
        unit = _get(spec, 'unit', where, str)
        if unit is not None and not _UNIT_RE.match(unit):
            raise ConfigError('%s.unit: expected a systemd service name like x.service, got %r' % (where, unit))
        key_env = _get(spec, 'key_env', where, str)
        key = ''
        if key_env is not None:
            if not _ENV_RE.match(key_env):
                raise ConfigError('%s.key_env: not a valid variable name: %r' % (where, key_env))
            key = environ.get(key_env, '').strip()
            if not key:
                raise ConfigError('%s.key_env: environment variable %s is not set or empty' % (where, key_env))
        backends[name] = Backend(
            name=name, kind=kind, url=url, unit=unit, key_env=key_env, key=key,
            connect_timeout=_get(spec, 'connect_timeout', where, float, 10.0),
            read_timeout=_get(spec, 'read_timeout', where, float, 600.0))

    models = {}
    raw_models = _get(data, 'models', '', dict, required=True)
    if not raw_models:
        raise ConfigError('models: at least one model is required')
    for name, spec in raw_models.items():
        where = 'models.%s' % _show(name)
        if not isinstance(spec, dict):
            raise ConfigError('%s: expected a mapping' % where)
        _no_unknown(spec, ('backend', 'model'), where)
        bname = _get(spec, 'backend', where, str, required=True)
        if bname not in backends:
            raise ConfigError('%s.backend: unknown backend %r' % (where, bname))
        models[str(name)] = Model(str(name), backends[bname], _get(spec, 'model', where, str, str(name)))

    policy = _get(data, 'swap_policy', '', str, 'exclusive')
    if policy not in POLICIES:
        raise ConfigError('swap_policy: must be one of %s, got %r' % (', '.join(POLICIES), policy))
    systemctl = _get(data, 'systemctl', '', list, ['/usr/bin/systemctl'])
    if not systemctl or not all(isinstance(a, str) and a for a in systemctl):
        raise ConfigError('systemctl: expected a non-empty list of strings (a command and its arguments)')
    level = _get(data, 'log_level', '', str, 'INFO').upper()
    if level not in ('DEBUG', 'INFO', 'WARNING', 'ERROR'):
        raise ConfigError('log_level: must be DEBUG, INFO, WARNING or ERROR, got %r' % level)

    keys = [k.strip() for k in environ.get(CLIENT_KEYS_ENV, '').split(',') if k.strip()]
    if not keys:
        raise ConfigError('%s: environment variable is not set or holds no key' % CLIENT_KEYS_ENV)
    paths = {}
    for name in ('admin_socket', 'key_file'):
        paths[name] = _get(data, name, '', str)
        if paths[name] is not None and not paths[name].startswith('/'):
            raise ConfigError('%s: expected an absolute path, got %r' % (name, paths[name]))
    retry_after = _get(data, 'retry_after', '', int, 5)
    if not 0 < retry_after <= 3600:
        raise ConfigError('retry_after: must be 1-3600 seconds, got %d' % retry_after)

    return Config(
        host=host, port=port, backends=backends, models=models, client_keys=keys,
        swap_policy=policy,
        readiness_timeout=_get(data, 'readiness_timeout', '', float, 300.0),
        drain_timeout=_get(data, 'drain_timeout', '', float, 300.0),
        shutdown_timeout=_get(data, 'shutdown_timeout', '', float, 30.0),
        systemctl=systemctl, log_level=level, admin_socket=paths['admin_socket'],
        key_file=paths['key_file'], retry_after=retry_after,
        client_timeout=_get(data, 'client_timeout', '', float, 75.0))


def read_key_file(path):
    """The NAME="value" lines of a key file (systemd EnvironmentFile syntax as the role writes it:
    backslash escapes inside double quotes). Errors name the file and line, never a value."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError('key_file: cannot read %s: %s' % (path, e.strerror)) from None
    except UnicodeDecodeError:
        raise ConfigError('key_file: %s is not UTF-8' % path) from None
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(('#', ';')):
            continue
        name, sep, value = line.partition('=')
        name = name.strip()
        if not sep or not _ENV_RE.match(name):
            raise ConfigError('key_file: %s line %d is not NAME=value' % (path, number))
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        values[name] = value
    return values


def load_config(path, environ=None):
    """Config from the YAML file; keys from the environment, overridden by key_file when set."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError('cannot read config %s: %s' % (path, e.strerror)) from None
    except yaml.YAMLError as e:
        raise ConfigError('config %s is not valid YAML: %s' % (path, e)) from None
    environ = dict(os.environ if environ is None else environ)
    key_file = data.get('key_file') if isinstance(data, dict) else None
    if isinstance(key_file, str) and key_file.startswith('/'):
        environ.update(read_key_file(key_file))
    return parse_config(data, environ)


# ---------------------------------------------------------------------------------------------
# Auth (clients -> router)
# ---------------------------------------------------------------------------------------------

def presented_key(headers):
    """The key a client sent as ``Authorization: Bearer K`` or ``x-api-key: K`` ('' if none);
    headers: lower-case names."""
    auth = headers.get('authorization', '')
    if auth[:7].lower() == 'bearer ':
        return auth[7:].strip()
    return headers.get('x-api-key', '').strip()


def key_accepted(key, keys):
    """Constant-time check of key against every configured key (no early exit)."""
    given = key.encode('utf-8', 'surrogateescape')   # header bytes that are not UTF-8 stay bytes
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k.encode('utf-8'))
    return bool(key) and ok


# ---------------------------------------------------------------------------------------------
# Metrics (Prometheus text format, no dependency)
# ---------------------------------------------------------------------------------------------

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _label(value):
    """A Prometheus label value, escaped."""
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


class Metrics:
    def __init__(self):
        self.requests = {}        # (model, status) -> count
        self.latency = {}         # model -> [bucket counts..., sum, count]
        self.swaps = {}           # (backend, result) -> count
        self.swap_seconds = {}    # backend -> [sum, count]
        self.backend_auth_failures = {}
        self.client_auth_failures = 0

    def observe(self, model, status, seconds):
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(model)
        if h is None:
            h = self.latency[model] = [0] * (len(_BUCKETS) + 3)
        h[bisect.bisect_left(_BUCKETS, seconds)] += 1     # one bucket here; cumulative in render()
        h[-2] += seconds
        h[-1] += 1

    def swap(self, backend, result, seconds):
        self.swaps[(backend, result)] = self.swaps.get((backend, result), 0) + 1
        s = self.swap_seconds.setdefault(backend, [0.0, 0])
        s[0] += seconds
        s[1] += 1

    def render(self):
        out = ['# TYPE llm_router_requests_total counter']
        for (m, s), n in sorted(self.requests.items()):
            out.append('llm_router_requests_total{model="%s",status="%s"} %d' % (_label(m), s, n))
        out.append('# TYPE llm_router_request_duration_seconds histogram')
        for m, h in sorted(self.latency.items()):
            below = 0
            for i, b in enumerate(_BUCKETS):
                below += h[i]
                out.append('llm_router_request_duration_seconds_bucket{model="%s",le="%s"} %d' % (_label(m), b, below))
            out.append('llm_router_request_duration_seconds_bucket{model="%s",le="+Inf"} %d' % (_label(m), h[-1]))
            out.append('llm_router_request_duration_seconds_sum{model="%s"} %.6f' % (_label(m), h[-2]))
            out.append('llm_router_request_duration_seconds_count{model="%s"} %d' % (_label(m), h[-1]))
        out.append('# TYPE llm_router_swaps_total counter')
        for (b, r), n in sorted(self.swaps.items()):
            out.append('llm_router_swaps_total{backend="%s",result="%s"} %d' % (_label(b), r, n))
        out.append('# TYPE llm_router_swap_duration_seconds summary')
        for b, (total, n) in sorted(self.swap_seconds.items()):
            out.append('llm_router_swap_duration_seconds_sum{backend="%s"} %.6f' % (_label(b), total))
            out.append('llm_router_swap_duration_seconds_count{backend="%s"} %d' % (_label(b), n))
        out.append('# TYPE llm_router_backend_auth_failures_total counter')
        for b, n in sorted(self.backend_auth_failures.items()):
            out.append('llm_router_backend_auth_failures_total{backend="%s"} %d' % (_label(b), n))
        out.append('# TYPE llm_router_client_auth_failures_total counter')
        out.append('llm_router_client_auth_failures_total %d' % self.client_auth_failures)
        return '\n'.join(out) + '\n'


# ---------------------------------------------------------------------------------------------
# Upstream HTTP/1.1 client (router -> backends)
# ---------------------------------------------------------------------------------------------
# Small on purpose: it costs a fraction of aiohttp's client per request (numbers in docs/router.md).
# It speaks only what the router needs: one request at a time per connection, keep-alive, request
# bodies always sent with Content-Length, and answers framed by Content-Length, chunked
# transfer-encoding or connection close (RFC 9112 section 6.3). Anything else is an UpstreamError.
# Each connection is an asyncio.Protocol (Link) whose answers llhttp parses (httptools, as for the
# server side): the body arrives with chunk framing removed, and nothing runs per read but the
# parser's callbacks. A read timeout is one timer per answer, re-armed only when it fires early.

class UpstreamError(Exception):
    """The backend could not be reached or broke the HTTP exchange."""


class _Stale(Exception):
    """A reused keep-alive connection the backend had closed: the request is sent again fresh."""


_NO_BODY = frozenset((204, 304))
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
        if status in _NO_BODY:
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
            raise UpstreamError('cannot connect: %s' % (e.strerror or type(e).__name__)) from None
        return await link.exchange(data, timeout, reused=False)


# ---------------------------------------------------------------------------------------------
# Backend lifecycle
# ---------------------------------------------------------------------------------------------

class SwapError(Exception):
    """Why a backend could not be made ready; status is what the client gets (502, 503 or 504)."""

    def __init__(self, status, message, code, retry_after=None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


@dataclass
class Swap:
    model: Model
    task: asyncio.Task
    closed: frozenset              # backends whose new requests wait for this swap


class Switchboard:
    """Which backend is active, and the one swap in progress (if any)."""

    def __init__(self, cfg, metrics):
        self.cfg, self.metrics = cfg, metrics
        self.swap = None
        for b in cfg.backends.values():
            b.idle = asyncio.Event()
            b.idle.set()
            b.upstream = Upstream(b.url, b.connect_timeout)

    # -- admission -----------------------------------------------------------------------------

    def _ready_for(self, model):
        b = model.backend
        return b.state == 'ready' and (b.kind != 'tabbyapi' or b.loaded == model.backend_model)

    def drained_error(self, b):
        return SwapError(503, 'backend %s is drained for a planned restart; retry in a few seconds' % b.name,
                         'backend_draining', retry_after=self.cfg.retry_after)

    async def acquire(self, model):
        """Return once model's backend is ready and this request is counted in flight."""
        while True:
            b = model.backend
            if b.drained:
                raise self.drained_error(b)
            if self._ready_for(model) and (self.swap is None or b.name not in self.swap.closed):
                b.inflight += 1
                b.idle.clear()
                return
            if self.swap is None:
                self.swap = self._begin_swap(model)
            swap = self.swap
            try:
                await asyncio.shield(swap.task)
            except SwapError:
                if swap.model.name == model.name:
                    raise
                # another model's swap failed: try our own on the next turn

    def release(self, backend):
        backend.inflight -= 1
        if backend.inflight == 0:
            backend.idle.set()

    def backend_failed(self, backend, why):
        """A proxied request lost its backend: re-check readiness before the next request."""
        if backend.state == 'ready':
            backend.state = 'unknown'
        backend.last_error = why

    # -- the swap -----------------------------------------------------------------------------

    def _begin_swap(self, model):
        target = model.backend
        stop = []
        if self.cfg.swap_policy == 'exclusive' and target.unit:
            stop = [b for b in self.cfg.backends.values()
                    if b is not target and b.unit and b.state != 'stopped']
        closed = {b.name for b in stop}
        if target.kind == 'tabbyapi' and target.loaded not in (None, model.backend_model):
            closed.add(target.name)      # changing the loaded model: drain the old one first
        task = asyncio.ensure_future(self._run_swap(model, stop, closed))
        task.add_done_callback(self._swap_done)
        return Swap(model, task, frozenset(closed))

    def _swap_done(self, task):
        self.swap = None
        if not task.cancelled():
            task.exception()             # consumed here; waiters get it through shield()

    async def _run_swap(self, model, stop, closed):
        target, started = model.backend, time.monotonic()
        log.info('swap to model %s on backend %s: draining %s, stopping %s', model.name, target.name,
                 ', '.join(sorted(closed)) or 'nothing', ', '.join(b.unit for b in stop) or 'nothing')
        try:
            self._refuse_drained([target] + stop)
            await self._drain([self.cfg.backends[n] for n in closed])
            for b in stop:
                self._refuse_drained([target, b])   # drained meanwhile: its restart is someone else's
                await self._systemctl('stop', b)
                b.state, b.loaded = 'stopped', None
            if target.unit and target.state != 'ready':
                self._refuse_drained([target])
                target.state = 'starting'
                await self._systemctl('start', target)
            await self._wait_ready(model, started + self.cfg.readiness_timeout)
        except SwapError as e:
            if e.code == 'backend_draining':     # not the backend's fault: its state stays as it is
                self.metrics.swap(target.name, 'drained', time.monotonic() - started)
                log.info('swap to model %s not done: %s', model.name, e.message)
                raise
            target.state, target.last_error = 'failed', e.message
            self.metrics.swap(target.name, 'error', time.monotonic() - started)
            log.error('swap to model %s failed: %s', model.name, e.message)
            raise
        target.state, target.last_error = 'ready', ''
        self.metrics.swap(target.name, 'ok', time.monotonic() - started)
        log.info('model %s ready on backend %s after %.2f s', model.name, target.name,
                 time.monotonic() - started)

    def _refuse_drained(self, backends):
        """A swap neither starts nor stops a drained backend (its unit is being restarted by its owner)."""
        for b in backends:
            if b.drained:
                raise self.drained_error(b)

    # -- planned maintenance (admin socket) ---------------------------------------------------

    async def drain(self, backends, timeout):
        """Close backends to new requests; wait (bounded) for their in-flight ones and for a swap
        that touches them. Returns the number of requests still in flight."""
        for b in backends:
            b.drained, b.resume_pending = True, False
        log.info('drained %s (planned maintenance)', ', '.join(b.name for b in backends))
        deadline = time.monotonic() + timeout
        swap = self.swap
        if swap is not None and (swap.model.backend in backends or any(b.name in swap.closed for b in backends)):
            await asyncio.wait([swap.task], timeout=max(0.0, deadline - time.monotonic()))
        for b in backends:
            try:
                await asyncio.wait_for(b.idle.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        return sum(b.inflight for b in backends)

    async def key_refused(self, b):
        """One probe of b's key-checking endpoint with the router's key: True when it answers 401/403."""
        endpoint, header = probe.probe_plan(b.kind)
        try:
            status, body = await self._probe_get(b, endpoint, probe.auth_headers(header, b.key), time.monotonic() + 5)
        except UpstreamError:
            return False                 # not up (yet): the next request's readiness wait decides
        return probe.classify(status, body, None)[0] == probe.REJECTED

    async def resume(self, backends):
        """Reopen drained backends whose key the router holds is accepted; the others stay drained
        until the next key reload. Readiness is checked again before the next request."""
        resumed, refused = [], []
        for b in backends:
            if not b.drained:
                continue
            if await self.key_refused(b):
                b.resume_pending = True
                b.last_error = 'drained: the backend refuses the router\'s key from %s; reload the router' % b.key_env
                refused.append(b.name)
                continue
            b.drained = b.resume_pending = False
            b.last_error = ''
            if b.state != 'stopped':
                b.state = 'unknown'      # restarted meanwhile: re-check (and reload TabbyAPI's model)
            resumed.append(b.name)
        if resumed or refused:
            log.info('resumed %s; still drained (key refused) %s', ', '.join(resumed) or 'nothing',
                     ', '.join(refused) or 'nothing')
        return resumed, refused

    async def _drain(self, backends):
        deadline = time.monotonic() + self.cfg.drain_timeout
        for b in backends:
            try:
                await asyncio.wait_for(b.idle.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise SwapError(504, 'backend %s still has %d request(s) in flight after %g s; not swapping'
                                % (b.name, b.inflight, self.cfg.drain_timeout), 'backend_busy') from None

    async def _run(self, *args, timeout):
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.cfg.systemctl, *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as e:
            return None, 'cannot run %s: %s' % (self.cfg.systemctl[0], e.strerror)
        try:
            out = (await asyncio.wait_for(proc.communicate(), timeout))[0]
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return None, 'timed out after %g s' % timeout
        return proc.returncode, out.decode('utf-8', 'replace').strip()

    async def unit_state(self, b):
        """'ActiveState=.. SubState=.. Result=.. ExecMainStatus=..' of a backend's unit."""
        rc, out = await self._run('show', '--property=ActiveState,SubState,Result,ExecMainStatus',
                                  '--', b.unit, timeout=10)
        if rc != 0:
            return {}, 'systemctl show %s failed: %s' % (b.unit, out)
        props = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
        return props, ' '.join('%s=%s' % kv for kv in sorted(props.items()))

    async def _systemctl(self, verb, b):
        rc, out = await self._run(verb, '--', b.unit, timeout=self.cfg.readiness_timeout)
        if rc != 0:
            state = (await self.unit_state(b))[1]
            raise SwapError(502, 'systemctl %s %s failed (%s): %s; unit state: %s'
                            % (verb, b.unit, 'exit %s' % rc if rc is not None else 'did not complete',
                               ' '.join(out.split())[:300], state), 'backend_unit_failed')

    async def _probe_get(self, b, path, headers, deadline):
        answer = await b.upstream.request('GET', path, headers, b'',
                                          timeout=max(0.5, min(10.0, deadline - time.monotonic())))
        try:
            return answer.status, await answer.read()
        finally:
            answer.release()

    async def _wait_ready(self, model, deadline):
        """Poll the backend's key-checking endpoint until READY; fail fast on what cannot heal."""
        b = model.backend
        want = model.backend_model if b.kind == 'tabbyapi' else None
        endpoint, header = probe.probe_plan(b.kind, model=want)
        headers = probe.auth_headers(header, b.key)
        delay, load_asked, last = 0.02, False, 'no answer yet'
        while True:
            try:
                status, body = await self._probe_get(b, endpoint, headers, deadline)
            except UpstreamError as e:
                status, body, last = None, b'', str(e)
            if status is not None:
                verdict, detail, models = probe.classify(status, body, want)
                if verdict == probe.READY:
                    b.loaded = want or (models[0] if models else None)
                    return
                if verdict == probe.REJECTED:
                    self.metrics.backend_auth_failures[b.name] = self.metrics.backend_auth_failures.get(b.name, 0) + 1
                    raise SwapError(502, probe.rejection_message(b.name, b.url, endpoint, header, status, detail,
                                                                 bool(b.key)) + ' (the router\'s key for this backend '
                                    'comes from %s)' % (b.key_env or 'no key_env'), 'backend_rejected_key')
                if verdict == probe.FATAL:
                    raise SwapError(502, 'backend %s at %s answered %s on %s: %s'
                                    % (b.name, b.url, status, endpoint, detail), 'backend_error')
                last = '%s %s' % (status, detail)
                if want and not load_asked and status in (200, 503):
                    load_asked = True      # up, but not with our model: load it (admin API)
                    await self._tabby_load(b, want, deadline)
                    continue
            if b.unit:
                props, state = await self.unit_state(b)
                if props.get('ActiveState') in ('failed', 'inactive') or props.get('SubState') == 'exited':
                    raise SwapError(502, 'backend %s: unit %s is not running (%s); last answer: %s'
                                    % (b.name, b.unit, state, last), 'backend_unit_failed')
            if time.monotonic() + delay > deadline:
                raise SwapError(504, 'backend %s at %s not ready after %g s (last answer: %s)'
                                % (b.name, b.url, self.cfg.readiness_timeout, last), 'backend_timeout')
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _tabby_load(self, b, model_id, deadline):
        """POST /v1/model/load with the admin key; the answer is a stream we read to its end."""
        log.info('loading model %s on backend %s', model_id, b.name)
        headers = probe.auth_headers('x-admin-key', b.key)
        headers['Content-Type'] = 'application/json'
        answer = None
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                answer = await b.upstream.request('POST', '/v1/model/load', headers,
                                                  json.dumps({'model_name': model_id}).encode(),
                                                  timeout=self.cfg.readiness_timeout)
                body, status = await answer.read(), answer.status
        except TimeoutError:
            raise SwapError(504, 'backend %s: loading model %s did not finish in time' % (b.name, model_id),
                            'backend_timeout') from None
        except UpstreamError as e:
            raise SwapError(502, 'backend %s: model load request failed: %s' % (b.name, e),
                            'backend_error') from None
        finally:
            if answer is not None:
                answer.release()
        if status in probe.DEFAULT_REJECT_STATUSES:
            self.metrics.backend_auth_failures[b.name] = self.metrics.backend_auth_failures.get(b.name, 0) + 1
            raise SwapError(502, probe.rejection_message(b.name, b.url, '/v1/model/load', 'x-admin-key', status,
                                                         probe.server_message(body), bool(b.key)),
                            'backend_rejected_key')
        if status >= 400:
            raise SwapError(502, 'backend %s could not load model %s: %s %s'
                            % (b.name, model_id, status, probe.server_message(body)), 'backend_error')


# ---------------------------------------------------------------------------------------------
# Proxy
# ---------------------------------------------------------------------------------------------

PROXIED = ('/v1/chat/completions', '/v1/completions', '/v1/embeddings')


async def proxy(app, req):
    cfg, board, metrics = app.cfg, app.board, app.metrics
    started = time.monotonic()
    if not key_accepted(presented_key(req.headers), cfg.client_keys):
        metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key (send Authorization: Bearer <key> or x-api-key)',
                            'invalid_request_error', code='invalid_api_key')
    body = req.body
    try:
        name = json.loads(body).get('model')
    except (ValueError, AttributeError, RecursionError):   # not JSON, not an object, nested too deep
        name = None
    if not isinstance(name, str):
        return openai_error(400, 'The request body must be a JSON object with a "model" string',
                            'invalid_request_error', param='model')
    model = cfg.models.get(name)
    if model is None:
        metrics.observe('(unknown)', 404, time.monotonic() - started)   # bounded label set
        return openai_error(404, 'The model %r does not exist' % name[:100], 'invalid_request_error',
                            code='model_not_found', param='model')
    status = 500
    try:
        try:
            await board.acquire(model)
        except SwapError as e:
            status = e.status
            return openai_error(e.status, e.message, 'api_error', code=e.code, retry_after=e.retry_after)
        try:
            status, reply = await relay(app, req, model, body)
            return reply
        except UpstreamError:
            status = 502                 # the backend failed after the answer had started: cut
            raise
        except ConnectionError:
            status = 499                 # the client went away while we wrote to it
            raise
        finally:
            board.release(model.backend)
    except asyncio.CancelledError:
        status = 499                     # the client went away; upstream was closed by relay()
        raise
    finally:
        elapsed = time.monotonic() - started
        metrics.observe(name, status, elapsed)
        if ACCESS.enabled:
            ACCESS.add('%s %s model=%s status=%s %.1fms' % (req.method, req.path, name, status, elapsed * 1000))


async def relay(app, req, model, body):
    """Send body to the backend and relay its answer as it arrives. Returns (status, Reply or None);
    None: the answer was streamed to the client already."""
    b = model.backend
    headers = probe.auth_headers(probe.PROFILES[b.kind][2], b.key)
    headers['Content-Type'] = req.headers.get('content-type', 'application/json')
    if 'accept' in req.headers:
        headers['Accept'] = req.headers['accept']
    answer = None
    stream = None
    try:
        answer = await b.upstream.request('POST', req.target, headers, body, timeout=b.read_timeout)
        ctype = answer.headers.get('content-type')          # None: the backend sent none, nor do we
        if answer.length is not None and not (ctype or '').startswith('text/event-stream'):
            return answer.status, Reply(answer.status, await answer.read(), ctype)
        stream = req.conn.stream(req, answer.status, ctype)
        async for chunk in answer.chunks():
            if answer.last:
                stream.end(chunk)
            else:
                await stream.write(chunk)
        if not req.conn.answered:
            stream.end()
        return answer.status, None
    except UpstreamError as e:
        why = 'backend %s (%s) failed during the request: %s' % (b.name, b.url, e)
        app.board.backend_failed(b, why)
        log.error('%s', why)
        if stream is not None and stream.started:
            raise                            # head already sent: the only honest signal is to cut it
        return 502, openai_error(502, why, 'api_error', code='backend_error')
    finally:
        if answer is not None:
            answer.release()                 # pooled if read to the end, else closed (client gone, error)


class AccessLog:
    """The INFO line for each proxied request, written in batches: the lines of up to 0.1 s go out
    in one write, in the log's format, so a line costs a string format instead of a log record and
    a write(2) each. Any other log record first flushes what is pending (the order holds), and so
    does shutdown; a killed router loses at most the last 0.1 s of these lines."""

    def __init__(self):
        self.enabled = False
        self.lines = []
        self.timer = None
        self.second, self.stamp = None, ''

    def add(self, message):
        now = time.time()
        second = int(now)
        if second != self.second:      # asctime as logging.Formatter writes it, once per second
            self.second, self.stamp = second, time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(second))
        self.lines.append('%s,%03d INFO %s: %s\n' % (self.stamp, (now - second) * 1000, log.name, message))
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(0.1, self.flush)

    def flush(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            lines, self.lines = self.lines, []
            try:
                sys.stderr.write(''.join(lines))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass                   # stderr gone: as logging does, never fail a request for it


class _FlushingHandler(logging.StreamHandler):
    """stderr for log records, after the access lines written before them."""

    def emit(self, record):
        ACCESS.flush()
        super().emit(record)


ACCESS = AccessLog()


# ---------------------------------------------------------------------------------------------
# Endpoints: models list, health, metrics
# ---------------------------------------------------------------------------------------------

async def list_models(app, req):
    cfg = app.cfg
    if not key_accepted(presented_key(req.headers), cfg.client_keys):
        app.metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    data = [{'id': m.name, 'object': 'model', 'created': 0, 'owned_by': m.backend.name}
            for m in cfg.models.values()]
    return json_reply({'object': 'list', 'data': data})


async def health(app, req):
    """Liveness without auth: names and states only, never a key or a key's variable value."""
    cfg, board = app.cfg, app.board
    active = [b for b in cfg.backends.values() if b.state == 'ready']
    return json_reply({
        'status': 'ok',
        'swap_policy': cfg.swap_policy,
        'swapping_to': board.swap.model.name if board.swap else None,
        'active_backends': [b.name for b in active],
        'backends': {b.name: {'kind': b.kind, 'unit': b.unit, 'state': b.state, 'loaded': b.loaded,
                              'in_flight': b.inflight, 'drained': b.drained,
                              'resume_pending': b.resume_pending, 'last_error': b.last_error or None}
                     for b in cfg.backends.values()},
    })


async def metrics_endpoint(app, req):
    if not key_accepted(presented_key(req.headers), app.cfg.client_keys):
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    return Reply(200, app.metrics.render().encode(), 'text/plain; charset=utf-8')


# ---------------------------------------------------------------------------------------------
# Admin endpoints: only on the unix socket ``admin_socket`` (its file mode is the auth)
# ---------------------------------------------------------------------------------------------

_ADMIN_RE = re.compile(r'/admin/(backends|units)/([^/]+)/(drain|resume)\Z')


def _admin_targets(app, by, name):
    """The backends an admin request names: /admin/backends/<name>/... or /admin/units/<unit>/..."""
    if by == 'backends':
        return [app.cfg.backends[name]] if name in app.cfg.backends else []
    return [b for b in app.cfg.backends.values() if b.unit == name]


async def admin_action(app, req):
    match = _ADMIN_RE.match(req.path)
    if not req.conn.admin or match is None:
        return not_found()
    by, name, action = match.group(1), urllib.parse.unquote(match.group(2)), match.group(3)
    board, cfg = app.board, app.cfg
    targets = _admin_targets(app, by, name)
    if not targets:
        return json_reply({'error': 'no backend with %s %r' % ('name' if by == 'backends' else 'unit', name[:200])},
                          status=404)
    names = [b.name for b in targets]
    if action == 'drain':
        try:
            timeout = float(urllib.parse.parse_qs(req.query).get('timeout', [cfg.drain_timeout])[0])
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= 86400:
            return json_reply({'error': 'timeout: expected seconds between 0 and 86400'}, status=400)
        started = time.monotonic()
        left = await board.drain(targets, timeout)
        return json_reply({'drained': names, 'in_flight': left, 'timed_out': left > 0,
                           'seconds': round(time.monotonic() - started, 3)})
    resumed, refused = await board.resume(targets)
    return json_reply({'resumed': resumed, 'still_drained_key_refused': refused,
                       'drained': [b.name for b in targets if b.drained]})


async def reload_keys(app):
    """Re-read the keys (key_file over the process environment) and apply them. Only keys change:
    anything else in the config needs a restart. Raises ConfigError and keeps the old keys on error."""
    cfg, board = app.cfg, app.board
    if not app.config_path:
        raise ConfigError('reload: the router was started without a config file path')
    new = load_config(app.config_path)
    cfg.client_keys = new.client_keys
    for name, b in cfg.backends.items():
        if name in new.backends and new.backends[name].key != b.key:
            b.key = new.backends[name].key
            if b.state == 'ready':
                b.state = 'unknown'      # re-checked with the new key before its next request
    same = (set(new.backends) == set(cfg.backends) and set(new.models) == set(cfg.models)
            and all((n.kind, n.url, n.unit, n.key_env) == (o.kind, o.url, o.unit, o.key_env)
                    for n, o in ((new.backends[k], cfg.backends[k]) for k in cfg.backends)))
    if not same:
        log.warning('reload: the config file changed in more than keys; that takes a restart')
    resumed, refused = await board.resume([b for b in cfg.backends.values() if b.resume_pending])
    log.info('reload: keys re-read (%d client keys, %d backend keys)', len(new.client_keys),
             sum(1 for b in cfg.backends.values() if b.key))
    return {'reloaded': True, 'client_keys': len(new.client_keys), 'resumed': resumed,
            'still_drained_key_refused': refused, 'config_changed_beyond_keys': not same}


async def admin_reload(app, req):
    if not req.conn.admin:
        return not_found()
    try:
        async with app.reload_lock:
            return json_reply(await reload_keys(app))
    except ConfigError as e:
        log.error('reload failed, old keys kept: %s', e)
        return json_reply({'reloaded': False, 'error': str(e)}, status=500)


async def _reload_on_signal(app):
    try:
        async with app.reload_lock:
            await reload_keys(app)
    except ConfigError as e:
        log.error('reload (SIGHUP) failed, old keys kept: %s', e)


def request_reload(config_path):
    """``router.py --reload``: ask the running router over its admin socket to re-read the keys;
    returns once it has (so that systemctl reload returns after the new keys are in force)."""
    try:
        with open(config_path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        print('llm-router: cannot read %s: %s' % (config_path, e), file=sys.stderr)
        return 2
    path = data.get('admin_socket') if isinstance(data, dict) else None
    if not isinstance(path, str):
        print('llm-router: admin_socket is not set in %s; send SIGHUP instead' % config_path, file=sys.stderr)
        return 2
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(path)
            sock.sendall(b'POST /admin/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n'
                         b'Connection: close\r\n\r\n')
            answer = b''
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError as e:
        print('llm-router: reload over %s failed: %s' % (path, e.strerror or type(e).__name__), file=sys.stderr)
        return 1
    head, dummy, body = answer.partition(b'\r\n\r\n')
    print(body.decode('utf-8', 'replace').strip())
    return 0 if head.startswith(b'HTTP/1.1 200') else 1


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 server (clients -> router)
# ---------------------------------------------------------------------------------------------
# An asyncio.Protocol per connection; requests are parsed by httptools (the llhttp parser, the one
# Node.js and aiohttp use), so router.py never splits request bytes itself. What llhttp enforces:
# the request line, header syntax, Content-Length and chunked framing (both at once is an error),
# the HTTP version. What this server adds on top:
#
# * Limits: request head (target + headers) <= 64 KiB and <= 100 header lines (else 431), body
#   <= 256 MiB (else 413, checked on Content-Length before reading, and while reading a chunked
#   body). The request target must be origin-form ("/..." of visible ASCII), else 400.
# * Any framing error is a 400 with "Connection: close", after the answers to the requests that
#   came before it on the connection; nothing of the request is logged (it may hold a key).
# * Sequencing: one request at a time per connection. Pipelined requests are parsed as they arrive
#   and queued (reading pauses once 2 wait, so at most a few bodies are held); each is answered
#   only after the one before it, so answers go out in request order.
# * Answers: with Content-Length, head and body in one write; streams (event-stream, or any answer
#   without Content-Length from the backend) with chunked transfer-encoding, one write per chunk as
#   it arrives (pieces that arrived together in one write; the head goes out at once, or together
#   with the first chunk if that had already arrived); HTTP/1.0 clients get the stream until close.
#   When the client reads slowly the transport's buffer fills, pause_writing() is called, and the
#   relay waits for resume_writing() before the next chunk: memory stays bounded.
# * Expect: 100-continue is answered before the body is read (when the request is next in line);
#   any other expectation is a 417 that does not echo the value.
# * A client that disconnects cancels the task serving its request: relay() then closes the
#   upstream connection, so the backend sees the disconnect too.
# * Client timeout (config ``client_timeout``, default 75 s; T below). While no answer is being
#   prepared or sent on a connection, the router is waiting for its client, and a client that keeps
#   it waiting too long is closed without an answer (nothing of its request is logged):
#   - idle: nothing received for T (an idle keep-alive connection, or a client stuck mid-request);
#   - head: the request line and headers not complete T after the request's first byte
#     (slow-loris: a head trickled a byte at a time is cut, however steady the trickle);
#   - body: the body not complete T plus 1 s per 64 KiB of body received after the head was
#     complete (a body must average 64 KiB/s after a grace of T; 256 MiB at that rate is ~68 min).
#   The clocks of a request that began while an earlier answer was still being sent start when
#   that answer ended (reading may have been paused meanwhile), and Expect: 100-continue bodies
#   are timed from the 100. Answers are never cut by this: a stream that is slow because the
#   backend is slow is the backend's business (read_timeout). The sweep runs every T/5, 15 s at
#   the longest, so a cut comes at most that long after its due time. No 408 is sent (the client
#   may not be reading); an answer a cut client left unread is dropped (transport.abort()).
# * HEAD is answered for the GET endpoints; unknown paths get 404, other methods 405 (with Allow).

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
    """A request the server answers itself (status, message) and then closes the connection."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class Request:
    __slots__ = ('conn', 'method', 'target', 'path', 'query', 'headers', 'body', 'parts', 'size',
                 'keep_alive', 'http10', 'refused', 'expect')

    def __init__(self, conn):
        self.conn = conn
        self.method = self.path = self.query = ''
        self.target = b''
        self.headers = {}                # lower-case name -> first value (non-UTF-8 bytes as surrogates)
        self.body = b''
        self.parts = []
        self.size = 0
        self.keep_alive = True
        self.http10 = False
        self.refused = None              # (status, message): answered by the server itself
        self.expect = False              # 100-continue still owed


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
                self._refuse(cause.status, cause.message)
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

    def _refuse(self, status, message):
        """Answer (in turn) with an error, then close; nothing more is read from this client."""
        req = self.req or Request(self)
        self.req, self.parser = None, None
        req.refused, req.keep_alive = (status, message), False
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
        if req.size > MAX_HEAD or len(req.headers) >= MAX_HEADER_LINES:
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
        comment block above MAX_BODY. Only asked while no answer is being prepared or sent."""
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
        body = reply.body if reply.status not in _NO_BODY else b''
        extra = b'Content-Length: %d\r\n' % len(body) if reply.status not in _NO_BODY else b''
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


class App:
    """The router's state and its request dispatch."""

    def __init__(self, cfg, config_path=None):
        self.cfg, self.config_path = cfg, config_path
        self.metrics = Metrics()
        self.board = Switchboard(cfg, self.metrics)
        self.reload_lock = asyncio.Lock()
        self.connections = set()
        self.stopping = False
        get = {'GET': None, 'HEAD': None}
        self.routes = {'/v1/models': dict.fromkeys(get, list_models), '/health': dict.fromkeys(get, health),
                       '/metrics': dict.fromkeys(get, metrics_endpoint), '/admin/reload': {'POST': admin_reload}}
        for path in PROXIED:
            self.routes[path] = {'POST': proxy}

    async def respond(self, conn, req):
        """Answer one request (any failure of a handler is a 500 or a cut stream, never a crash)."""
        conn.answered = False
        if req.refused is not None:
            status, message = req.refused
            conn.send(req, openai_error(status, message, 'invalid_request_error'))
            return
        methods = self.routes.get(req.path)
        if methods is None and req.path.startswith('/admin/') and _ADMIN_RE.match(req.path):
            methods = {'POST': admin_action}
        if methods is None:
            conn.send(req, not_found())
            return
        handler = methods.get(req.method)
        if handler is None:
            reply = openai_error(405, 'Method %s not allowed on %s' % (req.method[:20], req.path[:100]),
                                 'invalid_request_error', code='method_not_allowed')
            reply.headers = (('Allow', ', '.join(methods)),)
            conn.send(req, reply)
            return
        try:
            reply = await handler(self, req)
        except (UpstreamError, ConnectionError):
            reply = None                 # logged where it happened; a started answer is cut below
        except Exception:                # pylint: disable=broad-exception-caught
            log.exception('unhandled error in %s %s', req.method, req.path)
            reply = openai_error(500, 'Internal error', 'api_error')
        if reply is not None and not conn.answered:
            conn.send(req, reply)
        elif not conn.answered:          # an answer that had started cannot be completed: cut it
            req.keep_alive = False

    def sweep(self):
        """Close the connections whose clients kept the router waiting longer than client_timeout
        while no answer was being prepared or sent for them (Connection.overdue)."""
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.task is not None:
                continue                 # being answered: the router, not the client, is due
            why = conn.overdue(now)
            if why:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug('closed a client connection: %s (client_timeout %g s)', why, self.cfg.client_timeout)
                conn.cut()


async def serve(cfg, config_path):
    """Listen until SIGTERM/SIGINT, then stop accepting, let requests in flight finish within
    shutdown_timeout, and cancel what is left."""
    loop = asyncio.get_running_loop()
    app = App(cfg, config_path)
    stop = asyncio.Event()
    reloads = set()                      # running SIGHUP reloads (a reference keeps each task alive)

    def on_sighup():
        task = asyncio.ensure_future(_reload_on_signal(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = [await loop.create_server(lambda: Connection(app, False), cfg.host, cfg.port, backlog=1024)]
    if cfg.admin_socket:
        if os.path.exists(cfg.admin_socket) and stat.S_ISSOCK(os.stat(cfg.admin_socket).st_mode):
            os.unlink(cfg.admin_socket)  # left over by a router that did not stop cleanly
        servers.append(await loop.create_unix_server(lambda: Connection(app, True), cfg.admin_socket))
    every = min(max(cfg.client_timeout / 5, 0.05), 15.0)   # a cut comes at most T/5 late
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            app.sweep()
    app.stopping = True
    for server in servers:
        server.close()
    busy = []
    for conn in list(app.connections):
        if conn.task is None:
            conn.transport.close()       # idle keep-alive: nothing to finish
        else:
            busy.append(conn.task)
    if busy:
        await asyncio.wait(busy, timeout=cfg.shutdown_timeout)
    for conn in list(app.connections):
        if conn.task is not None:
            conn.task.cancel()
        conn.transport.close()
    await asyncio.sleep(0)
    if cfg.admin_socket:
        try:
            os.unlink(cfg.admin_socket)
        except OSError:
            pass
    for b in cfg.backends.values():
        b.upstream.close()
    loop.remove_signal_handler(signal.SIGHUP)
    ACCESS.flush()


def raise_open_file_limit():
    """Every client connection and every backend connection is a file descriptor: raise the soft
    open-file limit (1024 for a systemd service unless LimitNOFILE= says otherwise) to the hard one
    (524288 by default). Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):    # an unlimited hard limit cannot be the soft one
            return soft
    return hard


def main(argv=None):
    parser = argparse.ArgumentParser(description='gpufleet.llm OpenAI-compatible router')
    parser.add_argument('--config', required=True, help='path to the router YAML config')
    parser.add_argument('--check', action='store_true', help='check the config and environment, then exit')
    parser.add_argument('--reload', action='store_true',
                        help='make the running router re-read its keys (over admin_socket), then exit')
    args = parser.parse_args(argv)
    if args.reload:
        return request_reload(args.config)
    handler = _FlushingHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(handlers=[handler])
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print('llm-router: config error: %s' % e, file=sys.stderr)
        return 2
    log.setLevel(cfg.log_level)
    ACCESS.enabled = log.isEnabledFor(logging.INFO)
    if args.check:
        print('llm-router: config OK (%d backends, %d models)' % (len(cfg.backends), len(cfg.models)))
        return 0
    files = raise_open_file_limit()
    log.info('listening on %s:%d, %d backends, %d models, swap policy %s, open-file limit %d', cfg.host,
             cfg.port, len(cfg.backends), len(cfg.models), cfg.swap_policy, files)
    uvloop.run(serve(cfg, args.config))          # uvloop: ~12 % less CPU per request (docs/router.md)
    log.info('stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
