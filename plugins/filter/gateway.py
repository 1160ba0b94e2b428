# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that build the gateway's view of the fleet (roles/llm_gateway) from the router hosts'
own variables, through the one description of a host's services (plugins/module_utils/_backends.py):
the gateway never keeps a second list of which host serves which model.

    {{ groups['llm_router'] | gpufleet.llm.gateway_routers(hostvars) }}   # one entry per router host
    {{ routers | gpufleet.llm.gateway_models }}                           # one entry per model
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types

from ansible_collections.gpufleet.llm.plugins.module_utils import _backends

# HAProxy map keys and server names: no blank, no quote, nothing HAProxy's parser treats specially.
_MODEL = re.compile(r'^[A-Za-z0-9._:/@+=-]{1,200}$')
_SERVER_UNSAFE = re.compile(r'[^A-Za-z0-9_.:-]')


def _router_models(host, variables, services):
    """The model names a router host serves: llm_router_models when set, else the models of the
    backends it runs (what the llm_router role itself serves, roles/llm_router/vars/main.yml)."""
    models = variables.get('llm_router_models') if hasattr(variables, 'get') else None
    if not models:
        models = _backends.router_defaults(services)['models']
    if not isinstance(models, dict):
        raise AnsibleFilterError('router host %s: llm_router_models must be a mapping of model names' % host)
    return sorted(str(name) for name in models)


def gateway_routers(hosts, hostvars, address_var='llm_gateway_router_address'):
    """One entry per router host: host, server (its name in HAProxy), address and port the gateways
    reach its router at, the router's service state and the models it serves (sorted).

    The address is the host's ``address_var`` when set, else its ansible_host, else its inventory
    name; the port is its llm_router_port (through the host description)."""
    out = []
    servers = {}
    for host in hosts or []:
        variables = hostvars[host]
        try:
            services = _backends.describe(variables, role='llm_router')
        except _backends.DescriptionError as exc:
            raise AnsibleFilterError('router host %s: %s' % (host, exc))
        router = [s for s in services if s['scope'] == 'router'][0]
        address = variables.get(address_var) or variables.get('ansible_host') or host
        if not isinstance(address, string_types) or not address or re.search(r'[\s/]', address):
            raise AnsibleFilterError('router host %s: %s must be a host name or an address, got %r'
                                     % (host, address_var, address))
        if router['host'] in ('127.0.0.1', '::1', 'localhost'):
            raise AnsibleFilterError('router host %s: llm_router_host is %s, which no gateway can reach'
                                     % (host, router['host']))
        models = _router_models(host, variables, services)
        for model in models:
            if not _MODEL.match(model):
                raise AnsibleFilterError('router host %s: model name %r cannot be routed by the gateway (use '
                                         'A-Z a-z 0-9 and . _ : / @ + = -, at most 200)' % (host, model))
        server = _SERVER_UNSAFE.sub('_', str(host))
        if server in servers:
            raise AnsibleFilterError('router hosts %s and %s have the same server name %s in the gateway'
                                     % (servers[server], host, server))
        servers[server] = host
        out.append({'host': str(host), 'server': server, 'address': str(address).strip('[]'),
                    'port': router['port'], 'state': router['state'], 'models': models})
    return out


def gateway_models(routers):
    """One entry per model, sorted by name: the model, its HAProxy backend (be_model_<n>, n its
    position) and the servers of the router hosts that serve it."""
    by_model = {}
    for router in routers:
        for model in router['models']:
            by_model.setdefault(model, []).append(router['server'])
    return [{'model': model, 'backend': 'be_model_%d' % index, 'servers': by_model[model]}
            for index, model in enumerate(sorted(by_model))]


def gateway_server_address(router):
    """address:port of a router entry as HAProxy's server line takes it (IPv6 in brackets)."""
    address = router['address']
    if ':' in address:
        address = '[%s]' % address
    return '%s:%d' % (address, int(router['port']))


class FilterModule(object):
    def filters(self):
        return {
            'gateway_routers': gateway_routers,
            'gateway_models': gateway_models,
            'gateway_server_address': gateway_server_address,
        }
