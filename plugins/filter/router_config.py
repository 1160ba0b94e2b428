# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that build the router's config (router.yml) and its key file from the llm_router role's
variables (roles/llm_router/vars/main.yml). No key value is ever in an error message.

    {{ backends | gpufleet.llm.router_backend_list(kind_keys) }}   # one entry per backend, defaults filled in
    {{ backend_list | gpufleet.llm.router_config(backends, models, settings) }}
    {{ backend_list | gpufleet.llm.router_key_env(backends, client_keys, vars) }}
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.errors import AnsibleFilterError

_TIMEOUTS = ('connect_timeout', 'read_timeout', 'ttl')   # seconds, copied when set


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


def router_key_env(backend_list, backends, client_keys, variables):
    """The router's key file: LLM_ROUTER_CLIENT_API_KEYS (current and grace keys, comma separated) and
    one entry per backend key (from the backend's api_key or the variable of its kind)."""
    env = {'LLM_ROUTER_CLIENT_API_KEYS': ','.join(client_keys)}
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
        }
