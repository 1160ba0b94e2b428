# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What runs on a host: one description of its backends and its router, from the host's variables.

``describe(variables)`` is the one place that knows, for a host, each service's unit, listen address,
port, the URL a check on the host itself reaches it at (IPv6 in brackets), which key variable it
checks, how to probe it, the models the router serves from it and its service state -- including
"router" for the backends an exclusive-swap router starts on demand. The backend roles, the router
role, the keys role and the playbooks all read this list (through the filter
``gpufleet.llm.backends``); none of them works any of it out again.

``variables`` are the host's variables as a task sees them (``vars``). A variable that is not set
takes the role's default, which ``DEFAULTS`` repeats; tests/unit/plugins/module_utils/test_backends.py fails when
a role's defaults/main.yml and ``DEFAULTS`` disagree.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import posixpath

from ansible.module_utils.six import string_types

from ansible_collections.gpufleet.llm.plugins.module_utils._backend_probe import PROFILES

# The roles' defaults for every variable read here (their defaults/main.yml say the same).
DEFAULTS = {
    'tabbyapi_host': '127.0.0.1',
    'tabbyapi_port': 5000,
    'tabbyapi_model_name': '',
    'tabbyapi_service_state': 'started',
    'llamacpp_port_base': 8080,
    'llamacpp_instances': [],
    'llamacpp_service_state': 'started',
    'sglang_host': '127.0.0.1',
    'sglang_instances': [],
    'sglang_service_state': 'started',
    'llm_router_host': '0.0.0.0',
    'llm_router_port': 4000,
    'llm_router_swap_policy': 'exclusive',
    'llm_router_service_state': 'started',
}
SGLANG_PORT_BASE = 30000

# Key scope -> the inventory group whose hosts run it (the keys role's gpufleet_key_groups). The
# gateway scope (HAProxy, roles/llm_gateway) has no service described here: its key is checked by
# the routers.
DEFAULT_GROUPS = {'tabbyapi': 'tabbyapi', 'llamacpp': 'llamacpp', 'sglang': 'sglang', 'router': 'llm_router',
                  'gateway': 'llm_gateway'}
# Key scope -> role.
ROLES = {'tabbyapi': 'tabbyapi', 'llamacpp': 'llamacpp', 'sglang': 'sglang', 'router': 'llm_router'}
# Listen addresses that mean "every interface": a check on the host reaches them on loopback.
ANY_ADDRESS = ('0.0.0.0', '::', '')


class DescriptionError(ValueError):
    """A host variable that cannot describe a backend; the message names it (never a key)."""


def local_url(host, port):
    """The URL a check on the host itself reaches a server listening on host:port at."""
    host = '127.0.0.1' if host in ANY_ADDRESS else host
    if ':' in host and not host.startswith('['):
        host = '[%s]' % host
    return 'http://%s:%d' % (host, port)


def _get(variables, name):
    value = variables.get(name) if hasattr(variables, 'get') else None
    return DEFAULTS[name] if value is None else value


def _text(variables, name):
    value = _get(variables, name)
    if not isinstance(value, string_types):
        raise DescriptionError('%s must be a string, got %s' % (name, type(value).__name__))
    return str(value)


def _port(value, name):
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise DescriptionError('%s must be a port number (1-65535), got %r' % (name, value))
    if not 0 < port < 65536:
        raise DescriptionError('%s must be a port number (1-65535), got %d' % (name, port))
    return port


def _instances(value, name):
    if isinstance(value, (string_types, dict)) or not hasattr(value, '__iter__'):
        raise DescriptionError('%s must be a list of instances, got %s' % (name, type(value).__name__))
    out = []
    for index, item in enumerate(value):
        if not hasattr(item, 'get') or not isinstance(item.get('name'), string_types) or not item.get('name'):
            raise DescriptionError('%s[%d] needs a name' % (name, index))
        out.append(item)
    return out


def _probe(kind):
    path, _with_model, header = PROFILES[kind]
    return {'path': path, 'header': header, 'prefix': 'Bearer ' if header.lower() == 'authorization' else ''}


def _entry(scope, kind, name, unit, host, port, key_var, state, instance='', models=None, key_index=-1):
    return {
        'name': name, 'scope': scope, 'role': ROLES[scope], 'kind': kind, 'instance': instance,
        'unit': unit, 'host': host, 'port': port, 'url': local_url(host, port),
        'key_var': key_var, 'key_index': key_index, 'probe': _probe(kind),
        'state': state, 'router_managed': False, 'models': models or {},
    }


def llamacpp_model_name(instance):
    """The model name the router serves a llama.cpp instance as: its GGUF file name without .gguf."""
    path = instance.get('model') or instance.get('model_src') or ''
    name = posixpath.basename(str(path))
    return name[:-5] if name.endswith('.gguf') else name


def sglang_served_model(instance):
    """What an SGLang instance answers to: its --served-model-name, else its model_path."""
    args = [str(a) for a in instance.get('extra_args') or []]
    if '--served-model-name' in args[:-1]:
        return args[args.index('--served-model-name') + 1]
    return str(instance.get('model_path') or '')


def _tabbyapi(variables):
    state = _text(variables, 'tabbyapi_service_state')
    model = _text(variables, 'tabbyapi_model_name')
    models = {model: {'backend': 'tabbyapi', 'model': model}} if model else {}
    return [_entry('tabbyapi', 'tabbyapi', 'tabbyapi', 'tabbyapi.service', _text(variables, 'tabbyapi_host'),
                   _port(_get(variables, 'tabbyapi_port'), 'tabbyapi_port'), 'tabbyapi_api_key', state,
                   models=models)]


def llamacpp_instances(instances, port_base=DEFAULTS['llamacpp_port_base'], models_dir=None, ctx_size=None,
                       name='llamacpp_instances'):
    """llamacpp_instances with every default filled in: port (llamacpp_port_base + position), model
    (the path on the host in every case: model, or models_dir/<file name of model_src>), ctx_size,
    threads (0: llama.cpp decides), extra_args, env; and the unit and URL of each."""
    base = _port(port_base, 'llamacpp_port_base')
    out = []
    for index, item in enumerate(_instances(instances, name)):
        port = _port(item.get('port') or base + index, '%s[%d].port' % (name, index))
        model_src = str(item.get('model_src') or '')
        model = str(item.get('model') or '')
        if not model and models_dir is not None:
            model = '%s/%s' % (models_dir, posixpath.basename(model_src))
        out.append({
            'name': str(item['name']), 'model': model, 'model_src': model_src, 'port': port,
            'ctx_size': int(item.get('ctx_size') or ctx_size or 0), 'threads': int(item.get('threads') or 0),
            'extra_args': [str(a) for a in item.get('extra_args') or []], 'env': dict(item.get('env') or {}),
            'unit': 'llamacpp@%s.service' % item['name'], 'url': local_url('127.0.0.1', port),
        })
    return out


def sglang_instances(instances, host=DEFAULTS['sglang_host'], name='sglang_instances'):
    """sglang_instances with every default filled in: port (30000 + position), tp 1, extra_args;
    and the unit and URL of each."""
    out = []
    for index, item in enumerate(_instances(instances, name)):
        port = _port(item.get('port') or SGLANG_PORT_BASE + index, '%s[%d].port' % (name, index))
        out.append({
            'name': str(item['name']), 'model_path': str(item.get('model_path') or ''), 'port': port,
            'tp': int(item.get('tp') or 1), 'extra_args': [str(a) for a in item.get('extra_args') or []],
            'unit': 'sglang@%s.service' % item['name'], 'url': local_url(host, port),
        })
    return out


def _llamacpp(variables):
    state = _text(variables, 'llamacpp_service_state')
    out = []
    for item in llamacpp_instances(_get(variables, 'llamacpp_instances'), _get(variables, 'llamacpp_port_base')):
        name = 'llamacpp-%s' % item['name']
        model = llamacpp_model_name(item)
        out.append(_entry('llamacpp', 'llamacpp', name, item['unit'], '127.0.0.1', item['port'],
                          'llamacpp_api_key', state, instance=item['name'],
                          models={model: {'backend': name, 'model': model}} if model else {}))
    return out


def _sglang(variables):
    state = _text(variables, 'sglang_service_state')
    host = _text(variables, 'sglang_host')
    out = []
    for item in sglang_instances(_get(variables, 'sglang_instances'), host):
        name = 'sglang-%s' % item['name']
        served = sglang_served_model(item)
        model = posixpath.basename(served)
        out.append(_entry('sglang', 'sglang', name, item['unit'], host, item['port'],
                          'sglang_api_key', state, instance=item['name'],
                          models={model: {'backend': name, 'model': served}} if model else {}))
    return out


def _router(variables):
    return [_entry('router', 'openai', 'router', 'llm-router.service', _text(variables, 'llm_router_host'),
                   _port(_get(variables, 'llm_router_port'), 'llm_router_port'), 'llm_router_client_api_keys',
                   _text(variables, 'llm_router_service_state'), key_index=0)]


_BUILDERS = (('tabbyapi', _tabbyapi), ('llamacpp', _llamacpp), ('sglang', _sglang), ('router', _router))


def describe(variables, groups=None, role=None):
    """Every service on the host, in a fixed order: TabbyAPI, llama.cpp and SGLang instances, router.

    A service is on the host when the host is in its scope's inventory group (``groups``: scope ->
    group, default DEFAULT_GROUPS), or when its role is ``role`` (the role that asks runs there).

    Router-managed: on a router host with the exclusive swap policy, when more than one backend would
    be started, every backend not left stopped gets state "router" (installed, configured, started
    on demand by the router, one at a time) and router_managed true.
    """
    group_map = dict(DEFAULT_GROUPS)
    group_map.update(groups or {})
    if role is not None and role not in ROLES.values():
        raise DescriptionError('role must be one of %s, got %r' % (', '.join(sorted(ROLES.values())), role))
    member_of = set(_get_groups(variables))
    services = []
    for scope, build in _BUILDERS:
        if group_map.get(scope) in member_of or ROLES[scope] == role:
            services.extend(build(variables))
    backends = [s for s in services if s['scope'] != 'router']
    startable = [b for b in backends if b['state'] != 'stopped']
    router_host = group_map['router'] in member_of or role == 'llm_router'
    if (router_host and _text(variables, 'llm_router_swap_policy') == 'exclusive' and len(startable) > 1):
        for b in startable:
            b['state'] = 'router'
            b['router_managed'] = True
    return services


def _get_groups(variables):
    names = variables.get('group_names') if hasattr(variables, 'get') else None
    return [str(n) for n in names or []]


def router_defaults(services):
    """The router's backends and models for a host that does not name them (llm_router_backends and
    llm_router_models): every backend of the host, with the models it is configured for."""
    backends, models = {}, {}
    for s in services:
        if s['scope'] == 'router':
            continue
        backends[s['name']] = {'kind': s['kind'], 'unit': s['unit'], 'url': s['url']}
        models.update(s['models'])
    return {'backends': backends, 'models': models}
