# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Auth (clients -> router): the key a client presents, checked against the configured ones; the
client (config.Client) it belongs to, what that client may do, and its cap on requests in flight."""

import hmac


def presented_key(headers):
    """The key a client sent as ``Authorization: Bearer K`` or ``x-api-key: K`` ('' if none);
    headers: lower-case names."""
    auth = headers.get('authorization', '')
    if auth[:7].lower() == 'bearer ':
        return auth[7:].strip()
    return headers.get('x-api-key', '').strip()


def key_accepted(key, keys):
    """Constant-time check of key against every configured key (no early exit)."""
    given = key.encode('utf-8', 'surrogateescape')   # header bytes that are not UTF-8 stay bytes
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k.encode('utf-8'))
    return bool(key) and ok


def match_key(key, client_keys):
    """The ClientKey entry whose key is key, or None: compared with every entry in constant time
    (no early exit)."""
    given = key.encode('utf-8', 'surrogateescape')
    found = None
    for entry in client_keys:
        hit = hmac.compare_digest(given, entry.key.encode('utf-8'))
        found = entry if hit else found
    return found if key else None


def client_of(app, req):
    """The Client whose key req presents (None: no key, or not one of the router's). The key is
    checked once per request: the verdict is kept on req (req.client; req.key_name, the name that
    labels the access log and the metrics), so the head check of a request with a body
    (App.head_check) and its handler share it."""
    if req.client is None:
        entry = match_key(presented_key(req.headers), app.cfg.client_keys)
        req.client = entry.client if entry is not None else False
        if entry is not None:
            req.key_name = entry.name
    return req.client or None


class Caps:
    """Proxied requests in flight per key name, against each client's max_concurrent (the old and the
    new key of a name during a rotation share its cap; a reload keeps the counts)."""

    def __init__(self):
        self.inflight = {}

    def take(self, client):
        """Count one more request of client; False (nothing counted) when it is at its cap."""
        n = self.inflight.get(client.name, 0)
        if client.max_concurrent and n >= client.max_concurrent:
            return False
        self.inflight[client.name] = n + 1
        return True

    def give(self, client):
        n = self.inflight.get(client.name, 0) - 1
        if n > 0:
            self.inflight[client.name] = n
        else:
            self.inflight.pop(client.name, None)
