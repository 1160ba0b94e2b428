# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Endpoints: the models list, health and metrics (GET and HEAD)."""

from .auth import key_accepted, presented_key
from .server import Reply, json_reply, openai_error


async def list_models(app, req):
    cfg = app.cfg
    if not key_accepted(presented_key(req.headers), cfg.client_keys):
        app.metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    data = [{'id': m.name, 'object': 'model', 'created': 0, 'owned_by': m.backend.name}
            for m in cfg.models.values()]
    return json_reply({'object': 'list', 'data': data})


async def health(app, req):
    """Liveness for anyone (load balancers): ``{"status": "ok"}``. The details (backends, units,
    states, models, errors) only to a client key; never a key or a key's variable value."""
    cfg, board = app.cfg, app.board
    if not key_accepted(presented_key(req.headers), cfg.client_keys):
        return json_reply({'status': 'ok'})
    active = [b for b in cfg.backends.values() if b.state == 'ready']
    return json_reply({
        'status': 'ok',
        'swap_policy': cfg.swap_policy,
        'swapping_to': board.swap.model.name if board.swap and board.swap.model.backend.state != 'unloading' else None,
        'active_backends': [b.name for b in active],
        'backends': {b.name: {'kind': b.kind, 'unit': b.unit, 'state': b.state, 'loaded': b.loaded,
                              'in_flight': b.inflight, 'drained': b.drained,
                              'resume_pending': b.resume_pending, 'last_error': b.last_error or None,
                              'ttl': app.idle.ttl(b), 'unload_in': _seconds(app.idle.unload_in(b))}
                     for b in cfg.backends.values()},
    })


def _seconds(left):
    return None if left is None else round(left, 1)


async def metrics_endpoint(app, req):
    if not key_accepted(presented_key(req.headers), app.cfg.client_keys):
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    return Reply(200, app.metrics.render().encode(), 'text/plain; charset=utf-8')
