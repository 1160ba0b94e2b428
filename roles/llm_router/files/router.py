# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpufleet.llm router: one OpenAI-compatible endpoint in front of several inference backends.

Read it top to bottom: config -> auth -> metrics -> upstream HTTP client -> backend lifecycle
-> proxy -> HTTP app.

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
* Clients are served by aiohttp.web; backends are reached through the small keep-alive HTTP/1.1
  client below (one connection pool per backend, for the whole process): see docs/router.md for
  the measurements behind that choice.
* Planned maintenance (docs/router.md, "Admin socket"): on a unix socket only (``admin_socket``),
  a backend can be DRAINED (new requests for its models get 503 with Retry-After, in-flight ones
  finish) and RESUMED; ``--reload``, POST /admin/reload or SIGHUP re-read the keys from
  ``key_file`` without dropping a connection.
"""

import argparse
import asyncio
import hmac
import json
import logging
import math
import os
import re
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field

import uvloop
import yaml
from aiohttp import web

import _backend_probe as probe

log = logging.getLogger('llm_router')

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
                       'admin_socket', 'key_file', 'retry_after'), '')
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
        key_file=paths['key_file'], retry_after=retry_after)


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
    """The key a client sent as ``Authorization: Bearer K`` or ``x-api-key: K`` ('' if none)."""
    auth = headers.get('Authorization', '')
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


def openai_error(status, message, type_, code=None, param=None, retry_after=None):
    body = {'error': {'message': message, 'type': type_, 'param': param, 'code': code}}
    headers = {'Retry-After': str(retry_after)} if retry_after else None
    return web.json_response(body, status=status, headers=headers)


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
        self.requests[(model, status)] = self.requests.get((model, status), 0) + 1
        h = self.latency.setdefault(model, [0] * (len(_BUCKETS) + 2))
        for i, b in enumerate(_BUCKETS):
            if seconds <= b:
                h[i] += 1
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
            for i, b in enumerate(_BUCKETS):
                out.append('llm_router_request_duration_seconds_bucket{model="%s",le="%s"} %d' % (_label(m), b, h[i]))
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

class UpstreamError(Exception):
    """The backend could not be reached or broke the HTTP exchange."""


_NO_BODY = frozenset((204, 304))
_MAX_HEAD = 64 * 1024


class Answer:
    """One backend answer: status, headers (lower-case names), body read or iterated once."""

    def __init__(self, pool, conn, status, headers, timeout):
        self.pool, self.conn, self.status, self.headers, self.timeout = pool, conn, status, headers, timeout
        self.done = False
        te = headers.get('transfer-encoding', '').lower()
        if status in _NO_BODY or 100 <= status < 200:
            self.length, self.chunked = 0, False
        elif te:
            if te.rsplit(',', 1)[-1].strip() != 'chunked':
                raise UpstreamError('unsupported transfer-encoding %r' % te)
            self.length, self.chunked = None, True
        elif 'content-length' in headers:
            try:
                self.length = int(headers['content-length'])
            except ValueError:
                raise UpstreamError('bad content-length') from None
            if self.length < 0:
                raise UpstreamError('bad content-length')
            self.chunked = False
        else:
            self.length, self.chunked = None, False         # until the backend closes
        self.reusable = (self.length is not None or self.chunked) and \
            'close' not in headers.get('connection', '').lower()

    async def _read(self, coro):
        async with asyncio.timeout(self.timeout):
            return await coro

    async def chunks(self):
        """Yield the body as it arrives (chunk framing removed); return the connection to the pool."""
        reader = self.conn[0]
        try:
            if self.chunked:
                while True:
                    line = await self._read(reader.readuntil(b'\r\n'))
                    size = int(line.split(b';', 1)[0].strip(), 16)
                    if size == 0:
                        while await self._read(reader.readuntil(b'\r\n')) != b'\r\n':
                            pass                                   # trailers: dropped
                        break
                    data = await self._read(reader.readexactly(size + 2))
                    if data[-2:] != b'\r\n':
                        raise UpstreamError('bad chunk framing')
                    yield data[:-2]
            elif self.length is not None:
                left = self.length
                while left:
                    data = await self._read(reader.read(min(left, 1 << 20)))
                    if not data:
                        raise UpstreamError('connection closed %d bytes before the end of the body' % left)
                    left -= len(data)
                    yield data
            else:
                while data := await self._read(reader.read(1 << 20)):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as e:
            raise UpstreamError('broken answer: %s' % type(e).__name__) from None
        except TimeoutError:
            raise UpstreamError('no data for %g s' % self.timeout) from None
        self.done = True
        self.release()

    async def read(self):
        return b''.join([c async for c in self.chunks()])

    def release(self):
        """Back to the pool when the body was read to its end, else the connection is dropped."""
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if self.done and self.reusable:
            self.pool.put(conn)
        else:
            conn[1].close()


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

    def put(self, conn):
        self.idle.append(conn)

    def close(self):
        while self.idle:
            self.idle.pop()[1].close()

    async def request(self, method, path, headers, body=b'', timeout=600.0):
        """Send one request; return an Answer once its status line and headers arrived."""
        head = [b'%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n'
                % (method.encode(), path.encode(), self.hostheader, len(body))]
        head += [b'%s: %s\r\n' % (k.encode('latin-1'), v.encode('utf-8', 'surrogateescape'))
                 for k, v in headers.items()]   # values as the client's bytes (aiohttp decoded them so)
        data = b''.join(head) + b'\r\n' + body
        while self.idle:                  # a reused connection the backend closed meanwhile: retry fresh
            conn = self.idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():
                conn[1].close()
                continue
            answer = await self._exchange(conn, data, timeout, reused=True)
            if answer is not None:
                return answer
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=_MAX_HEAD)
        except TimeoutError:
            raise UpstreamError('connect timed out after %g s' % self.connect_timeout) from None
        except OSError as e:
            raise UpstreamError('cannot connect: %s' % (e.strerror or type(e).__name__)) from None
        return await self._exchange(conn, data, timeout, reused=False)

    async def _exchange(self, conn, data, timeout, reused):
        reader, writer = conn
        try:
            writer.write(data)
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        raw = await reader.readuntil(b'\r\n\r\n')
                    except asyncio.IncompleteReadError as e:
                        if reused and not e.partial:
                            writer.close()
                            return None       # stale keep-alive connection: caller retries once fresh
                        raise
                    status, headers = _parse_head(raw)
                    if status >= 200:
                        break                 # 1xx interim answers are skipped
            return Answer(self, conn, status, headers, timeout)
        except BaseException as e:
            writer.close()
            if isinstance(e, TimeoutError):
                raise UpstreamError('no answer within %g s' % timeout) from None
            if isinstance(e, (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError)):
                raise UpstreamError('connection broken: %s' % type(e).__name__) from None
            raise


def _parse_head(raw):
    lines = raw[:-4].decode('latin-1').split('\r\n')
    version, dummy, rest = lines[0].partition(' ')
    if not version.startswith('HTTP/1.'):
        raise ValueError('not HTTP/1.x')
    status = int(rest[:3])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(':')
        if not sep or name != name.strip() or line[:1] in ' \t':
            raise ValueError('bad header line')
        name, value = name.lower(), value.strip()
        headers[name] = headers[name] + ', ' + value if name in headers else value
    if version == 'HTTP/1.0' and 'keep-alive' not in headers.get('connection', '').lower():
        headers['connection'] = 'close'
    return status, headers


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


async def proxy(request):
    app = request.app
    cfg, board, metrics = app['cfg'], app['board'], app['metrics']
    started = time.monotonic()
    if not key_accepted(presented_key(request.headers), cfg.client_keys):
        metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key (send Authorization: Bearer <key> or x-api-key)',
                            'invalid_request_error', code='invalid_api_key')
    body = await request.read()
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
            status, response = await relay(request, model, body)
            return response
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
        metrics.observe(name, status, time.monotonic() - started)
        log.info('%s %s model=%s status=%s %.1fms', request.method, request.path, name, status,
                 (time.monotonic() - started) * 1000)


async def relay(request, model, body):
    """Send body to the backend and relay its answer as it arrives. Returns (status, response)."""
    b = model.backend
    headers = probe.auth_headers(probe.PROFILES[b.kind][2], b.key)
    headers['Content-Type'] = request.headers.get('Content-Type', 'application/json')
    if 'Accept' in request.headers:
        headers['Accept'] = request.headers['Accept']
    answer = response = None
    try:
        answer = await b.upstream.request('POST', request.path_qs, headers, body, timeout=b.read_timeout)
        ctype = answer.headers.get('content-type', 'application/octet-stream')
        if answer.length is not None and not ctype.startswith('text/event-stream'):
            data = await answer.read()
            return answer.status, web.Response(body=data, status=answer.status, headers={'Content-Type': ctype})
        response = web.StreamResponse(status=answer.status, headers={'Content-Type': ctype})
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in answer.chunks():
            await response.write(chunk)
        await response.write_eof()
        return answer.status, response
    except UpstreamError as e:
        why = 'backend %s (%s) failed during the request: %s' % (b.name, b.url, e)
        request.app['board'].backend_failed(b, why)
        log.error('%s', why)
        if response is not None and response.prepared:
            raise                            # headers already sent: the only honest signal is to cut it
        return 502, openai_error(502, why, 'api_error', code='backend_error')
    finally:
        if answer is not None:
            answer.release()                 # pooled if read to the end, else closed (client gone, error)


# ---------------------------------------------------------------------------------------------
# HTTP app: models list, health, metrics
# ---------------------------------------------------------------------------------------------

async def list_models(request):
    cfg = request.app['cfg']
    if not key_accepted(presented_key(request.headers), cfg.client_keys):
        request.app['metrics'].client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    data = [{'id': m.name, 'object': 'model', 'created': 0, 'owned_by': m.backend.name}
            for m in cfg.models.values()]
    return web.json_response({'object': 'list', 'data': data})


async def health(request):
    """Liveness without auth: names and states only, never a key or a key's variable value."""
    cfg, board = request.app['cfg'], request.app['board']
    active = [b for b in cfg.backends.values() if b.state == 'ready']
    return web.json_response({
        'status': 'ok',
        'swap_policy': cfg.swap_policy,
        'swapping_to': board.swap.model.name if board.swap else None,
        'active_backends': [b.name for b in active],
        'backends': {b.name: {'kind': b.kind, 'unit': b.unit, 'state': b.state, 'loaded': b.loaded,
                              'in_flight': b.inflight, 'drained': b.drained,
                              'resume_pending': b.resume_pending, 'last_error': b.last_error or None}
                     for b in cfg.backends.values()},
    })


async def metrics_endpoint(request):
    cfg = request.app['cfg']
    if not key_accepted(presented_key(request.headers), cfg.client_keys):
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    return web.Response(text=request.app['metrics'].render(), content_type='text/plain', charset='utf-8')


async def expect_continue(request):
    """Answer ``Expect: 100-continue``; refuse any other expectation without echoing it."""
    if request.headers.get('Expect', '').lower() != '100-continue':
        raise web.HTTPExpectationFailed(text='Unsupported Expect header')
    await request.writer.write(b'HTTP/1.1 100 Continue\r\n\r\n')
    request.writer.output_size = 0


# ---------------------------------------------------------------------------------------------
# Admin endpoints: only on the unix socket ``admin_socket`` (its file mode is the auth)
# ---------------------------------------------------------------------------------------------

def _on_admin_socket(request):
    """True for a request that came in over the unix socket (its sockname is a path, not (host, port))."""
    return request.transport is not None and isinstance(request.transport.get_extra_info('sockname'), str)


def _admin_targets(request):
    """The backends an admin request names: /admin/backends/<name>/... or /admin/units/<unit>/..."""
    cfg, name = request.app['cfg'], request.match_info['name']
    if request.match_info['by'] == 'backends':
        return [cfg.backends[name]] if name in cfg.backends else []
    return [b for b in cfg.backends.values() if b.unit == name]


async def admin_action(request):
    if not _on_admin_socket(request):
        raise web.HTTPNotFound()
    board, cfg, action = request.app['board'], request.app['cfg'], request.match_info['action']
    targets = _admin_targets(request)
    if not targets:
        return web.json_response({'error': 'no backend with %s %r' % (
            'name' if request.match_info['by'] == 'backends' else 'unit', request.match_info['name'][:200])},
            status=404)
    names = [b.name for b in targets]
    if action == 'drain':
        try:
            timeout = float(request.query.get('timeout', cfg.drain_timeout))
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= 86400:
            return web.json_response({'error': 'timeout: expected seconds between 0 and 86400'}, status=400)
        started = time.monotonic()
        left = await board.drain(targets, timeout)
        return web.json_response({'drained': names, 'in_flight': left, 'timed_out': left > 0,
                                  'seconds': round(time.monotonic() - started, 3)})
    resumed, refused = await board.resume(targets)
    return web.json_response({'resumed': resumed, 'still_drained_key_refused': refused,
                              'drained': [b.name for b in targets if b.drained]})


async def reload_keys(app):
    """Re-read the keys (key_file over the process environment) and apply them. Only keys change:
    anything else in the config needs a restart. Raises ConfigError and keeps the old keys on error."""
    cfg, board = app['cfg'], app['board']
    if not app['config_path']:
        raise ConfigError('reload: the router was started without a config file path')
    new = load_config(app['config_path'])
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


async def admin_reload(request):
    if not _on_admin_socket(request):
        raise web.HTTPNotFound()
    try:
        async with request.app['reload_lock']:
            return web.json_response(await reload_keys(request.app))
    except ConfigError as e:
        log.error('reload failed, old keys kept: %s', e)
        return web.json_response({'reloaded': False, 'error': str(e)}, status=500)


async def _reload_on_signal(app):
    try:
        async with app['reload_lock']:
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


class OneLineErrors(logging.Filter):
    """aiohttp logs malformed client requests with a traceback whose text can quote the request
    (headers included): keep one line with the error's class name only."""

    def filter(self, record):
        if record.exc_info:
            record.msg = '%s (%s)' % (record.getMessage(), record.exc_info[0].__name__)
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def make_app(cfg, config_path=None):
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app['cfg'] = cfg
    app['config_path'] = config_path
    app['metrics'] = Metrics()

    async def lifecycle(app):
        app['board'] = Switchboard(cfg, app['metrics'])
        app['reload_lock'] = asyncio.Lock()
        loop = asyncio.get_running_loop()
        reloads = set()                  # running SIGHUP reloads (a reference keeps each task alive)

        def on_sighup():
            task = asyncio.ensure_future(_reload_on_signal(app))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        for b in cfg.backends.values():
            b.upstream.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get('/v1/models', list_models)
    for path in PROXIED:
        app.router.add_post(path, proxy, expect_handler=expect_continue)
    app.router.add_get('/health', health)
    app.router.add_get('/metrics', metrics_endpoint)
    # Served on both listeners, answered only on the unix socket (404 over TCP).
    app.router.add_post('/admin/{by:backends|units}/{name}/{action:drain|resume}', admin_action)
    app.router.add_post('/admin/reload', admin_reload)
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description='gpufleet.llm OpenAI-compatible router')
    parser.add_argument('--config', required=True, help='path to the router YAML config')
    parser.add_argument('--check', action='store_true', help='check the config and environment, then exit')
    parser.add_argument('--reload', action='store_true',
                        help='make the running router re-read its keys (over admin_socket), then exit')
    args = parser.parse_args(argv)
    if args.reload:
        return request_reload(args.config)
    logging.basicConfig(stream=sys.stderr, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    logging.getLogger('aiohttp.server').addFilter(OneLineErrors())
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print('llm-router: config error: %s' % e, file=sys.stderr)
        return 2
    log.setLevel(cfg.log_level)
    if args.check:
        print('llm-router: config OK (%d backends, %d models)' % (len(cfg.backends), len(cfg.models)))
        return 0
    log.info('listening on %s:%d, %d backends, %d models, swap policy %s', cfg.host, cfg.port,
             len(cfg.backends), len(cfg.models), cfg.swap_policy)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())     # ~12 % less CPU per request (docs/router.md)
    web.run_app(make_app(cfg, args.config), host=cfg.host, port=cfg.port, path=cfg.admin_socket,
                shutdown_timeout=cfg.shutdown_timeout, access_log=None, print=None, handler_cancellation=True)
    log.info('stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
