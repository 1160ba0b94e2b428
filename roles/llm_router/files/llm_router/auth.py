# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Auth (clients -> router): the key a client presents, checked against the configured ones."""

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
