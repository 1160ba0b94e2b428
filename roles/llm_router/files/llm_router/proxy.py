# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Proxy: the handler of the OpenAI endpoints that carry a model (PROXIED). It checks the client's
key (and that key's models and cap on requests in flight), finds the model's backend, has the
Switchboard make it ready, and relays the request and the answer as it arrives, counting for the
metrics its time to first byte and the tokens of its usage object (read from bounded bytes: a whole
answer's head and tail, a stream's last pieces; never chunk by chunk). Also the access log: one INFO
line per proxied request (the key's name, never the key), written in batches."""

import asyncio
import json
import logging
import sys
import time

from . import _backend_probe as probe
from .auth import client_of
from .lifecycle import SwapError
from .metrics import usage_tokens
from .server import Reply, openai_error
from .upstream import RouterOverloaded, UpstreamError

log = logging.getLogger('llm_router')

PROXIED = ('/v1/chat/completions', '/v1/completions', '/v1/embeddings')


async def proxy(app, req):
    cfg, board, metrics = app.cfg, app.board, app.metrics
    started = time.monotonic()
    client = client_of(app, req)
    if client is None:
        metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key (send Authorization: Bearer <key> or x-api-key)',
                            'invalid_request_error', code='invalid_api_key')
    key = client.name                    # the accepted key's name (metrics, access log), never the key
    body = req.body
    try:
        name = json.loads(body).get('model')
    except (ValueError, AttributeError, RecursionError):   # not JSON, not an object, nested too deep
        name = None
    if not isinstance(name, str):
        return openai_error(400, 'The request body must be a JSON object with a "model" string',
                            'invalid_request_error', param='model')
    model = cfg.models.get(name)
    if model is None or not client.may_use(name):    # a key limited to some models: the others do not exist
        metrics.observe('(unknown)', 404, time.monotonic() - started, key)   # bounded label set
        return openai_error(404, 'The model %r does not exist' % name[:100], 'invalid_request_error',
                            code='model_not_found', param='model')
    status = 500
    counted = False
    try:
        counted = app.caps.take(client)
        if not counted:                  # the key's name has max_concurrent requests in flight already
            status = 429
            return openai_error(429, 'Too many requests in flight for the key %s (max_concurrent %d); retry when one '
                                'has finished' % (client.name, client.max_concurrent), 'requests',
                                code='rate_limit_exceeded', retry_after=1)
        try:
            await board.acquire(model)
        except SwapError as e:
            status = e.status
            return e.reply()
        try:
            status, reply = await relay(app, req, model, body, (started, key))
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
        if counted:
            app.caps.give(client)
        elapsed = time.monotonic() - started
        metrics.observe(name, status, elapsed, key)
        if ACCESS.enabled:               # the key's name, never the key
            ACCESS.add('%s %s key=%s model=%s status=%s %.1fms' % (req.method, req.path, key, name, status,
                                                                   elapsed * 1000))


async def relay(app, req, model, body, started_key):
    """Send body to the backend and relay its answer as it arrives. Returns (status, Reply or None);
    None: the answer was streamed to the client already. started_key: (when the request arrived,
    its key's name) for the metrics of the answer (time to first byte, tokens)."""
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
        ok = 200 <= answer.status < 300
        if answer.length is not None and not (ctype or '').startswith('text/event-stream'):
            data = await answer.read()
            app.metrics.first_byte(model.name, time.monotonic() - started_key[0])   # sent once returned
            if ok:
                app.metrics.usage(model.name, started_key[1], usage_tokens(data))
            return answer.status, Reply(answer.status, data, ctype)
        stream = req.conn.stream(req, answer.status, ctype)
        tail = [b'', b'', b'']           # the last three pieces: the usage chunk and [DONE] are in there
        first = True
        async for chunk in answer.chunks():
            if first:
                first = False
                app.metrics.first_byte(model.name, time.monotonic() - started_key[0])
            tail[0], tail[1], tail[2] = tail[1], tail[2], chunk
            if answer.last:
                stream.end(chunk)
            else:
                await stream.write(chunk)
        if not req.conn.answered:
            if first:                    # an empty body: its end is its first byte
                app.metrics.first_byte(model.name, time.monotonic() - started_key[0])
            stream.end()
        if ok:
            app.metrics.usage(model.name, started_key[1], usage_tokens(tail=tail))
        return answer.status, None
    except RouterOverloaded as e:        # the router's own trouble: the backend is not blamed
        log.error('request for backend %s not sent: %s', b.name, e)
        if stream is not None and stream.started:
            raise
        return 503, app.board.overloaded_error(str(e)).reply()
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


class FlushingHandler(logging.StreamHandler):
    """stderr for log records, after the access lines written before them."""

    def emit(self, record):
        ACCESS.flush()
        super().emit(record)


ACCESS = AccessLog()
