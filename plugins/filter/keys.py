# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the key store's layout into the key variables of docs/CONTRACT.md and back,
and that start and end a key rotation. They are used by the internal role gpufleet.llm.keys and by
playbooks/rotate_keys.yml; docs/keys.md describes the layout.

The canonical form ("store") is a dict scope -> secret, where a secret is exactly what one KV v2
secret at ``<gpufleet_vault_path>/<scope>`` holds:

    {"api_key": "...", "admin_key": "...",          # the current keys (fields of the scope)
     "api_key_previous": ["..."], ...,              # keys still accepted while a rotation rolls
     "rotation_pending": True,                      # the pending-rotation marker
     "rotation_started": "2026-11-25T19:00:00Z"}

The router's ``client_api_keys`` is either a list (flat: named client-1, client-2, ... by position)
or a mapping of key names to keys (named keys); its ``client_api_keys_previous`` is then a list, or a
mapping of names to lists of old keys. A rotation of named keys may rotate only some names.

The Ansible Vault layout holds the same data as ``vault_<contract variable>`` entries plus
``vault_gpufleet_rotation_pending`` (list of scopes). No filter ever puts a key in an error message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import secrets
import string

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.six import string_types

# scope -> (prefix of its contract variables, {field: kind}); kind 'str' = one key, 'list' = key list.
SCOPES = {
    'tabbyapi': ('tabbyapi_', (('api_key', 'str'), ('admin_key', 'str'))),
    'llamacpp': ('llamacpp_', (('api_key', 'str'),)),
    'sglang': ('sglang_', (('api_key', 'str'),)),
    'router': ('llm_router_', (('client_api_keys', 'list'),)),
    'gateway': ('llm_gateway_', (('health_key', 'str'),)),
}
# The *_previous lists that CONTRACT.md defines (the others live in the store only).
CONTRACT_PREVIOUS = frozenset((
    'tabbyapi_api_key_previous',
    'llamacpp_api_key_previous',
    'llm_router_client_api_keys_previous',
    'llm_gateway_health_key_previous',
))
PENDING = 'rotation_pending'
STARTED = 'rotation_started'
VAULT_PENDING = 'vault_gpufleet_rotation_pending'
KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 48          # 48 of 62 symbols: about 285 bits
MIN_KEY_LENGTH = 32
# A client key's name: the router's rule (roles/llm_router/files/llm_router/config.py).
KEY_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z')


def _scope(scope):
    if scope not in SCOPES:
        raise AnsibleFilterError('unknown key scope %r (known: %s)' % (scope, ', '.join(sorted(SCOPES))))
    return SCOPES[scope]


def _scopes(scopes):
    if isinstance(scopes, string_types):
        scopes = [scopes]
    for scope in scopes:
        _scope(scope)
    return list(scopes)


def _key_list(value, where):
    """A list of keys from a list or a comma-separated string (what `bao kv put k=a,b` stores)."""
    if value is None:
        return []
    if isinstance(value, string_types):
        value = value.split(',')
    if not isinstance(value, (list, tuple)):
        raise AnsibleFilterError('%s must be a list of keys or a comma-separated string' % where)
    keys = [to_text(v).strip() for v in value]
    return [k for k in keys if k]


def _named_keys(value, where, previous=False):
    """A mapping name -> key (previous: name -> list of keys), checked; a JSON object in a string (what
    `bao kv put k='{"alice": "..."}'` stores) is read as a mapping. None when value is not a mapping."""
    if isinstance(value, string_types) and value.strip().startswith('{'):
        try:
            value = json.loads(value)
        except ValueError:
            raise AnsibleFilterError('%s is neither a comma-separated list of keys nor a JSON object' % where)
    if not isinstance(value, dict):
        return None
    out = {}
    for name, keys in value.items():
        if not isinstance(name, string_types) or not KEY_NAME_RE.match(name):
            raise AnsibleFilterError('%s: %s is not a key name (1-64 letters, digits, _ . @ -)' % (where, name))
        if previous:
            keys = _key_list(keys, '%s.%s' % (where, name))
            if keys:
                out[name] = keys
        else:
            keys = to_text(keys).strip() if isinstance(keys, string_types) else ''
            if not keys:
                raise AnsibleFilterError('%s.%s must be one key (a string)' % (where, name))
            out[name] = keys
    return out


def _flat(value):
    """Every key of a field's value: a key, a list of keys, or a mapping name -> key or list of keys."""
    if isinstance(value, dict):
        return [k for v in value.values() for k in (v if isinstance(v, (list, tuple)) else [v])]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_true(value):
    if isinstance(value, string_types):
        return value.strip().lower() in ('true', 'yes', '1', 'on')
    return bool(value)


def normalize_secret(secret, scope):
    """One scope's secret with every field present and typed; names what is missing, never a value."""
    prefix, fields = _scope(scope)
    if not isinstance(secret, dict):
        raise AnsibleFilterError('the key secret of scope %s is not a mapping' % scope)
    out = {}
    missing = []
    for field, kind in fields:
        value = secret.get(field)
        if kind == 'list':
            named = _named_keys(value, '%s.%s' % (scope, field))
            value = named if named is not None else _key_list(value, '%s.%s' % (scope, field))
            if not value:
                missing.append(field)
            previous = secret.get(field + '_previous')
            named = _named_keys(previous, '%s.%s_previous' % (scope, field), previous=True)
            out[field] = value
            out[field + '_previous'] = named if named is not None else \
                _key_list(previous, '%s.%s_previous' % (scope, field))
            continue
        value = to_text(value).strip() if value is not None else ''
        if not value:
            missing.append(field)
        out[field] = value
        out[field + '_previous'] = _key_list(secret.get(field + '_previous'), '%s.%s_previous' % (scope, field))
    if missing:
        raise AnsibleFilterError('the key secret of scope %s lacks %s' % (scope, ', '.join(missing)))
    out[PENDING] = _is_true(secret.get(PENDING, False))
    out[STARTED] = to_text(secret.get(STARTED) or '')
    return out


def key_store_normalize(store, scopes):
    """Check and normalize a dict scope -> secret for the given scopes."""
    if not isinstance(store, dict):
        raise AnsibleFilterError('the key store must be a mapping of scope to secret')
    out = {}
    for scope in _scopes(scopes):
        if scope not in store:
            raise AnsibleFilterError('the key store has no secret for scope %s' % scope)
        out[scope] = normalize_secret(store[scope], scope)
    return out


def key_contract_vars(store, previous=True):
    """The CONTRACT.md variables for every scope in store. previous=False empties the *_previous
    lists (the second pass of a rotation, when the old keys are dropped)."""
    out = {}
    for scope, secret in store.items():
        prefix, fields = _scope(scope)
        for field, kind in fields:
            out[prefix + field] = secret[field]
            name = prefix + field + '_previous'
            if name in CONTRACT_PREVIOUS:
                out[name] = _copy(secret.get(field + '_previous')) if previous else _empty(secret[field])
    return out


def _copy(value):
    """A field's previous keys, copied: a list, or a mapping name -> list (named keys)."""
    if isinstance(value, dict):
        return dict((name, list(keys)) for name, keys in value.items())
    return list(value or [])


def _empty(current):
    """No previous keys, in the form of the field's current value (mapping for named keys)."""
    return {} if isinstance(current, dict) else []


def key_client_names(store):
    """The names of the router's named client keys in store ([] when flat or no router scope): no value."""
    keys = (store.get('router') or {}).get('client_api_keys')
    return sorted(keys) if isinstance(keys, dict) else []


def key_names(scopes):
    """Names of the key variables a rotation of these scopes replaces (for summaries)."""
    names = []
    for scope in _scopes(scopes):
        prefix, fields = _scope(scope)
        names.extend(prefix + field for field, kind in fields)
    return names


def key_store_from_vault_vars(vault_vars, scopes):
    """The store, read from the decrypted Ansible Vault vars file (vault_<contract variable>)."""
    if not isinstance(vault_vars, dict):
        raise AnsibleFilterError('the Ansible Vault key file does not hold a mapping of variables')
    pending = _key_list(vault_vars.get(VAULT_PENDING), VAULT_PENDING)
    store = {}
    for scope in _scopes(scopes):
        prefix, fields = _scope(scope)
        secret = {PENDING: scope in pending}
        for field, kind in fields:
            name = 'vault_' + prefix + field
            if name not in vault_vars:
                raise AnsibleFilterError('the Ansible Vault key file lacks %s' % name)
            secret[field] = vault_vars[name]
            secret[field + '_previous'] = vault_vars.get(name + '_previous', [])
        secret[STARTED] = vault_vars.get('vault_gpufleet_rotation_started', {}).get(scope, '') \
            if isinstance(vault_vars.get('vault_gpufleet_rotation_started'), dict) else ''
        store[scope] = normalize_secret(secret, scope)
    return store


def key_store_to_vault_vars(store, vault_vars):
    """vault_vars (the decrypted file) updated with store; every other variable is kept as it is."""
    out = dict(vault_vars or {})
    pending = set(_key_list(out.get(VAULT_PENDING), VAULT_PENDING))
    started = dict(out.get('vault_gpufleet_rotation_started') or {})
    for scope, secret in store.items():
        prefix, fields = _scope(scope)
        for field, kind in fields:
            out['vault_' + prefix + field] = secret[field]
            out['vault_' + prefix + field + '_previous'] = _copy(secret.get(field + '_previous'))
        if secret.get(PENDING):
            pending.add(scope)
            started[scope] = secret.get(STARTED, '')
        else:
            pending.discard(scope)
            started.pop(scope, None)
    out[VAULT_PENDING] = sorted(pending)
    out['vault_gpufleet_rotation_started'] = started
    return out


def new_key(length=KEY_LENGTH):
    """A new key: letters and digits from the operating system's CSPRNG."""
    length = int(length)
    if length < MIN_KEY_LENGTH:
        raise AnsibleFilterError('keys shorter than %d characters are not generated' % MIN_KEY_LENGTH)
    return ''.join(secrets.choice(KEY_ALPHABET) for dummy in range(length))


def _rotate_named(current, previous, names, length):
    """Named keys: a new key for each of names (all when empty); the old key of each joins its previous
    keys. Returns (current, previous) as new mappings."""
    unknown = sorted(set(names or []) - set(current))
    if unknown:
        raise AnsibleFilterError('rotate_client_keys: no client key is named %s (known: %s)'
                                 % (', '.join(map(to_text, unknown)), ', '.join(sorted(current))))
    new, old = dict(current), _copy(previous) if isinstance(previous, dict) else {}
    for name in (names or sorted(current)):
        old[name] = [current[name]] + [k for k in old.get(name, []) if k != current[name]]
        new[name] = new_key(length)
    return new, old


def key_begin_rotation(store, scopes, started='', length=KEY_LENGTH, client_names=None):
    """Start a rotation of scopes: new keys become current, the current ones become *_previous and
    the secret is marked pending. A scope that is already pending is left exactly as it is, so a
    re-run finishes the interrupted rotation instead of making yet another key. client_names: the
    router's named client keys to rotate (default: all); flat client keys are rotated all at once."""
    out = dict(store)
    for scope in _scopes(scopes):
        if scope not in store:
            raise AnsibleFilterError('the key store has no secret for scope %s' % scope)
        secret = dict(store[scope])
        if secret.get(PENDING):
            continue
        prefix, fields = _scope(scope)
        for field, kind in fields:
            if isinstance(secret[field], dict):
                secret[field], secret[field + '_previous'] = _rotate_named(
                    secret[field], secret.get(field + '_previous'), client_names, length)
                continue
            if client_names and scope == 'router':
                raise AnsibleFilterError('rotate_client_keys: the router\'s client keys are a flat list, without '
                                         'names; name them (docs/keys.md) to rotate some only')
            old = list(secret[field]) if kind == 'list' else [secret[field]]
            # Keys already listed as previous may still sit on a host: keep them until the end.
            previous = old + [k for k in secret.get(field + '_previous') or [] if k not in old]
            secret[field] = [new_key(length) for dummy in old] if kind == 'list' else new_key(length)
            secret[field + '_previous'] = previous
        secret[PENDING] = True
        secret[STARTED] = to_text(started)
        out[scope] = secret
    return out


def key_end_rotation(store, scopes):
    """End a rotation of scopes: forget the previous keys and clear the pending marker."""
    out = dict(store)
    for scope in _scopes(scopes):
        secret = dict(store[scope])
        prefix, fields = _scope(scope)
        for field, kind in fields:
            secret[field + '_previous'] = _empty(secret[field])
        secret[PENDING] = False
        secret[STARTED] = ''
        out[scope] = secret
    return out


def key_values(store, which='all'):
    """Every key value in store ('current', 'previous' or 'all'), for checks that must not show them."""
    values = []
    for scope, secret in store.items():
        prefix, fields = _scope(scope)
        for field, kind in fields:
            if which in ('current', 'all'):
                values.extend(_flat(secret[field]))
            if which in ('previous', 'all'):
                values.extend(_flat(secret.get(field + '_previous') or []))
    return values


def key_previous_by_scope(store):
    """scope -> every old key of that scope (all fields), the keys that must be refused at the end."""
    out = {}
    for scope, secret in store.items():
        prefix, fields = _scope(scope)
        out[scope] = []
        for field, kind in fields:
            out[scope].extend(_flat(secret.get(field + '_previous') or []))
    return out


def key_old_checks(endpoints, previous_by_scope):
    """[endpoint, index] for every old key of each endpoint's scope: which old key (by its position
    in key_previous_by_scope) must be sent to which endpoint to prove it refused. No key value."""
    return [[e, i] for e in endpoints for i in range(len(previous_by_scope.get(e['scope']) or []))]


def key_checker_endpoints(endpoints, checked_by):
    """endpoints (gpufleet.llm.backends) plus, for a scope whose key is checked by the endpoints of
    another scope (checked_by: scope -> checking scope, e.g. gateway -> router: every router accepts
    the gateways' health key), a copy of each checking endpoint with that scope and its key variable,
    so that the gates and the proof that old keys are refused reach it like any other endpoint."""
    out = list(endpoints)
    for scope, checker in sorted((checked_by or {}).items()):
        prefix, fields = _scope(scope)
        _scope(checker)
        for field, kind in fields:
            for endpoint in endpoints:
                if endpoint.get('scope') == checker:
                    out.append(dict(endpoint, scope=scope, key_var=prefix + field,
                                    key_index=0 if kind == 'list' else -1))
    return out


def key_store_problems(read_back, written, versions_before=None):
    """What is wrong after a write, as sentences that name scopes and versions, never a key.

    read_back: registered results of community.hashi_vault.vault_kv2_get (loop over scopes, with
    item, secret and metadata) or a store dict (Ansible Vault, no versions).
    written: the store dict written. versions_before: scope -> KV version before the write."""
    problems = []
    if isinstance(read_back, dict):
        entries = [(scope, secret, None) for scope, secret in read_back.items()]
    else:
        entries = [(r.get('item'), r.get('secret') or {}, (r.get('metadata') or {}).get('version'))
                   for r in read_back]
    seen = set()
    for scope, secret, version in entries:
        if scope not in written:
            continue
        seen.add(scope)
        if versions_before is not None:
            expected = int(versions_before.get(scope) or 0) + 1
            if version is None or int(version) != expected:
                problems.append('%s is at version %s, expected %d' % (scope, version, expected))
                continue
        try:
            same = normalize_secret(secret, scope) == normalize_secret(written[scope], scope)
        except AnsibleFilterError as exc:
            problems.append(to_text(exc))
            continue
        if not same:
            problems.append('%s does not hold the keys just written' % scope)
    for scope in sorted(set(written) - seen):
        problems.append('%s was not read back' % scope)
    return problems


class FilterModule(object):
    """gpufleet.llm key store filters."""

    def filters(self):
        return {
            'key_store_normalize': key_store_normalize,
            'key_contract_vars': key_contract_vars,
            'key_names': key_names,
            'key_client_names': key_client_names,
            'key_store_from_vault_vars': key_store_from_vault_vars,
            'key_store_to_vault_vars': key_store_to_vault_vars,
            'key_begin_rotation': key_begin_rotation,
            'key_end_rotation': key_end_rotation,
            'key_values': key_values,
            'key_store_problems': key_store_problems,
            'key_previous_by_scope': key_previous_by_scope,
            'key_old_checks': key_old_checks,
            'key_checker_endpoints': key_checker_endpoints,
        }
