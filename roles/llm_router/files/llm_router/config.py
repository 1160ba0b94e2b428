# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Config: the YAML file (``--config``) and the key file, checked into a Config of Backends and
Models, or one ConfigError whose message names the field (and never holds a secret)."""

import asyncio
import math
import os
import re
from dataclasses import dataclass, field

import yaml

from . import _backend_probe as probe

CLIENT_KEYS_ENV = 'LLM_ROUTER_CLIENT_API_KEYS'   # flat: key,key,... (named client-1, client-2, ... by position)
NAMED_KEYS_ENV = 'LLM_ROUTER_CLIENT_KEYS'        # named: name:key,name:key,... (a name may have several keys)
KINDS = tuple(sorted(probe.PROFILES))           # tabbyapi, llamacpp, sglang, vllm, openai
POLICIES = ('exclusive', 'shared')
_UNIT_RE = re.compile(r'^[A-Za-z0-9:_.\\@-]+\.service$')
_ENV_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z')
_NAME_RULE = '1-64 letters, digits, _ . @ -, starting with a letter or digit'


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
    ttl: float | None = None       # seconds idle before an unload (idle.py); 0: never; None: default_ttl
    # Run-time state, owned by the Switchboard.
    state: str = 'unknown'         # unknown | starting | ready | stopped | failed
    drained: bool = False          # admin drain: new requests get 503 + Retry-After, no swap touches it
    resume_pending: bool = False   # a resume found the router's key refused: resumed by the next key reload
    loaded: str | None = None      # model id the backend reported (TabbyAPI: what we loaded)
    last_error: str = ''
    failures: int = 0              # failed starts in a row (the back-off doubles with each)
    retry_at: float = 0.0          # monotonic time before which a failed backend is not started again
    ready_since: float = -math.inf  # monotonic time a swap last made it ready (min_residency counts from it)
    inflight: int = 0
    idle: asyncio.Event | None = None
    upstream: 'Upstream | None' = None   # this backend's connection pool
    last_used: float = 0.0         # monotonic time its last request ended (idle.py)


@dataclass
class Model:
    name: str                      # what clients send
    backend: Backend
    backend_model: str             # the backend's own id (TabbyAPI: the model_dir entry to load)
    ttl: float | None = None       # seconds idle before its backend is unloaded; None: the backend's ttl


@dataclass
class Client:
    """What the keys of one name may do (config ``clients``; a name not listed there may do everything)."""
    name: str
    models: frozenset | None = None    # the models it may use and list; None: every model
    metrics: bool = True               # may read /metrics
    health: bool = True                # gets the detailed /health
    max_concurrent: int = 0            # proxied requests in flight at most, over all its keys; 0: no cap

    def may_use(self, model):
        return self.models is None or model in self.models


@dataclass
class ClientKey:
    name: str
    key: str = field(repr=False)
    client: Client = None


@dataclass
class Config:
    host: str
    port: int
    backends: dict
    models: dict
    client_keys: list = field(repr=False)   # ClientKey entries (current and grace-window keys)
    swap_policy: str = 'exclusive'
    readiness_timeout: float = 300.0
    drain_timeout: float = 300.0
    shutdown_timeout: float = 30.0
    systemctl: list = field(default_factory=lambda: ['/usr/bin/systemctl'])
    log_level: str = 'INFO'
    admin_socket: str | None = None    # unix socket of the admin endpoints (drain, resume, reload)
    key_file: str | None = None        # NAME="value" lines read at start and at every reload
    retry_after: int = 5               # Retry-After (seconds) of the 503 for a drained backend
    failure_backoff: float = 30.0      # seconds a backend that failed to start is refused (doubling, at most 8x)
    min_residency: float = 30.0        # seconds a backend a swap made ready serves before a swap may close it
    client_timeout: float = 75.0       # seconds a client may keep the router waiting (see server.py)
    default_ttl: float = 0.0           # seconds idle before an unload when neither model nor backend says; 0: never
    preload: list = field(default_factory=list)   # Models started and gated at start, in order (idle.py)


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


def _ttl(mapping, where):
    """A ttl: seconds (0 = never unload), or None when not set."""
    name = '%s.ttl' % where if where else 'default_ttl'
    value = mapping.get('ttl' if where else 'default_ttl')
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError('%s: expected seconds (a number, 0 = never unload), got %s' % (name, type(value).__name__))
    if not math.isfinite(value) or value < 0:
        raise ConfigError('%s: must be 0 (never unload) or more seconds, got %s' % (name, value))
    return float(value)


def _unloadable(b):
    """The router can unload b when idle: TabbyAPI's model through its admin API, or b's own unit."""
    return b.kind == 'tabbyapi' or b.unit is not None


def _preload(data, models, policy):
    """The preload list: model names, each once; under the exclusive policy at most one model whose
    backend has a unit (only one of those runs at a time), and one model per TabbyAPI backend."""
    names = _get(data, 'preload', '', list, [])
    out, taken = [], {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in models:
            raise ConfigError('preload[%d]: unknown model %r (not in models)' % (i, name))
        m = models[name]
        if any(o.name == m.name for o in out):
            raise ConfigError('preload[%d]: model %s is listed twice' % (i, name))
        if m.backend.kind == 'tabbyapi' and m.backend.name in taken:
            raise ConfigError('preload[%d]: models %s and %s are on the same TabbyAPI backend %s, which holds one '
                              'model at a time' % (i, taken[m.backend.name], name, m.backend.name))
        taken[m.backend.name] = name
        out.append(m)
    units = [m for m in out if m.backend.unit]
    if policy == 'exclusive' and len({m.backend.name for m in units}) > 1:
        raise ConfigError('preload: with swap_policy exclusive only one backend with a unit runs at a time; got %s'
                          % ', '.join('%s (backend %s)' % (m.name, m.backend.name) for m in units))
    return out


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
                       'admin_socket', 'key_file', 'retry_after', 'client_timeout', 'failure_backoff',
                       'min_residency', 'default_ttl', 'preload', 'clients'), '')
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
        _no_unknown(spec, ('kind', 'url', 'unit', 'key_env', 'connect_timeout', 'read_timeout', 'ttl'), where)
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
            read_timeout=_get(spec, 'read_timeout', where, float, 600.0), ttl=_ttl(spec, where))
        if backends[name].ttl and not _unloadable(backends[name]):
            raise ConfigError('%s.ttl: the backend has no unit, and the router stops only the units it '
                              'manages (set unit, or remove ttl)' % where)

    models = {}
    raw_models = _get(data, 'models', '', dict, required=True)
    if not raw_models:
        raise ConfigError('models: at least one model is required')
    for name, spec in raw_models.items():
        where = 'models.%s' % _show(name)
        if not isinstance(spec, dict):
            raise ConfigError('%s: expected a mapping' % where)
        _no_unknown(spec, ('backend', 'model', 'ttl'), where)
        bname = _get(spec, 'backend', where, str, required=True)
        if bname not in backends:
            raise ConfigError('%s.backend: unknown backend %r' % (where, bname))
        models[str(name)] = Model(str(name), backends[bname], _get(spec, 'model', where, str, str(name)),
                                  ttl=_ttl(spec, where))
        if models[str(name)].ttl and not _unloadable(backends[bname]):
            raise ConfigError('%s.ttl: backend %s has no unit, and the router stops only the units it manages '
                              '(set its unit, or remove ttl)' % (where, bname))

    policy = _get(data, 'swap_policy', '', str, 'exclusive')
    if policy not in POLICIES:
        raise ConfigError('swap_policy: must be one of %s, got %r' % (', '.join(POLICIES), policy))
    systemctl = _get(data, 'systemctl', '', list, ['/usr/bin/systemctl'])
    if not systemctl or not all(isinstance(a, str) and a for a in systemctl):
        raise ConfigError('systemctl: expected a non-empty list of strings (a command and its arguments)')
    level = _get(data, 'log_level', '', str, 'INFO').upper()
    if level not in ('DEBUG', 'INFO', 'WARNING', 'ERROR'):
        raise ConfigError('log_level: must be DEBUG, INFO, WARNING or ERROR, got %r' % level)

    keys = parse_client_keys(data, environ, models)
    paths = {}
    for name in ('admin_socket', 'key_file'):
        paths[name] = _get(data, name, '', str)
        if paths[name] is not None and not paths[name].startswith('/'):
            raise ConfigError('%s: expected an absolute path, got %r' % (name, paths[name]))
    retry_after = _get(data, 'retry_after', '', int, 5)
    if not 0 < retry_after <= 3600:
        raise ConfigError('retry_after: must be 1-3600 seconds, got %d' % retry_after)
    failure_backoff = _get(data, 'failure_backoff', '', float, 30.0)
    if failure_backoff > 3600:
        raise ConfigError('failure_backoff: must be at most 3600 seconds, got %g' % failure_backoff)

    min_residency = data.get('min_residency')
    min_residency = 30.0 if min_residency is None else min_residency
    if isinstance(min_residency, bool) or not isinstance(min_residency, (int, float)):
        raise ConfigError('min_residency: expected float, got %s' % type(min_residency).__name__)
    if not 0 <= min_residency <= 3600:          # NaN fails this test too
        raise ConfigError('min_residency: must be 0 (no wait) to 3600 seconds, got %g' % min_residency)

    return Config(
        host=host, port=port, backends=backends, models=models, client_keys=keys,
        swap_policy=policy,
        readiness_timeout=_get(data, 'readiness_timeout', '', float, 300.0),
        drain_timeout=_get(data, 'drain_timeout', '', float, 300.0),
        shutdown_timeout=_get(data, 'shutdown_timeout', '', float, 30.0),
        systemctl=systemctl, log_level=level, admin_socket=paths['admin_socket'],
        key_file=paths['key_file'], retry_after=retry_after, failure_backoff=failure_backoff,
        min_residency=float(min_residency), client_timeout=_get(data, 'client_timeout', '', float, 75.0),
        default_ttl=_ttl(data, '') or 0.0, preload=_preload(data, models, policy))


def parse_client_keys(data, environ, models):
    """The client keys (flat and named, from the environment) with what each name may do (``clients``);
    errors name the variable, the entry's position or the field, never a key."""
    flat = [k.strip() for k in environ.get(CLIENT_KEYS_ENV, '').split(',') if k.strip()]
    pairs = [('client-%d' % i, k) for i, k in enumerate(flat, 1)]
    named = [e.strip() for e in environ.get(NAMED_KEYS_ENV, '').split(',') if e.strip()]
    for number, entry in enumerate(named, 1):
        name, sep, key = entry.partition(':')
        if not sep or not key.strip() or not _NAME_RE.match(name.strip()):
            raise ConfigError('%s: entry %d is not name:key (a name is %s)' % (NAMED_KEYS_ENV, number, _NAME_RULE))
        pairs.append((name.strip(), key.strip()))
    if not pairs:
        raise ConfigError('%s: environment variable is not set or holds no key' % CLIENT_KEYS_ENV
                          + (' (nor %s)' % NAMED_KEYS_ENV if NAMED_KEYS_ENV in environ else ''))
    clients = {}
    for name, spec in _get(data, 'clients', '', dict, {}).items():
        where = 'clients.%s' % _show(name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError('%s: not a key name (%s)' % (where, _NAME_RULE))
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError('%s: expected a mapping' % where)
        _no_unknown(spec, ('models', 'metrics', 'health', 'max_concurrent'), where)
        allowed = _get(spec, 'models', where, list)
        for m in allowed or ():
            if not isinstance(m, str) or m not in models:
                raise ConfigError('%s.models: unknown model %s' % (where, _show(m)))
        cap = _get(spec, 'max_concurrent', where, int, 0)
        if not 0 <= cap <= 100000:
            raise ConfigError('%s.max_concurrent: must be 0 (no cap) to 100000, got %d' % (where, cap))
        if name not in {n for n, k in pairs}:
            raise ConfigError('%s: no client key has this name (%s, %s)' % (where, NAMED_KEYS_ENV, CLIENT_KEYS_ENV))
        clients[name] = Client(name, None if allowed is None else frozenset(allowed),
                               _get(spec, 'metrics', where, bool, True), _get(spec, 'health', where, bool, True), cap)
    return [ClientKey(name, key, clients.get(name) or Client(name)) for name, key in pairs]


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
