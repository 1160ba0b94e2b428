# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one description of a host's services (plugins/module_utils/_backends.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest
import yaml

from ansible_collections.gpufleet.llm.plugins.module_utils import _backends
from ansible_collections.gpufleet.llm.plugins.module_utils._backends import describe, router_defaults

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
ALL = ['tabbyapi', 'llamacpp', 'sglang', 'llm_router']


def by_name(services):
    return {s['name']: s for s in services}


def test_every_kind_with_the_roles_defaults():
    services = describe({'group_names': ALL, 'tabbyapi_model_name': 'Qwen-exl2',
                         'llamacpp_instances': [{'name': 'a', 'model_src': 'files/tiny-a.gguf'},
                                                {'name': 'b', 'model': '/srv/m/b.gguf', 'port': 9001}],
                         'sglang_instances': [{'name': 'chat', 'model_path': '/srv/models/Qwen2.5-7B'}],
                         'llm_router_swap_policy': 'shared'})
    assert [s['name'] for s in services] == ['tabbyapi', 'llamacpp-a', 'llamacpp-b', 'sglang-chat', 'router']
    s = by_name(services)
    assert s['tabbyapi']['url'] == 'http://127.0.0.1:5000'
    assert s['tabbyapi']['unit'] == 'tabbyapi.service'
    assert s['tabbyapi']['key_var'] == 'tabbyapi_api_key'
    assert s['tabbyapi']['probe'] == {'path': '/v1/models', 'header': 'x-api-key', 'prefix': ''}
    assert s['tabbyapi']['models'] == {'Qwen-exl2': {'backend': 'tabbyapi', 'model': 'Qwen-exl2'}}
    assert s['llamacpp-a']['url'] == 'http://127.0.0.1:8080'
    assert s['llamacpp-a']['unit'] == 'llamacpp@a.service'
    assert s['llamacpp-a']['models'] == {'tiny-a': {'backend': 'llamacpp-a', 'model': 'tiny-a'}}
    assert s['llamacpp-b']['port'] == 9001
    assert s['llamacpp-b']['models'] == {'b': {'backend': 'llamacpp-b', 'model': 'b'}}
    assert s['llamacpp-a']['probe'] == {'path': '/props', 'header': 'Authorization', 'prefix': 'Bearer '}
    assert s['sglang-chat']['url'] == 'http://127.0.0.1:30000'
    assert s['sglang-chat']['models'] == {
        'Qwen2.5-7B': {'backend': 'sglang-chat', 'model': '/srv/models/Qwen2.5-7B'}}
    assert s['router']['url'] == 'http://127.0.0.1:4000'
    assert (s['router']['key_var'], s['router']['key_index']) == ('llm_router_client_api_keys', 0)
    assert all(x['state'] == 'started' and not x['router_managed'] for x in services)


def test_only_the_groups_of_the_host():
    services = describe({'group_names': ['llamacpp'], 'llamacpp_instances': [{'name': 'a', 'model': '/m/a.gguf'}]})
    assert [s['name'] for s in services] == ['llamacpp-a']
    assert describe({'group_names': []}) == []


def test_a_role_describes_itself_outside_its_group():
    services = describe({'group_names': [], 'tabbyapi_port': 5001}, role='tabbyapi')
    assert [(s['name'], s['url']) for s in services] == [('tabbyapi', 'http://127.0.0.1:5001')]


def test_other_inventory_groups():
    services = describe({'group_names': ['gpu-tabby']}, groups={'tabbyapi': 'gpu-tabby'})
    assert [s['name'] for s in services] == ['tabbyapi']


@pytest.mark.parametrize('host, url', [
    ('::1', 'http://[::1]:5000'),
    ('fd00::7', 'http://[fd00::7]:5000'),
    ('::', 'http://127.0.0.1:5000'),
    ('0.0.0.0', 'http://127.0.0.1:5000'),
    ('10.0.0.5', 'http://10.0.0.5:5000'),
])
def test_ipv6_hosts_in_brackets(host, url):
    services = describe({'group_names': ['tabbyapi', 'sglang', 'llm_router'], 'tabbyapi_host': host,
                         'sglang_host': host, 'llm_router_host': host,
                         'sglang_instances': [{'name': 'x', 'model_path': 'm'}]})
    s = by_name(services)
    assert s['tabbyapi']['url'] == url
    assert s['sglang-x']['url'] == url.replace(':5000', ':30000')
    assert s['router']['url'] == url.replace(':5000', ':4000')
    # ... and the router's config gets the same URLs
    assert router_defaults(services)['backends']['tabbyapi']['url'] == url


def test_instance_ports_follow_position_and_base():
    services = describe({'group_names': ['llamacpp', 'sglang'], 'llamacpp_port_base': 9000,
                         'llamacpp_instances': [{'name': 'a', 'model': '/m/a.gguf'}, {'name': 'b', 'model': '/m/b.gguf'},
                                                {'name': 'c', 'model': '/m/c.gguf', 'port': 9100}],
                         'sglang_instances': [{'name': 'x', 'model_path': 'm'}, {'name': 'y', 'model_path': 'n', 'port': 31000},
                                              {'name': 'z', 'model_path': 'o'}]})
    assert [s['port'] for s in services] == [9000, 9001, 9100, 30000, 31000, 30002]


def test_sglang_served_model_name():
    services = describe({'group_names': ['sglang'], 'sglang_instances': [
        {'name': 'x', 'model_path': '/srv/Qwen', 'extra_args': ['--served-model-name', 'qwen-chat']}]})
    assert services[0]['models'] == {'qwen-chat': {'backend': 'sglang-x', 'model': 'qwen-chat'}}


def test_router_managed_on_an_exclusive_router_with_two_startable_backends():
    hostvars = {'group_names': ['tabbyapi', 'llamacpp', 'sglang', 'llm_router'], 'sglang_service_state': 'stopped',
                'llamacpp_instances': [{'name': 'a', 'model': '/m/a.gguf'}],
                'sglang_instances': [{'name': 'x', 'model_path': '/m/x'}]}
    s = by_name(describe(hostvars))
    assert (s['tabbyapi']['state'], s['tabbyapi']['router_managed']) == ('router', True)
    assert (s['llamacpp-a']['state'], s['llamacpp-a']['router_managed']) == ('router', True)
    # left stopped by the inventory: stays stopped, and does not count
    assert (s['sglang-x']['state'], s['sglang-x']['router_managed']) == ('stopped', False)
    assert s['router']['state'] == 'started' and not s['router']['router_managed']
    # the same host with the shared policy, without a router, or with one startable backend
    assert [x['state'] for x in describe(dict(hostvars, llm_router_swap_policy='shared'))] == [
        'started', 'started', 'stopped', 'started']
    assert [x['state'] for x in describe(dict(hostvars, group_names=['tabbyapi', 'llamacpp']))] == [
        'started', 'started']
    one = describe(dict(hostvars, tabbyapi_service_state='stopped'))
    assert [(x['name'], x['state']) for x in one] == [('tabbyapi', 'stopped'), ('llamacpp-a', 'started'),
                                                      ('sglang-x', 'stopped'), ('router', 'started')]
    # two instances of one backend are two backends
    two = describe({'group_names': ['llamacpp', 'llm_router'], 'llamacpp_instances': [
        {'name': 'a', 'model': '/m/a.gguf'}, {'name': 'b', 'model': '/m/b.gguf'}]})
    assert [x['state'] for x in two] == ['router', 'router', 'started']
    # once set (e.g. by a role that read it), "router" stays "router"
    again = describe(dict(hostvars, tabbyapi_service_state='router', llamacpp_service_state='router'))
    assert [x['state'] for x in again] == ['router', 'router', 'stopped', 'started']


def test_router_defaults():
    services = describe({'group_names': ['tabbyapi', 'llamacpp', 'llm_router'], 'tabbyapi_model_name': 'big-exl2',
                         'llamacpp_instances': [{'name': 'tiny', 'model_src': 'files/tiny.gguf'}]})
    assert router_defaults(services) == {
        'backends': {'tabbyapi': {'kind': 'tabbyapi', 'unit': 'tabbyapi.service', 'url': 'http://127.0.0.1:5000'},
                     'llamacpp-tiny': {'kind': 'llamacpp', 'unit': 'llamacpp@tiny.service',
                                       'url': 'http://127.0.0.1:8080'}},
        'models': {'big-exl2': {'backend': 'tabbyapi', 'model': 'big-exl2'},
                   'tiny': {'backend': 'llamacpp-tiny', 'model': 'tiny'}}}


def test_llamacpp_instances_filled_in():
    out = _backends.llamacpp_instances([{'name': 'a', 'model_src': 'x/tiny.gguf', 'threads': 2, 'extra_args': [1]},
                                        {'name': 'b', 'model': '/m/b.gguf', 'ctx_size': 128, 'port': 7000}],
                                       8080, '/var/lib/llamacpp/models', 4096)
    assert out == [
        {'name': 'a', 'model': '/var/lib/llamacpp/models/tiny.gguf', 'model_src': 'x/tiny.gguf', 'port': 8080,
         'ctx_size': 4096, 'threads': 2, 'extra_args': ['1'], 'env': {}, 'unit': 'llamacpp@a.service',
         'url': 'http://127.0.0.1:8080'},
        {'name': 'b', 'model': '/m/b.gguf', 'model_src': '', 'port': 7000, 'ctx_size': 128, 'threads': 0,
         'extra_args': [], 'env': {}, 'unit': 'llamacpp@b.service', 'url': 'http://127.0.0.1:7000'}]


@pytest.mark.parametrize('hostvars, message', [
    ({'tabbyapi_port': 'http'}, 'tabbyapi_port must be a port number'),
    ({'tabbyapi_port': 70000}, 'tabbyapi_port must be a port number'),
    ({'llamacpp_instances': 'a'}, 'llamacpp_instances must be a list'),
    ({'llamacpp_instances': [{'model': '/m'}]}, 'llamacpp_instances[0] needs a name'),
    ({'sglang_instances': [{'name': 'x', 'port': 0}, {'name': 'y', 'port': -3}]}, 'sglang_instances[1].port'),
    ({'tabbyapi_host': 5}, 'tabbyapi_host must be a string'),
    ({'llamacpp_port_base': 'eighty', 'llamacpp_instances': [{'name': 'a', 'model': '/m'}]},
     'llamacpp_port_base must be a port number'),
])
def test_bad_input_names_the_variable(hostvars, message):
    with pytest.raises(_backends.DescriptionError) as err:
        describe(dict(hostvars, group_names=ALL))
    assert message in str(err.value)


def test_defaults_are_the_roles_defaults():
    """DEFAULTS repeats the roles' defaults: the two must not drift apart."""
    roles = {}
    for role in ('tabbyapi', 'llamacpp', 'sglang', 'llm_router'):
        with open(os.path.join(TOP, 'roles', role, 'defaults', 'main.yml')) as f:
            roles.update(yaml.safe_load(f))
    for name, value in _backends.DEFAULTS.items():
        assert roles[name] == value, name
    assert roles['sglang_instances'] == [] and _backends.SGLANG_PORT_BASE == 30000


def test_summary_says_what_runs():
    from ansible_collections.gpufleet.llm.plugins.filter.backends import services_summary
    services = describe({'group_names': ['tabbyapi', 'llamacpp', 'sglang', 'llm_router'], 'sglang_service_state': 'stopped',
                         'llamacpp_instances': [{'name': 'a', 'model': '/m/a.gguf'}],
                         'sglang_instances': [{'name': 'x', 'model_path': '/m/x'}]})
    assert services_summary(services) == [
        'TabbyAPI: installed and configured, started on demand by the router (exclusive swap; not enabled at boot), '
        'readiness proven through the router',
        'llama.cpp: installed and configured, started on demand by the router (exclusive swap; not enabled at boot), '
        'readiness proven through the router',
        'SGLang: installed and configured, NOT started (sglang_service_state: stopped)',
        'router: running, passed its readiness gate']
    assert services_summary(services, True, ['sglang', 'llm_router'], []) == [
        'SGLang: installed and configured, NOT started (sglang_service_state: stopped)',
        'router: would run (check mode: the readiness gate was not run)']
    assert services_summary(services, False, ['all'], ['tabbyapi', 'llamacpp', 'sglang', 'llm_router']) == [
        'no gpufleet role ran on this host']


def test_plan_restart_a_restart_covers_a_reread():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.gpufleet.llm.plugins.filter.backends import plan_restart
    planned = plan_restart({}, ['tabbyapi.service'], 'reread')
    assert planned == {'tabbyapi.service': 'reread'}
    planned = plan_restart(planned, ['tabbyapi.service', 'llamacpp@a.service'], 'restart')
    assert planned == {'tabbyapi.service': 'restart', 'llamacpp@a.service': 'restart'}
    assert plan_restart(planned, ['tabbyapi.service'], 'reread') == planned
    assert plan_restart(None, [], 'restart') == {}
    with pytest.raises(AnsibleFilterError, match='action must be restart or reread'):
        plan_restart({}, ['x.service'], 'reload')


def test_scope_groups_are_the_keys_roles():
    """The keys role maps key scopes to inventory groups (gpufleet_key_groups); its defaults and the
    description's must be the same map."""
    with open(os.path.join(TOP, 'roles', 'keys', 'vars', 'main.yml')) as f:
        keys_vars = yaml.safe_load(f)
    assert keys_vars['_keys_default_groups'] == _backends.DEFAULT_GROUPS
