# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Endpoints: the models list, health and metrics (GET and HEAD). A client key limited to some
models lists only those; /metrics and the detailed /health only to a key allowed them (config
``clients``)."""

from .auth import client_of
from .server import Reply, json_reply, openai_error


async def list_models(app, req):
    client = client_of(app, req)
    if client is None:
        app.metrics.client_auth_failures += 1
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    data = [{'id': m.name, 'object': 'model', 'created': 0, 'owned_by': m.backend.name}
            for m in app.cfg.models.values() if client.may_use(m.name)]
    return json_reply({'object': 'list', 'data': data})


async def health(app, req):
    """Liveness for anyone (load balancers): ``{"status": "ok"}``. The details (backends, units,
    states, models, errors) only to a client key allowed them (``health``, default true); never a key or a
    key's variable value."""
    cfg, board = app.cfg, app.board
    client = client_of(app, req)
    if client is None or not client.health:
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
    client = client_of(app, req)
    if client is None:
        return openai_error(401, 'Invalid or missing API key', 'invalid_request_error', code='invalid_api_key')
    if not client.metrics:
        return openai_error(403, 'The key %s may not read /metrics' % client.name, 'invalid_request_error',
                            code='permission_denied')
    return Reply(200, app.metrics.render().encode(), 'text/plain; charset=utf-8')
