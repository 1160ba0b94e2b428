# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How to ask a backend "are you ready, and do you accept this key?" and how to read its answer.

Pure standard library on purpose: the module ``gpufleet.llm.wait_for_backend`` uses it through
``ansible.module_utils.urls`` and the router (``roles/llm_router/files/router.py``) ships a copy of
this very file next to itself, so both read a backend's answer the same way.

Facts come from the servers' own sources (TabbyAPI, llama.cpp, SGLang, vLLM): ``/health`` is public on all of
them, so the probe always calls an endpoint that checks the key.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# Verdicts of one probe.
READY = 'ready'          # key accepted and (if asked) the wanted model is there
WAIT = 'wait'            # not ready yet: keep polling
REJECTED = 'rejected'    # the key was refused (401/403 by default): waiting cannot fix it
FATAL = 'fatal'          # any other answer that waiting cannot fix (e.g. 404: wrong endpoint)

# backend -> (endpoint without a model, endpoint when a model must be loaded, header name)
# A header named "Authorization" carries "Bearer <key>"; any other header carries the bare key.
PROFILES = {
    'tabbyapi': ('/v1/models', '/v1/model', 'x-api-key'),
    'llamacpp': ('/props', '/props', 'Authorization'),
    'sglang': ('/v1/models', '/v1/models', 'Authorization'),
    'vllm': ('/v1/models', '/v1/models', 'Authorization'),
    'openai': ('/v1/models', '/v1/models', 'Authorization'),
}

WAIT_STATUSES = frozenset((408, 425, 429, 500, 502, 503, 504))
DEFAULT_REJECT_STATUSES = (401, 403)
_MAX_MESSAGE = 300


def probe_plan(backend, model=None, endpoint=None, auth_header=None):
    """Return (endpoint, header name) for a backend kind, honouring explicit overrides."""
    if backend not in PROFILES:
        raise ValueError('backend must be one of %s, got %r' % (', '.join(sorted(PROFILES)), backend))
    plain, with_model, header = PROFILES[backend]
    return endpoint or (with_model if model else plain), auth_header or header


def auth_headers(header, api_key):
    """The request headers that carry api_key; empty when there is no key."""
    if not api_key:
        return {}
    if header.lower() == 'authorization':
        return {header: 'Bearer %s' % api_key}
    return {header: api_key}


def server_message(body):
    """The backend's own error text from a response body (bytes or str), shortened."""
    if isinstance(body, bytes):
        body = body.decode('utf-8', 'replace')
    text = (body or '').strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ('detail', 'error', 'message'):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get('message') or value.get('detail') or json.dumps(value)
            if isinstance(value, list):
                value = '; '.join(str(v.get('msg', v)) if isinstance(v, dict) else str(v) for v in value)
            if value:
                text = str(value)
                break
    return _shorten(' '.join(text.split()))


def _shorten(text):
    return text[:_MAX_MESSAGE] + ('...' if len(text) > _MAX_MESSAGE else '')


def reported_models(body):
    """Model ids a 200 answer names: OpenAI lists, TabbyAPI /v1/model, llama.cpp /props."""
    try:
        data = json.loads(body.decode('utf-8', 'replace') if isinstance(body, bytes) else body)
    except (ValueError, AttributeError):
        return []
    if not isinstance(data, dict):
        return []
    models = []
    if isinstance(data.get('data'), list):
        models.extend(m.get('id') for m in data['data'] if isinstance(m, dict) and m.get('id'))
    for key in ('id', 'model_alias', 'model_name'):
        if isinstance(data.get(key), str) and data[key]:
            models.append(data[key])
    path = data.get('model_path')
    if isinstance(path, str) and path:
        models.append(path)
        models.append(path.replace('\\', '/').rsplit('/', 1)[-1])
    seen = []
    for m in models:
        if m not in seen:
            seen.append(m)
    return seen


def classify(status, body, model=None, reject_statuses=DEFAULT_REJECT_STATUSES):
    """Read one answer. Returns (verdict, detail, models) where detail is the server's own text
    (or, for a wrong model, what is loaded) and models the ids the backend reported."""
    if status in reject_statuses:
        return REJECTED, server_message(body), []
    if 200 <= status < 300:
        models = reported_models(body)
        if model and model not in models:
            loaded = _shorten(', '.join(models)) if models else 'none'
            return WAIT, 'model %s is not loaded yet (backend reports: %s)' % (model, loaded), models
        return READY, '', models
    if status in WAIT_STATUSES:
        return WAIT, server_message(body), []
    return FATAL, server_message(body), []


def rejection_message(backend, url, endpoint, header, status, detail, key_sent):
    """The one sentence that says who refused which key, never the key itself."""
    if key_sent:
        what = 'rejected the API key sent as %s' % header
    else:
        what = 'demands an API key, but no key was sent (set api_key)'
    return '%s at %s %s on %s: %s %s' % (backend, url, what, endpoint, status, detail)
