# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Admin endpoints: only on the unix socket ``admin_socket`` (its file mode is the auth): drain and
resume a backend for planned maintenance, re-read the keys (POST /admin/reload, SIGHUP), and the
client side of that reload (``--reload``, what ExecReload runs)."""

import logging
import re
import socket
import sys
import time
import urllib.parse

import yaml

from .config import ConfigError, load_config
from .server import json_reply, not_found

log = logging.getLogger('llm_router')

ADMIN_RE = re.compile(r'/admin/(backends|units)/([^/]+)/(drain|resume)\Z')


def _admin_targets(app, by, name):
    """The backends an admin request names: /admin/backends/<name>/... or /admin/units/<unit>/..."""
    if by == 'backends':
        return [app.cfg.backends[name]] if name in app.cfg.backends else []
    return [b for b in app.cfg.backends.values() if b.unit == name]


async def admin_action(app, req):
    match = ADMIN_RE.match(req.path)
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
            b.failures, b.retry_at = 0, 0.0   # a new key may be the repair: no back-off for it
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


async def reload_on_signal(app):
    try:
        async with app.reload_lock:
            await reload_keys(app)
    except ConfigError as e:
        log.error('reload (SIGHUP) failed, old keys kept: %s', e)


def request_reload(config_path):
    """``python -m llm_router --reload``: ask the running router over its admin socket to re-read the keys;
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
