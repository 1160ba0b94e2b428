# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that build the router's config (router.yml) and its key file from the llm_router role's
variables (roles/llm_router/vars/main.yml). No key value is ever in an error message.

    {{ backends | gpufleet.llm.router_backend_list(kind_keys) }}   # one entry per backend, defaults filled in
    {{ backend_list | gpufleet.llm.router_config(backends, models, settings) }}
    {{ backend_list | gpufleet.llm.router_key_env(backends, client_entries, vars) }}
    {{ current | gpufleet.llm.router_client_keys(previous, gateway_keys) }}
    {{ clients | gpufleet.llm.router_clients(client_entries, models) }}
    {{ client_entries | gpufleet.llm.router_key_for(clients, model) }}
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types

_TIMEOUTS = ('connect_timeout', 'read_timeout', 'ttl')   # seconds, copied when set
# A client key's name: the router's rule (files/llm_router/config.py); names are not secret.
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z')
_NAME_RULE = '1-64 letters, digits, _ . @ -, starting with a letter or digit'
GATEWAY = 'gateway'      # the name of the gateways' health key
# The gateways' health key only needs GET /v1/models to answer 200: no model, no metrics, no details.
GATEWAY_SCOPE = {'models': [], 'metrics': False, 'health': False}
CLIENT_FIELDS = ('models', 'metrics', 'health', 'max_concurrent')


def _env_name(name):
    return 'LLM_ROUTER_KEY_' + re.sub('[^A-Z0-9]', '_', str(name).upper())


def router_backend_list(backends, kind_keys):
    """llm_router_backends as a list: name, kind, url, unit ('' if none), whether it has its own key,
    the variable its key comes from (key_var) and the environment variable that carries it (key_env).
    Kinds not in kind_keys get no key unless the entry sets api_key."""
    if not isinstance(backends, dict):
        raise AnsibleFilterError('llm_router_backends must be a mapping of backend names to settings')
    out = []
    for name, spec in backends.items():
        spec = spec if isinstance(spec, dict) else {}
        own = 'api_key' in spec
        by_kind = kind_keys.get(spec.get('kind', ''), {})
        out.append({
            'name': str(name), 'kind': spec.get('kind', ''), 'url': spec.get('url', ''), 'unit': spec.get('unit') or '',
            'own_key': own,
            'key_var': ('llm_router_backends.%s.api_key' % name) if own else by_kind.get('var', ''),
            'key_env': _env_name(name) if own else by_kind.get('env', ''),
        })
    return out


def router_config(backend_list, backends, models, settings):
    """router.yml: the settings, then backends (kind, url, unit, key_env, timeouts, ttl) and models
    (backend, model id, ttl; the id defaults to the model's name). Names of key variables only."""
    out_backends = {}
    for b in backend_list:
        spec = {'kind': b['kind'], 'url': b['url']}
        if b['unit']:
            spec['unit'] = b['unit']
        if b['key_env']:
            spec['key_env'] = b['key_env']
        for t in _TIMEOUTS:
            if backends[b['name']].get(t) is not None:
                spec[t] = float(backends[b['name']][t])
        out_backends[b['name']] = spec
    out_models = {}
    for name, m in models.items():
        out_models[str(name)] = {'backend': m['backend'], 'model': m.get('model') or str(name)}
        if m.get('ttl') is not None:
            out_models[str(name)]['ttl'] = float(m['ttl'])
    config = dict(settings)
    config.update({'backends': out_backends, 'models': out_models})
    return config


def _named(value, var, previous=False):
    """(name, key) pairs of a flat list (named client-1, client-2, ... by position) or a mapping
    (previous: name -> key or list of keys). Errors name the variable and the key's name, never a key."""
    if isinstance(value, dict):
        pairs = []
        for name, keys in value.items():
            if not isinstance(name, string_types) or not _NAME_RE.match(name):
                raise AnsibleFilterError('%s: %s is not a key name (%s)' % (var, name, _NAME_RULE))
            keys = keys if previous and isinstance(keys, (list, tuple)) else [keys]
            pairs.extend((name, k, '%s.%s' % (var, name)) for k in keys)
    elif isinstance(value, (list, tuple)):
        pairs = [('client-%d' % i, k, var) for i, k in enumerate(value, 1)]
    else:
        raise AnsibleFilterError('%s must be a list of keys or a mapping of key names to %s'
                                 % (var, 'lists of keys' if previous else 'keys'))
    for name, key, where in pairs:
        if not isinstance(key, string_types) or not key or re.search(r'[,\s]', key):
            raise AnsibleFilterError('%s: every key must be a non-empty string (from the vault) without a comma '
                                     'or a blank' % where)
    return [(name, key) for name, key, where in pairs]


def router_client_keys(current, previous=None, gateway=None):
    """Every client key of the router as {name, key, previous}: llm_router_client_api_keys (a list:
    named client-1, client-2, ... by position; a mapping: name -> key), the grace-window keys of
    llm_router_client_api_keys_previous (a list: the i-th old key has the i-th key's name; a mapping:
    name -> key or list of keys) and the gateways' health keys (named gateway)."""
    entries = [{'name': n, 'key': k, 'previous': False} for n, k in _named(current, 'llm_router_client_api_keys')]
    if not entries:
        raise AnsibleFilterError('llm_router_client_api_keys: at least one key is required')
    now = set(e['key'] for e in entries)
    for name, key in _named(previous or [], 'llm_router_client_api_keys_previous', previous=True):
        if key in now:
            raise AnsibleFilterError('llm_router_client_api_keys_previous (%s): a current key may not also be listed '
                                     'as previous' % name)
        entries.append({'name': name, 'key': key, 'previous': True})
    if gateway:
        if any(e['name'] == GATEWAY for e in entries):
            raise AnsibleFilterError('llm_router_client_api_keys: the name %s is the gateways\' health key\'s '
                                     '(llm_gateway_health_key); choose another' % GATEWAY)
        entries.extend({'name': GATEWAY, 'key': k, 'previous': False}
                       for n, k in _named(list(gateway), 'llm_gateway_health_key'))
    return entries


def router_clients(clients, entries, models):
    """The ``clients`` section of router.yml: llm_router_clients checked (every name one of the client
    keys', every model one of models), plus the gateways' narrow scope. Names only, never a key."""
    if clients is None:
        clients = {}
    if not isinstance(clients, dict):
        raise AnsibleFilterError('llm_router_clients must be a mapping of client key names to scopes')
    names = set(e['name'] for e in entries)
    out = {}
    for name, spec in clients.items():
        where = 'llm_router_clients.%s' % name
        if name == GATEWAY and any(e['name'] == GATEWAY for e in entries):
            raise AnsibleFilterError('%s: the gateways\' health key has a fixed scope (GET /v1/models only)' % where)
        if name not in names:
            raise AnsibleFilterError('%s: no client key has this name (llm_router_client_api_keys: %s)'
                                     % (where, ', '.join(sorted(names))))
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise AnsibleFilterError('%s must be a mapping (%s)' % (where, ', '.join(CLIENT_FIELDS)))
        unknown = sorted(set(spec) - set(CLIENT_FIELDS))
        if unknown:
            raise AnsibleFilterError('%s: unknown field(s) %s (known: %s)'
                                     % (where, ', '.join(unknown), ', '.join(CLIENT_FIELDS)))
        scope = {}
        if spec.get('models') is not None:
            if not isinstance(spec['models'], (list, tuple)) or isinstance(spec['models'], string_types):
                raise AnsibleFilterError('%s.models must be a list of model names' % where)
            bad = [str(m) for m in spec['models'] if m not in models]
            if bad:
                raise AnsibleFilterError('%s.models: unknown model(s) %s (known: %s)'
                                         % (where, ', '.join(bad), ', '.join(sorted(map(str, models)))))
            scope['models'] = [str(m) for m in spec['models']]
        for flag in ('metrics', 'health'):
            if spec.get(flag) is not None:
                if not isinstance(spec[flag], bool):
                    raise AnsibleFilterError('%s.%s must be true or false' % (where, flag))
                scope[flag] = spec[flag]
        if spec.get('max_concurrent') is not None:
            cap = spec['max_concurrent']
            if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= 100000:
                raise AnsibleFilterError('%s.max_concurrent must be a whole number 0 (no cap) to 100000' % where)
            scope['max_concurrent'] = cap
        out[str(name)] = scope
    if any(e['name'] == GATEWAY for e in entries):
        out[GATEWAY] = dict(GATEWAY_SCOPE)
    return out


def router_key_for(entries, clients, model=None):
    """A current client key that may use model (any model when None), for the role's own gate and proofs."""
    for e in entries:
        allowed = (clients.get(e['name']) or {}).get('models')
        if not e['previous'] and (allowed is None or model is None or model in allowed):
            return e['key']
    raise AnsibleFilterError('no current client key may use model %s (llm_router_clients): the role proves '
                             'router-managed backends through the router with one' % model)


def router_key_env(backend_list, backends, client_keys, variables):
    """The router's key file: LLM_ROUTER_CLIENT_KEYS (name:key for every current and grace key, comma
    separated; router_client_keys) and one entry per backend key (from the backend's api_key or the
    variable of its kind)."""
    env = {'LLM_ROUTER_CLIENT_KEYS': ','.join('%s:%s' % (e['name'], e['key']) for e in client_keys)}
    for b in backend_list:
        if not b['key_env']:
            continue
        if b['own_key']:
            env[b['key_env']] = backends[b['name']]['api_key']
        elif variables.get(b['key_var']) is None:
            raise AnsibleFilterError('backend %s needs its key in %s, which is not defined' % (b['name'], b['key_var']))
        else:
            env[b['key_env']] = variables[b['key_var']]
    return env


class FilterModule(object):
    def filters(self):
        return {
            'router_backend_list': router_backend_list,
            'router_config': router_config,
            'router_key_env': router_key_env,
            'router_client_keys': router_client_keys,
            'router_clients': router_clients,
            'router_key_for': router_key_for,
        }
