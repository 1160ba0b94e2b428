# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""App: the router's state, the one object every handler receives as its first argument (``cfg``,
``metrics``, ``board`` the Switchboard, ``reload_lock``, ``config_path``), the routes from
path and method to handler, the dispatch of one request (App.respond), and serve(): listen, answer
signals, sweep client timeouts, stop gracefully."""

import asyncio
import json
import logging
import os
import signal
import stat
import time

from .admin import ADMIN_RE, admin_action, admin_reload, reload_on_signal
from .auth import Caps, client_of
from .endpoints import health, list_models, metrics_endpoint
from .idle import Idle
from .lifecycle import Switchboard
from .metrics import Metrics
from .proxy import ACCESS, PROXIED, proxy
from .server import Connection, Refused, not_found, openai_error
from .upstream import UpstreamError

log = logging.getLogger('llm_router')


class App:
    """The router's state and its request dispatch."""

    def __init__(self, cfg, config_path=None):
        self.cfg, self.config_path = cfg, config_path
        self.metrics = Metrics()
        self.board = Switchboard(cfg, self.metrics)
        self.idle = Idle(cfg, self.board, self.metrics)    # idle unload (ttl) and preload
        self.caps = Caps()               # proxied requests in flight per key name (max_concurrent)
        self.reload_lock = asyncio.Lock()
        self.connections = set()
        self.max_clients = None          # client connections at most (serve(): from the open-file limit)
        self.stopping = False
        get = {'GET': None, 'HEAD': None}
        self.routes = {'/v1/models': dict.fromkeys(get, list_models), '/health': dict.fromkeys(get, health),
                       '/metrics': dict.fromkeys(get, metrics_endpoint), '/admin/reload': {'POST': admin_reload}}
        for path in PROXIED:
            self.routes[path] = {'POST': proxy}
        # Paths whose every answer needs a client key (their handlers check it too).
        self.keyed = frozenset(PROXIED) | {'/v1/models', '/metrics'}

    def head_check(self, conn, req):
        """Raise server.Refused (401, then close) for a request with a body to a keyed path without an
        accepted client key, as soon as its head is read (server.Connection): nothing of its body is
        read. The verdict stays on req (auth.client_of) for its handler."""
        has_body = req.headers.get('content-length', '0') != '0' or 'transfer-encoding' in req.headers \
            or 'expect' in req.headers
        if has_body and not conn.admin and req.path in self.keyed and client_of(self, req) is None:
            self.metrics.client_auth_failures += 1
            raise Refused(401, 'Invalid or missing API key', 'invalid_api_key')

    async def respond(self, conn, req):
        """Answer one request (any failure of a handler is a 500 or a cut stream, never a crash)."""
        conn.answered = False
        if req.refused is not None:
            status, message, code = req.refused
            conn.send(req, openai_error(status, message, 'invalid_request_error', code=code))
            return
        if req.path.startswith('/admin/') and not conn.admin:
            conn.send(req, not_found())  # over TCP the admin endpoints do not exist, whatever the method
            return
        methods = self.routes.get(req.path)
        if methods is None and req.path.startswith('/admin/') and ADMIN_RE.match(req.path):
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


_FULL = json.dumps({'error': {'message': 'The router serves as many connections as it may; retry in a few seconds',
                              'type': 'api_error', 'param': None, 'code': 'too_many_connections'}}).encode()
FULL = (b'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json; charset=utf-8\r\n'
        b'Content-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(_FULL), _FULL))


class Full(asyncio.Protocol):
    """A client connection over the cap: 503 + Retry-After at once, then closed (nothing is read)."""

    def connection_made(self, transport):
        transport.write(FULL)
        transport.close()


def client_cap(open_files):
    """Client connections the router accepts with open_files descriptors: the rest (an eighth, at
    least 64) stays for backend connections, systemctl, the log and the admin socket."""
    return max(1, open_files - max(64, open_files // 8))


async def serve(cfg, config_path, open_files=None):
    """Listen until SIGTERM/SIGINT, then stop accepting, let requests in flight finish within
    shutdown_timeout, and cancel what is left. Over the client cap (client_cap(open_files)) a new
    connection gets 503 + Retry-After and is closed."""
    loop = asyncio.get_running_loop()
    app = App(cfg, config_path)
    if open_files is not None:
        app.max_clients = client_cap(open_files)
    stop = asyncio.Event()
    reloads = set()                      # running SIGHUP reloads (a reference keeps each task alive)

    def on_sighup():
        task = asyncio.ensure_future(reload_on_signal(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def client():
        if app.max_clients is None or len(app.connections) < app.max_clients:
            return Connection(app, False)
        app.metrics.clients_refused += 1    # the cap keeps descriptors for backends and the admin socket
        return Full()

    servers = [await loop.create_server(client, cfg.host, cfg.port, backlog=1024)]
    if cfg.admin_socket:
        if os.path.exists(cfg.admin_socket) and stat.S_ISSOCK(os.stat(cfg.admin_socket).st_mode):
            os.unlink(cfg.admin_socket)  # left over by a router that did not stop cleanly
        servers.append(await loop.create_unix_server(lambda: Connection(app, True), cfg.admin_socket))
    app.idle.start()                     # preload runs while the router already serves
    every = min(max(cfg.client_timeout / 5, 0.05), 15.0)   # a cut comes at most T/5 late
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            app.sweep()
    app.stopping = True
    app.idle.stop()
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
