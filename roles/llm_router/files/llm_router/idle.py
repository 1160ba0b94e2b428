# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idle unload and preload (docs/router.md, "Idle unload and preload").

A backend with a ttl is unloaded once it has had no request in flight and none for ttl seconds:
TabbyAPI's model through its admin API (POST /v1/model/unload with the admin key; the process keeps
running), any other backend by stopping its unit (only backends with ``unit:``, the ones the router
manages). The unload runs as the Switchboard's swap in progress (Switchboard.hold): a request that
arrives meanwhile waits for it and then starts the backend again, as after any stop; it never gets
an error from the unload. A drained backend is never unloaded (planned maintenance owns it), nor one
whose ttl is 0 (never) or not set anywhere.

The ttl of a backend is that of the models it holds (TabbyAPI: the loaded one; others: each of its
models), each model's own ``ttl``, else its backend's ``ttl``, else ``default_ttl``; the longest wins
and 0 (never) beats any number.

``preload``: the models started (and gated: made ready as for a request) when the router starts, in
order, while it already serves; a failure is logged and the router serves the other models.
"""

import asyncio
import logging
import time

from . import _backend_probe as probe
from .lifecycle import SwapError
from .upstream import UpstreamError

log = logging.getLogger('llm_router')

TICK = 1.0                       # the watcher looks again at least this often (seconds)


class Idle:
    """The idle watcher and the preload of one router (App.idle)."""

    def __init__(self, cfg, board, metrics):
        self.cfg, self.board, self.metrics = cfg, board, metrics
        self.ready_since = {}    # backend name -> monotonic time the watcher first saw it ready
        self.tasks = []

    # -- what is due -------------------------------------------------------------------------------

    def held(self, b):
        """The models b holds now: TabbyAPI the loaded one, any other backend all of its models."""
        return [m for m in self.cfg.models.values()
                if m.backend is b and (b.kind != 'tabbyapi' or m.backend_model == b.loaded)]

    def ttl(self, b):
        """Seconds idle before b is unloaded, or None (never: no ttl, ttl 0, or nothing to unload)."""
        if b.kind != 'tabbyapi' and not b.unit:
            return None
        ttls = [next(t for t in (m.ttl, b.ttl, self.cfg.default_ttl) if t is not None) for m in self.held(b)]
        return None if not ttls or 0 in ttls else max(ttls)

    def unload_in(self, b, now=None):
        """Seconds until b is unloaded (0 when due), or None when it is not counting down: no ttl,
        nothing loaded, drained, or requests in flight."""
        now = time.monotonic() if now is None else now
        if b.state != 'ready' or b.drained or (b.kind == 'tabbyapi' and b.loaded is None):
            self.ready_since.pop(b.name, None)
            return None
        since = self.ready_since.setdefault(b.name, now)
        ttl = self.ttl(b)
        if ttl is None or b.inflight > 0:
            return None
        return max(0.0, max(b.last_used, since) + ttl - now)

    # -- the watcher -------------------------------------------------------------------------------

    def start(self):
        cfg = self.cfg
        if cfg.default_ttl or any(b.ttl for b in cfg.backends.values()) or any(m.ttl for m in cfg.models.values()):
            self.tasks.append(asyncio.ensure_future(self.watch()))    # no ttl anywhere: no watcher at all
        if cfg.preload:
            self.tasks.append(asyncio.ensure_future(self.preload()))

    def stop(self):
        for task in self.tasks:
            task.cancel()

    async def watch(self):
        while True:
            try:
                wait = self.look()
            except Exception:            # pylint: disable=broad-exception-caught
                log.exception('idle watcher: unexpected error (it looks again in %g s)', TICK)
                wait = TICK
            await asyncio.sleep(wait)

    def look(self):
        """Begin the unload of a backend that is due; return the seconds until the next look."""
        wait = TICK
        for b in self.cfg.backends.values():
            left = self.unload_in(b)
            if left is None:
                continue
            if left > 0:
                wait = min(wait, left)
            elif self.board.swap is None:         # checked and begun in one step: no request slips in
                self.begin(b)
            else:
                wait = min(wait, 0.1)             # a swap runs: look again soon
        return wait

    def begin(self, b):
        models = self.held(b)
        ttl = self.ttl(b)
        b.state = 'unloading'
        self.ready_since.pop(b.name, None)
        self.board.hold(models[0], self.unload(b, models[0], ttl))

    async def unload(self, b, model, ttl):
        """Unload b; never raises (a waiting request then starts b again, or finds out why not)."""
        started = time.monotonic()
        what = 'model %s' % b.loaded if b.kind == 'tabbyapi' else 'unit %s' % b.unit
        log.info('backend %s idle for %g s (ttl): unloading %s', b.name, ttl, what)
        try:
            if b.kind == 'tabbyapi':
                await self.tabby_unload(b)
                b.state, b.loaded = 'unknown', None    # the process runs on: checked again before a request
            else:
                await self.board.stop_unit(b)
        except SwapError as e:
            b.state, b.last_error = 'unknown', 'idle unload failed: %s' % e.message
            log.error('backend %s: idle unload of %s failed: %s', b.name, what, e.message)
            return
        except Exception:                # pylint: disable=broad-exception-caught
            b.state, b.last_error = 'unknown', 'idle unload failed (see the router log)'
            log.exception('backend %s: idle unload of %s failed', b.name, what)
            return
        self.metrics.unload(b.name, model.name, 'ttl')
        log.info('backend %s unloaded (%s) after %.2f s', b.name, what, time.monotonic() - started)

    async def tabby_unload(self, b):
        """POST /v1/model/unload with the admin key; 503 "No models are currently loaded." is done too."""
        headers = probe.auth_headers('x-admin-key', b.key)
        answer = None
        try:
            answer = await b.upstream.request('POST', '/v1/model/unload', headers, b'',
                                              timeout=self.cfg.readiness_timeout)
            body, status = await answer.read(), answer.status
        except UpstreamError as e:
            raise SwapError(502, 'POST /v1/model/unload failed: %s' % e, 'backend_error') from None
        finally:
            if answer is not None:
                answer.release()
        if status in probe.DEFAULT_REJECT_STATUSES:
            self.metrics.backend_auth_failures[b.name] = self.metrics.backend_auth_failures.get(b.name, 0) + 1
        if status >= 400 and status != 503:
            raise SwapError(502, 'POST /v1/model/unload answered %s %s (the router\'s key for this backend comes '
                            'from %s)' % (status, probe.server_message(body), b.key_env or 'no key_env'),
                            'backend_error')

    # -- preload -----------------------------------------------------------------------------------

    async def preload(self):
        for model in self.cfg.preload:
            b = model.backend
            log.info('preload: starting model %s on backend %s', model.name, b.name)
            try:
                await self.board.acquire(model)
            except SwapError as e:
                log.error('preload: model %s on backend %s failed, the router serves the other models: %s',
                          model.name, b.name, e.message)
                continue
            except Exception:            # pylint: disable=broad-exception-caught
                log.exception('preload: model %s on backend %s failed', model.name, b.name)
                continue
            self.board.release(b)        # the idle clock starts now
            log.info('preload: model %s ready on backend %s', model.name, b.name)
