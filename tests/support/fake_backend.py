# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A scriptable stand-in for TabbyAPI, llama.cpp, SGLang and vLLM on 127.0.0.1.

It answers the way the real servers answer (their sources; the real llama-server and TabbyAPI
in the integration tests): the same paths, the same
headers checked the same way, the same status codes and the same error bodies. Tests change its
state (model loaded, loading, keys) while a waiter polls it, to script "refused, then 503, then
ready" stories. Standard library only, so tests, integration plays and the bench can all use it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (so connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class FakeBackend:
    """One backend of a given kind.

    kind: tabbyapi | llamacpp | sglang | vllm
    keys: accepted keys (empty: auth disabled)
    model: loaded model id (None: no model loaded)
    loading: llama.cpp/SGLang start-up phase (503 everywhere / on health)
    delay: seconds to sleep before every answer (to provoke request timeouts)
    tls: (certificate file, key file) to serve HTTPS instead of HTTP
    forced: (status, body) to answer on every path instead, e.g. a proxy's 403
    """

    def __init__(self, kind='tabbyapi', keys=('right-key',), model=None, loading=False, port=None, tls=None):
        if kind not in ('tabbyapi', 'llamacpp', 'sglang', 'vllm'):
            raise ValueError('unknown kind %s' % kind)
        self.kind = kind
        self.keys = set(keys)
        self.model = model
        self.loading = loading
        self.delay = 0.0
        self.forced = None
        self.port = port or free_port()
        self.tls = tls          # (certificate file, key file) to serve HTTPS
        self.url = '%s://127.0.0.1:%d' % ('https' if tls else 'http', self.port)
        self.requests = []      # (monotonic time, method, path, headers dict, status)
        self._server = None
        self._thread = None
        self._timers = []
        self._after = []
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, after=0.0):
        """Bind and serve now, or `after` seconds from now (connections are refused until then)."""
        if after:
            self._later(after, self.start)
            return self
        backend = self

        class Handler(_Handler):
            pass

        Handler.backend = backend
        self._server = ThreadingHTTPServer(('127.0.0.1', self.port), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.01})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self):
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def at(self, seconds, **changes):
        """Change attributes (model=..., loading=..., keys=...) `seconds` from now."""
        def apply():
            with self._lock:
                for name, value in changes.items():
                    setattr(self, name, set(value) if name == 'keys' else value)
        self._later(seconds, apply)

    def after_requests(self, count, **changes):
        """Change attributes once `count` requests have been answered (independent of start-up times)."""
        with self._lock:
            self._after.append((count, changes))

    def _apply_due_changes(self):
        for count, changes in list(self._after):
            if len(self.requests) >= count:
                self._after.remove((count, changes))
                for name, value in changes.items():
                    setattr(self, name, set(value) if name == 'keys' else value)

    def _later(self, seconds, fn):
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- answers ---------------------------------------------------------------------------------
    def answer(self, method, path, headers):
        """(status, body dict) for one request, as the real backend would answer it."""
        with self._lock:
            self._apply_due_changes()
            if self.forced:
                return self.forced
            return getattr(self, '_' + self.kind)(method, path, headers)

    def _tabbyapi(self, method, path, headers):
        if path == '/health':
            return 200, {'status': 'healthy', 'issues': []}
        if path not in ('/v1/model', '/v1/models', '/v1/model/list'):
            return 404, {'detail': 'Not Found'}
        refused = self._tabby_auth(headers)
        if refused:
            return 401, {'detail': refused}
        if path == '/v1/model':
            if self.model is None:
                return 503, {'detail': 'No models are currently loaded.'}
            return 200, {'id': self.model, 'object': 'model', 'created': 1764000000, 'owned_by': 'tabbyAPI',
                         'parameters': {'max_seq_len': 4096}}
        data = [{'id': self.model, 'object': 'model', 'created': 1764000000, 'owned_by': 'tabbyAPI'}] if self.model else []
        return 200, {'object': 'list', 'data': data}

    def _tabby_auth(self, headers):
        """TabbyAPI's check: x-api-key first, else Authorization: Bearer; None when accepted."""
        if not self.keys:
            return None
        x_api_key = headers.get('x-api-key')
        if x_api_key:
            return None if x_api_key in self.keys else 'Invalid API key'
        authorization = headers.get('authorization')
        if authorization:
            scheme, _sep, key = authorization.partition(' ')
            if scheme.lower() != 'bearer' or key not in self.keys:
                return 'Invalid API key'
            return None
        return 'Please provide an API key'

    def _llamacpp(self, method, path, headers):
        if self.loading:
            return 503, {'error': {'code': 503, 'message': 'Loading model', 'type': 'unavailable_error'}}
        public = ('/health', '/v1/health', '/models', '/v1/models')
        if path not in public and self.keys:
            key = headers.get('authorization') or headers.get('x-api-key') or ''
            if key.startswith('Bearer '):
                key = key[len('Bearer '):]
            if key not in self.keys:
                return 401, {'error': {'message': 'Invalid API Key', 'type': 'authentication_error', 'code': 401}}
        if path in ('/health', '/v1/health'):
            return 200, {'status': 'ok'}
        if path in ('/models', '/v1/models'):
            return 200, {'object': 'list', 'data': [{'id': self.model, 'object': 'model', 'owned_by': 'llamacpp'}]}
        if path == '/props':
            return 200, {'model_path': '/srv/models/%s' % self.model, 'total_slots': 1,
                         'default_generation_settings': {'n_ctx': 4096}}
        return 404, {'error': {'code': 404, 'message': 'File Not Found', 'type': 'not_found_error'}}

    def _openai_like(self, headers, accepted_headers):
        if not self.keys:
            return None
        for name in accepted_headers:
            value = headers.get(name)
            if name == 'authorization' and value and value.startswith('Bearer '):
                value = value[len('Bearer '):]
            if value and value in self.keys:
                return None
        return 401, {'error': 'Unauthorized'}

    def _sglang(self, method, path, headers):
        if path.startswith(('/health', '/ready', '/metrics')):
            return (503, {}) if self.loading else (200, {})
        refused = self._openai_like(headers, ('authorization', 'x-api-key'))
        if refused:
            return refused
        if path == '/v1/models':
            return 200, {'object': 'list', 'data': [{'id': self.model, 'object': 'model', 'owned_by': 'sglang'}]}
        return 404, {'detail': 'Not Found'}

    def _vllm(self, method, path, headers):
        if path == '/health':
            return 200, {}
        if path.startswith('/v1'):
            refused = self._openai_like(headers, ('authorization',))
            if refused:
                return refused
        if path == '/v1/models':
            return 200, {'object': 'list', 'data': [{'id': self.model, 'object': 'model', 'owned_by': 'vllm'}]}
        return 404, {'detail': 'Not Found'}


class _Handler(BaseHTTPRequestHandler):
    backend = None
    protocol_version = 'HTTP/1.1'

    def do_GET(self):
        self._serve('GET')

    def do_POST(self):
        self._serve('POST')

    def _serve(self, method):
        backend = self.backend
        if backend.delay:
            time.sleep(backend.delay)
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        path = self.path.split('?', 1)[0]
        status, body = backend.answer(method, path, headers)
        backend.requests.append((time.monotonic(), method, path, headers, status))
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def main(argv=None):
    """Serve one fake backend in the foreground (used inside systemd test hosts)."""
    import argparse
    parser = argparse.ArgumentParser(description='Serve a fake LLM backend on 127.0.0.1.')
    parser.add_argument('--kind', default='tabbyapi')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--key', action='append', default=[])
    parser.add_argument('--model')
    parser.add_argument('--load-after', type=float, default=0.0, help='seconds until the model is loaded')
    args = parser.parse_args(argv)
    fake = FakeBackend(args.kind, keys=args.key, model=None if args.load_after else args.model, port=args.port)
    if args.load_after:
        fake.at(args.load_after, model=args.model, loading=False)
        fake.loading = True
    fake.start()
    print('serving %s on %s' % (args.kind, fake.url), flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        fake.stop()


if __name__ == '__main__':
    main()
