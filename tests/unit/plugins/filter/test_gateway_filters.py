# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gateway's view of the fleet, built from the router hosts' own variables (plugins/filter/gateway.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.llm.plugins.filter.gateway import (
    gateway_models, gateway_routers, gateway_server_address)


def llamacpp_host(*models, **extra):
    variables = {'group_names': ['llamacpp', 'llm_router'],
                 'llamacpp_instances': [{'name': m, 'model_src': '/srv/%s.gguf' % m} for m in models]}
    variables.update(extra)
    return variables


HOSTVARS = {
    'gpu-1': llamacpp_host('shared', 'only-1', ansible_host='10.0.0.1'),
    'gpu-2': llamacpp_host('shared', 'only-2', llm_gateway_router_address='192.168.1.2', llm_router_port=4100),
    'gpu 3': llamacpp_host('shared', llm_router_models={'alias': {'backend': 'llamacpp-shared'}}),
    'gpu-4': {'group_names': ['llm_router'], 'llm_router_host': '::'},
}


def test_each_router_host_with_its_address_port_and_models():
    hostvars = dict(HOSTVARS, **{'gpu 3': dict(HOSTVARS['gpu 3'], ansible_host='gpu3.example')})
    routers = gateway_routers(['gpu-1', 'gpu-2', 'gpu 3'], hostvars)
    assert routers == [
        {'host': 'gpu-1', 'server': 'gpu-1', 'address': '10.0.0.1', 'port': 4000, 'state': 'started',
         'models': ['only-1', 'shared']},
        {'host': 'gpu-2', 'server': 'gpu-2', 'address': '192.168.1.2', 'port': 4100, 'state': 'started',
         'models': ['only-2', 'shared']},
        # llm_router_models, when set, is what the router serves; the server name has no blank
        {'host': 'gpu 3', 'server': 'gpu_3', 'address': 'gpu3.example', 'port': 4000, 'state': 'started',
         'models': ['alias']},
    ]


def test_inventory_name_with_a_blank_is_refused_as_an_address():
    with pytest.raises(AnsibleFilterError, match='gpu 3.*llm_gateway_router_address'):
        gateway_routers(['gpu 3'], HOSTVARS)


def test_models_map_to_the_servers_that_serve_them():
    routers = gateway_routers(['gpu-1', 'gpu-2'], HOSTVARS)
    assert gateway_models(routers) == [
        {'model': 'only-1', 'backend': 'be_model_0', 'servers': ['gpu-1']},
        {'model': 'only-2', 'backend': 'be_model_1', 'servers': ['gpu-2']},
        {'model': 'shared', 'backend': 'be_model_2', 'servers': ['gpu-1', 'gpu-2']},
    ]


def test_a_router_without_a_model_serves_nothing_and_ipv6_is_bracketed():
    routers = gateway_routers(['gpu-4'], dict(HOSTVARS, **{'gpu-4': dict(HOSTVARS['gpu-4'], ansible_host='fd00::4')}))
    assert routers[0]['models'] == [] and gateway_models(routers) == []
    assert gateway_server_address(routers[0]) == '[fd00::4]:4000'
    assert gateway_server_address({'address': '10.0.0.1', 'port': '4000'}) == '10.0.0.1:4000'


@pytest.mark.parametrize('variables, words', [
    (llamacpp_host('a b'), ['gpu-x', "'a b'", 'cannot be routed']),
    (llamacpp_host('ok', llm_router_host='127.0.0.1'), ['gpu-x', 'llm_router_host', '127.0.0.1']),
    (llamacpp_host('ok', llm_router_port='http'), ['gpu-x', 'llm_router_port']),
    (llamacpp_host('ok', llm_gateway_router_address='10.0.0.1/24'), ['gpu-x', 'llm_gateway_router_address']),
    (llamacpp_host('ok', llm_router_models=['ok']), ['gpu-x', 'llm_router_models']),
])
def test_bad_router_host_variables_are_named(variables, words):
    with pytest.raises(AnsibleFilterError) as err:
        gateway_routers(['gpu-x'], {'gpu-x': variables})
    for word in words:
        assert word in str(err.value)


def test_two_hosts_with_the_same_server_name_are_refused():
    hostvars = {'a_b': llamacpp_host('m', ansible_host='10.0.0.1'), 'a b': llamacpp_host('m', ansible_host='10.0.0.2')}
    with pytest.raises(AnsibleFilterError, match='a_b and a b'):
        gateway_routers(['a_b', 'a b'], hostvars)
