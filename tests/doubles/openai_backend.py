# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small, fast OpenAI-compatible inference server for tests and benchmarks (loopback only).

It stands in for the backends the router sits in front of:

* ``--kind openai``   a generic OpenAI-compatible server (SGLang/vLLM style): key as
  ``Authorization: Bearer K`` or ``x-api-key: K``; wrong or missing key -> 401 ``{"error":"Unauthorized"}``;
  ``/health`` public; ``/v1/models`` checks the key.
* ``--kind tabbyapi`` TabbyAPI as its source behaves: ``/health`` open
  (``{"status":"healthy","issues":[]}``); API endpoints take ``x-api-key`` or Bearer, admin endpoints
  ``x-admin-key`` or Bearer; the admin key also works as an API key; every auth failure is 401 with
  ``{"detail":"Please provide an API key"}`` (no key) or ``{"detail":"Invalid API key"}`` (wrong key);
  ``GET /v1/model`` -> 503 ``{"detail":"No models are currently loaded."}`` until a model is loaded;
  ``POST /v1/model/load`` (admin; streams progress; unknown name -> 400, API key only -> 401
  ``{"detail":"Please provide an admin key"}``) and ``POST /v1/model/unload`` (admin; 200 ``null``, or
  503 ``{"detail":"No models are currently loaded."}`` with none loaded, as TabbyAPI's source does).

Answers are deterministic (same request -> same bytes), so a test can compare the bytes it gets
through the router with the bytes it gets directly. ``GET /_stats`` (no key; not part of any real
backend) reports what the double saw: requests, client disconnects, loads, in-flight counts, the
headers and a digest of the last request body.

Streams (``"stream": true``) are aiohttp ``StreamResponse``s: ``prepare()`` sends the status line
and headers at once (aiohttp 3.14: ``_send_headers_immediately``), before the first chunk, as
inference servers do. ``--first-chunk-delay S`` waits S seconds between those headers and the
first chunk (a backend that takes long to produce its first token); ``--chunk-delay S`` waits
between the chunks after it. With ``"stream_options": {"include_usage": true}`` a chat stream ends,
as OpenAI's and llama-server's do, with a chunk of empty ``choices`` and the ``usage`` object (the
same counts as the non-stream answer) before ``data: [DONE]``.

Test-only behaviour, which no real backend has: ``--no-content-model M`` makes a completion
request for model M (chat, completions, embeddings; key checked first, as for any request) answer
``204 No Content`` with no body, so that tests can check how the router relays an answer without
a body. Every other model is answered as above.
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys

from aiohttp import web

STATS = {'requests': 0, 'disconnects': 0, 'completed': 0, 'loads': [], 'unloads': 0,
         'inflight': 0, 'max_inflight': 0, 'last_headers': {}, 'last_body_sha256': None,
         'events': []}       # ordered [event, model]: start/end of completions, load, unload


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--kind', choices=('openai', 'tabbyapi'), default='openai')
    p.add_argument('--api-key', action='append', default=[], help='accepted API key (repeatable)')
    p.add_argument('--admin-key', default=None, help='TabbyAPI admin key')
    p.add_argument('--models', default='m1', help='comma-separated model ids (TabbyAPI: its model_dir)')
    p.add_argument('--loaded', default=None, help='TabbyAPI: model loaded at start (default: none)')
    p.add_argument('--chunks', type=int, default=8, help='stream chunks per answer')
    p.add_argument('--chunk-delay', type=float, default=0.0, help='seconds between stream chunks')
    p.add_argument('--first-chunk-delay', type=float, default=0.0,
                   help='seconds between a stream\'s headers (sent at once) and its first chunk')
    p.add_argument('--no-content-model', default=None,
                   help='test-only: completion requests for this model are answered 204 with no body')
    p.add_argument('--delay', type=float, default=0.0, help='seconds before any completion answer')
    p.add_argument('--load-delay', type=float, default=0.05, help='TabbyAPI: seconds a model load takes')
    p.add_argument('--die-after-chunks', type=int, default=None,
                   help='exit the process (status 3) after sending this many stream chunks')
    return p.parse_args(argv)


class Double:
    def __init__(self, args):
        self.a = args
        self.models = [m for m in args.models.split(',') if m]
        self.loaded = args.loaded if args.kind == 'tabbyapi' else self.models[0]

    # -- auth --------------------------------------------------------------------------------
    def _key(self, request, header):
        auth = request.headers.get('Authorization', '')
        if auth.lower().startswith('bearer '):
            return auth[7:].strip()
        return request.headers.get(header, '')

    def check_api(self, request):
        """None if the API key is accepted, else the 401 response the real backend gives."""
        if not self.a.api_key and not self.a.admin_key:
            return None
        key = self._key(request, 'x-api-key')
        if key and (key in self.a.api_key or key == self.a.admin_key):
            return None
        if self.a.kind == 'tabbyapi':
            detail = 'Invalid API key' if key else 'Please provide an API key'
            return web.json_response({'detail': detail}, status=401)
        return web.json_response({'error': 'Unauthorized'}, status=401)

    def check_admin(self, request):
        key = self._key(request, 'x-admin-key')
        if key and key == self.a.admin_key:
            return None
        detail = 'Invalid admin key' if key and key not in self.a.api_key else 'Please provide an admin key'
        return web.json_response({'detail': detail}, status=401)

    # -- endpoints ---------------------------------------------------------------------------
    async def health(self, request):
        if self.a.kind == 'tabbyapi':
            return web.json_response({'status': 'healthy', 'issues': []})
        return web.json_response({'status': 'ok'})

    async def stats(self, request):
        return web.json_response(STATS)

    async def list_models(self, request):
        denied = self.check_api(request)
        if denied:
            return denied
        ids = self.models if self.a.kind == 'tabbyapi' else [self.loaded]
        return web.json_response({'object': 'list',
                                  'data': [{'id': m, 'object': 'model', 'owned_by': 'double'} for m in ids]})

    async def current_model(self, request):
        denied = self.check_api(request)
        if denied:
            return denied
        if not self.loaded:
            return web.json_response({'detail': 'No models are currently loaded.'}, status=503)
        return web.json_response({'id': self.loaded, 'object': 'model', 'owned_by': 'tabbyAPI'})

    async def load(self, request):
        denied = self.check_admin(request)
        if denied:
            return denied
        name = (await request.json()).get('model_name')
        if name not in self.models:
            return web.json_response(
                {'detail': 'Could not find the model path for load. Check model name or config.yml?'}, status=400)
        STATS['loads'].append(name)
        STATS['events'].append(['load', name])
        self.loaded = None
        resp = web.StreamResponse(headers={'Content-Type': 'text/event-stream'})
        await resp.prepare(request)
        for i in range(1, 4):
            await asyncio.sleep(self.a.load_delay / 3)
            await resp.write(b'data: %s\n\n' % json.dumps(
                {'model_type': 'model', 'module': i, 'modules': 3, 'status': 'processing'}).encode())
        self.loaded = name
        await resp.write(b'data: %s\n\n' % json.dumps({'model_type': 'model', 'status': 'finished'}).encode())
        await resp.write_eof()
        return resp

    async def unload(self, request):
        denied = self.check_admin(request)
        if denied:
            return denied
        if not self.loaded:             # as TabbyAPI's check_model_container answers
            return web.json_response({'detail': 'No models are currently loaded.'}, status=503)
        STATS['unloads'] += 1
        STATS['events'].append(['unload', self.loaded])
        self.loaded = None
        return web.json_response(None)  # FastAPI's answer for a handler that returns nothing

    async def complete(self, request):
        denied = self.check_api(request)
        if denied:
            return denied
        raw = await request.read()
        STATS['requests'] += 1
        STATS['last_headers'] = {k.lower(): v for k, v in request.headers.items()}
        STATS['last_body_sha256'] = hashlib.sha256(raw).hexdigest()
        if self.a.no_content_model is not None and self._model(raw) == self.a.no_content_model:
            return web.Response(status=204)          # test-only (module docstring)
        if not self.loaded:
            return web.json_response({'detail': 'No models are currently loaded.'}, status=503)
        body = json.loads(raw)
        if body.get('max_tokens') == -1:
            return web.json_response({'error': {'message': 'max_tokens must be at least 1', 'type': 'invalid_request_error',
                                                'param': 'max_tokens', 'code': None}}, status=400)
        STATS['events'].append(['start', self.loaded])
        STATS['inflight'] += 1
        STATS['max_inflight'] = max(STATS['max_inflight'], STATS['inflight'])
        try:
            if self.a.delay:
                await asyncio.sleep(self.a.delay)
            if request.path == '/v1/embeddings':
                inputs = body.get('input')
                inputs = inputs if isinstance(inputs, list) else [inputs]
                data = [{'object': 'embedding', 'index': i, 'embedding': [0.25, -0.5, len(str(x)) / 8]}
                        for i, x in enumerate(inputs)]
                result = web.json_response({'object': 'list', 'data': data, 'model': self.loaded})
            elif body.get('stream'):
                result = await self.stream(request, body)
            else:
                result = web.json_response(self.answer(request.path, body, 'completion'))
            STATS['completed'] += 1
            STATS['events'].append(['end', self.loaded])
            return result
        except (asyncio.CancelledError, ConnectionResetError):
            STATS['disconnects'] += 1
            raise
        finally:
            STATS['inflight'] -= 1

    @staticmethod
    def _model(raw):
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        return body.get('model') if isinstance(body, dict) else None

    def answer(self, path, body, kind, index=None):
        words = ['Grüße', ' from', ' the', ' double', ' ✓']
        text = ''.join(words) if index is None else words[index % len(words)]
        prompt = json.dumps(body.get('messages', body.get('prompt', '')), sort_keys=True)
        base = {'id': 'cmpl-%s' % hashlib.sha256(prompt.encode()).hexdigest()[:12], 'created': 1700000000,
                'model': self.loaded}
        if path == '/v1/completions':
            choice = {'index': 0, 'text': text, 'finish_reason': None if index is not None else 'stop'}
            return dict(base, object='text_completion', choices=[choice])
        if index is None:
            return dict(base, object='chat.completion',
                        choices=[{'index': 0, 'message': {'role': 'assistant', 'content': text},
                                  'finish_reason': 'stop'}],
                        usage={'prompt_tokens': len(prompt), 'completion_tokens': 5, 'total_tokens': len(prompt) + 5})
        return dict(base, object='chat.completion.chunk',
                    choices=[{'index': 0, 'delta': {'content': text}, 'finish_reason': None}])

    async def stream(self, request, body):
        resp = web.StreamResponse(headers={'Content-Type': 'text/event-stream; charset=utf-8'})
        await resp.prepare(request)                  # sends the status line and headers now
        for i in range(self.a.chunks):
            if i and self.a.chunk_delay:
                await asyncio.sleep(self.a.chunk_delay)
            elif not i and self.a.first_chunk_delay:
                await asyncio.sleep(self.a.first_chunk_delay)
            await resp.write(b'data: ' + json.dumps(self.answer(request.path, body, 'chunk', i)).encode() + b'\n\n')
            if self.a.die_after_chunks is not None and i + 1 >= self.a.die_after_chunks:
                os._exit(3)
        options = body.get('stream_options')
        if isinstance(options, dict) and options.get('include_usage') and request.path == '/v1/chat/completions':
            usage = self.answer(request.path, body, 'whole')['usage']
            last = dict(self.answer(request.path, body, 'chunk', 0), choices=[], usage=usage)
            await resp.write(b'data: ' + json.dumps(last).encode() + b'\n\n')
        await resp.write(b'data: [DONE]\n\n')
        await resp.write_eof()
        return resp


def main(argv=None):
    args = parse_args(argv)
    d = Double(args)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get('/health', d.health)
    app.router.add_get('/_stats', d.stats)
    app.router.add_get('/v1/models', d.list_models)
    if args.kind == 'tabbyapi':
        app.router.add_get('/v1/model', d.current_model)
        app.router.add_post('/v1/model/load', d.load)
        app.router.add_post('/v1/model/unload', d.unload)
    for path in ('/v1/chat/completions', '/v1/completions', '/v1/embeddings'):
        app.router.add_post(path, d.complete)
    print('double %s listening on %s:%d' % (args.kind, args.host, args.port), file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                handler_cancellation=True, shutdown_timeout=1)


if __name__ == '__main__':
    main()
