# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend lifecycle: the Switchboard knows which backend is active and runs the one swap in progress
(wait for min_residency, drain the backends it must stop, systemctl stop/start, wait until the backend
accepts the router's key, as _backend_probe reads it; scheduling.py: when a swap may close a backend,
and the start limits it clears); it drains and resumes backends for planned maintenance."""

import asyncio
import errno
import json
import logging
import math
import time
from dataclasses import dataclass

from . import _backend_probe as probe
from .config import Model
from .scheduling import Scheduling
from .server import openai_error
from .upstream import RouterOverloaded, Upstream, UpstreamError

log = logging.getLogger('llm_router')


class SwapError(Exception):
    """Why a backend could not be made ready; status is what the client gets (502, 503 or 504)."""

    def __init__(self, status, message, code, retry_after=None, unit_props=None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after
        self.unit_props = unit_props or {}     # a failed systemctl call: the unit's properties after it

    def reply(self):
        return openai_error(self.status, self.message, 'api_error', code=self.code, retry_after=self.retry_after)


@dataclass
class Swap:
    model: Model
    task: asyncio.Task | None
    closed: frozenset              # backends whose new requests wait for this swap
    closing: frozenset = frozenset()   # backends it drains: closed once their min_residency is over
    waiting: bool = False          # waiting for min_residency (nothing closed, stopped or started yet)


class Switchboard(Scheduling):
    """Which backend is active, and the one swap in progress (if any)."""

    unit_error = SwapError

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

    def overloaded_error(self, why):
        """The router's own trouble (out of file descriptors or memory): no backend is blamed for it."""
        return SwapError(503, 'the router is overloaded (%s); retry in a few seconds' % why, 'router_overloaded',
                         retry_after=self.cfg.retry_after)

    def backoff_error(self, b, wait):
        return SwapError(503, 'backend %s failed to start and is not tried again for %d s (failed starts in a row: %d): %s'
                         % (b.name, math.ceil(wait), b.failures, b.last_error), 'backend_backoff',
                         retry_after=max(1, math.ceil(wait)))

    async def acquire(self, model):
        """Return once model's backend is ready and this request is counted in flight."""
        while True:
            b = model.backend
            if b.drained:
                raise self.drained_error(b)
            wait = b.retry_at - time.monotonic()
            if wait > 0 and b.state != 'ready':   # failed to start (and maybe stopped by a swap since)
                # refused at once, and nothing else is stopped for it (the active backend keeps serving)
                raise self.backoff_error(b, wait)
            if self._ready_for(model) and (self.swap is None or b.name not in self.swap.closed):
                b.inflight += 1
                b.idle.clear()
                return
            if self.swap is None:
                self.swap = self._begin_swap(model)
            swap = self.swap
            if swap.task.done():
                # Finished, but its done callback (which clears self.swap) has not run yet: awaiting a
                # done task does not yield, so waiting on it again would spin and freeze the router.
                self.swap = None
            try:
                await asyncio.shield(swap.task)
            except SwapError:
                if swap.model.name == model.name:
                    raise
                # another model's swap failed: try our own on the next turn

    def release(self, backend):
        backend.inflight -= 1
        backend.last_used = time.monotonic()     # the idle clock (idle.py) starts again
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
        closing = {b.name for b in stop}
        if target.kind == 'tabbyapi' and target.loaded not in (None, model.backend_model):
            closing.add(target.name)     # changing the loaded model: drain the old one first
        waiting = self.residency_left([self.cfg.backends[n] for n in closing]) > 0
        swap = Swap(model, None, frozenset() if waiting else frozenset(closing), frozenset(closing), waiting)
        swap.task = asyncio.ensure_future(self._run_swap(swap, stop))
        swap.task.add_done_callback(self._swap_done)
        return swap

    def hold(self, model, coro):
        """Run coro (idle.py's unload of model's backend; it raises no SwapError) as the swap in
        progress: a request for that backend waits for it, then starts the backend again."""
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._swap_done)
        self.swap = Swap(model, task, frozenset((model.backend.name,)))

    async def stop_unit(self, b):
        await self._systemctl('stop', b)
        b.state, b.loaded = 'stopped', None

    def _swap_done(self, task):
        if self.swap is not None and self.swap.task is task:   # not a newer swap begun meanwhile
            self.swap = None
        if not task.cancelled():
            task.exception()             # consumed here; waiters get it through shield()

    async def _run_swap(self, swap, stop):
        model = swap.model
        target, started = model.backend, time.monotonic()
        log.info('swap to model %s on backend %s: draining %s, stopping %s', model.name, target.name,
                 ', '.join(sorted(swap.closing)) or 'nothing', ', '.join(b.unit for b in stop) or 'nothing')
        try:
            await self.wait_residency(swap)
            self._refuse_drained([target] + stop)
            await self._drain([self.cfg.backends[n] for n in swap.closed])
            for b in stop:
                self._refuse_drained([target, b])   # drained meanwhile: its restart is someone else's
                await self._systemctl('stop', b)
                b.state, b.loaded = 'stopped', None
            if target.unit and target.state != 'ready':
                self._refuse_drained([target])
                target.state = 'starting'
                await self.start_unit(target)
            await self._wait_ready(model, started + self.cfg.readiness_timeout)
        except SwapError as e:
            if e.code in ('backend_draining', 'router_overloaded'):   # not the backend's fault: its state stays
                self.metrics.swap(target.name, 'drained' if e.code == 'backend_draining' else 'overloaded',
                                  time.monotonic() - started, model.name)
                log.info('swap to model %s not done: %s', model.name, e.message)
                raise
            target.state, target.last_error = 'failed', e.message
            if e.code != 'backend_busy':         # a drain that timed out is not the target's failure
                target.failures += 1
                backoff = self.cfg.failure_backoff * 2 ** min(target.failures - 1, 3)
                target.retry_at = time.monotonic() + backoff
                e.message += '; not started again for %d s' % math.ceil(backoff)   # last_error: the reason alone
            self.metrics.swap(target.name, 'error', time.monotonic() - started, model.name)
            log.error('swap to model %s failed: %s', model.name, e.message)
            raise
        target.state, target.last_error, target.failures, target.retry_at = 'ready', '', 0, 0.0
        target.ready_since = time.monotonic()
        self.metrics.swap(target.name, 'ok', time.monotonic() - started, model.name)
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
        swap = self.swap                 # one still waiting for min_residency touches nothing drained when it goes on
        touched = swap is not None and (swap.model.backend in backends or any(b.name in swap.closed for b in backends))
        if touched and not swap.waiting:
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
            b.last_error, b.failures, b.retry_at = '', 0, 0.0   # restarted by its owner: try it again
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
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN):
                raise self.overloaded_error('cannot run %s: %s' % (self.cfg.systemctl[0], e.strerror)) from None
            return None, 'cannot run %s: %s' % (self.cfg.systemctl[0], e.strerror)
        try:
            out = (await asyncio.wait_for(proc.communicate(), timeout))[0]
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return None, 'timed out after %g s' % timeout
        return proc.returncode, out.decode('utf-8', 'replace').strip()

    async def unit_state(self, b):
        """The unit's properties, and 'ActiveState=.. ExecMainCode=.. ExecMainStatus=.. Result=.. SubState=..'.
        StatusText: the last lines the key-masking launcher (gpufleet_mask.py) left when its server
        exited (masked; not in the one-line state)."""
        rc, out = await self._run('show', '--property=ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,StatusText',
                                  '--', b.unit, timeout=10)
        if rc != 0:
            return {}, 'systemctl show %s failed: %s' % (b.unit, out)
        props = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
        return props, ' '.join('%s=%s' % kv for kv in sorted(props.items()) if kv[0] != 'StatusText')

    @staticmethod
    def unit_dead(b, props, state, last):
        """A sentence on why the unit will not get ready, or None while it may. A unit in
        auto-restart (its server exited, systemd's Restart= will start it again) is dead: a crash
        during a start is a failure, not a slow start."""
        if not (props.get('ActiveState') in ('failed', 'inactive') or props.get('SubState') in ('exited', 'auto-restart')):
            return None
        code, status = props.get('ExecMainCode', ''), props.get('ExecMainStatus', '')
        how = {'1': 'exited with status %s' % status, '2': 'was killed by signal %s' % status,
               '3': 'dumped core (signal %s)' % status}.get(code, 'stopped')
        lines = props.get('StatusText', '').strip()
        where = (lines if lines.startswith('last lines:') else
                 'its last lines: journalctl -u %s -n 50 --no-pager (as root or in group systemd-journal)' % b.unit)
        return ('backend %s: unit %s is not running (%s): its server %s; last answer: %s; %s'
                % (b.name, b.unit, state, how, last, where))

    async def _systemctl(self, verb, b):
        rc, out = await self._run(verb, '--', b.unit, timeout=self.cfg.readiness_timeout)
        if rc != 0:
            props, state = await self.unit_state(b)
            raise SwapError(502, 'systemctl %s %s failed (%s): %s; unit state: %s'
                            % (verb, b.unit, 'exit %s' % rc if rc is not None else 'did not complete',
                               ' '.join(out.split())[:300], state), 'backend_unit_failed', unit_props=props)

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
            except RouterOverloaded as e:
                raise self.overloaded_error(str(e)) from None
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
                why = self.unit_dead(b, *(await self.unit_state(b)), last)
                if why:
                    raise SwapError(502, why, 'backend_unit_failed')
            if time.monotonic() + delay > deadline:
                raise SwapError(504, 'backend %s at %s not ready after %g s (last answer: %s)'
                                % (b.name, b.url, self.cfg.readiness_timeout, last), 'backend_timeout')
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)     # a server that exits is noticed within a quarter second

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
