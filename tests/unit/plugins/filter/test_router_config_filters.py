# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router's config and key file, built from the llm_router role's variables."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.llm.plugins.filter.router_config import (
    router_backend_list, router_client_keys, router_clients, router_config, router_key_env, router_key_for)

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
with open(os.path.join(TOP, 'roles', 'llm_router', 'vars', 'main.yml')) as _f:
    KIND_KEYS = yaml.safe_load(_f)['_llm_router_kind_keys']
BACKENDS = {
    'tabbyapi': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000', 'unit': 'tabbyapi.service'},
    'llamacpp-a': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:8080', 'unit': 'llamacpp@a.service',
                   'read_timeout': 600},
    'remote.vllm': {'kind': 'vllm', 'url': 'https://gpu-2:8000', 'api_key': 'own-key', 'connect_timeout': '2.5'},
    'plain': {'kind': 'openai', 'url': 'http://10.0.0.9:8000'},
}


def test_backend_list():
    out = {b['name']: b for b in router_backend_list(BACKENDS, KIND_KEYS)}
    assert out['tabbyapi'] == {'name': 'tabbyapi', 'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000',
                               'unit': 'tabbyapi.service', 'own_key': False, 'key_var': 'tabbyapi_admin_key',
                               'key_env': 'TABBYAPI_ADMIN_KEY'}
    assert (out['llamacpp-a']['key_var'], out['llamacpp-a']['key_env']) == ('llamacpp_api_key', 'LLAMACPP_API_KEY')
    assert out['remote.vllm']['own_key'] and out['remote.vllm']['key_env'] == 'LLM_ROUTER_KEY_REMOTE_VLLM'
    assert out['remote.vllm']['key_var'] == 'llm_router_backends.remote.vllm.api_key'
    assert (out['plain']['unit'], out['plain']['key_var'], out['plain']['key_env']) == ('', '', '')
    with pytest.raises(AnsibleFilterError, match='llm_router_backends must be a mapping'):
        router_backend_list(['tabbyapi'], KIND_KEYS)


def test_config_names_key_variables_only():
    settings = {'listen': {'host': '0.0.0.0', 'port': 4000}, 'swap_policy': 'exclusive'}
    config = router_config(router_backend_list(BACKENDS, KIND_KEYS), BACKENDS,
                           {'m1': {'backend': 'llamacpp-a'}, 7: {'backend': 'plain', 'model': 'x'}}, settings)
    assert config['listen'] == {'host': '0.0.0.0', 'port': 4000} and config['swap_policy'] == 'exclusive'
    assert config['backends']['llamacpp-a'] == {'kind': 'llamacpp', 'url': 'http://127.0.0.1:8080',
                                                'unit': 'llamacpp@a.service', 'key_env': 'LLAMACPP_API_KEY',
                                                'read_timeout': 600.0}
    assert config['backends']['remote.vllm'] == {'kind': 'vllm', 'url': 'https://gpu-2:8000',
                                                 'key_env': 'LLM_ROUTER_KEY_REMOTE_VLLM', 'connect_timeout': 2.5}
    assert config['backends']['plain'] == {'kind': 'openai', 'url': 'http://10.0.0.9:8000'}
    assert config['models'] == {'m1': {'backend': 'llamacpp-a', 'model': 'm1'}, '7': {'backend': 'plain', 'model': 'x'}}
    assert 'own-key' not in repr(config)
    assert 'backends' not in settings  # the settings given are not changed


def test_key_env():
    blist = router_backend_list(BACKENDS, KIND_KEYS)
    env = router_key_env(blist, BACKENDS, router_client_keys(['c1'], ['c0']),
                         {'tabbyapi_admin_key': 'ta', 'llamacpp_api_key': 'la'})
    assert env == {'LLM_ROUTER_CLIENT_KEYS': 'client-1:c1,client-1:c0', 'TABBYAPI_ADMIN_KEY': 'ta',
                   'LLAMACPP_API_KEY': 'la', 'LLM_ROUTER_KEY_REMOTE_VLLM': 'own-key'}
    with pytest.raises(AnsibleFilterError) as err:
        router_key_env(blist, BACKENDS, router_client_keys(['c1']), {'tabbyapi_admin_key': 'secret-ta'})
    assert 'llamacpp_api_key' in str(err.value) and 'secret-ta' not in str(err.value)


def test_config_carries_ttls_of_backends_and_models():
    backends = dict(BACKENDS, tabbyapi=dict(BACKENDS['tabbyapi'], ttl=0), **{'llamacpp-a': dict(BACKENDS['llamacpp-a'], ttl='90')})
    settings = {'default_ttl': 600.0, 'preload': ['m1']}
    config = router_config(router_backend_list(backends, KIND_KEYS), backends,
                           {'m1': {'backend': 'llamacpp-a', 'ttl': 30}, 'm2': {'backend': 'tabbyapi'}}, settings)
    assert config['backends']['tabbyapi']['ttl'] == 0.0 and config['backends']['llamacpp-a']['ttl'] == 90.0
    assert 'ttl' not in config['backends']['plain']
    assert config['models'] == {'m1': {'backend': 'llamacpp-a', 'model': 'm1', 'ttl': 30.0},
                                'm2': {'backend': 'tabbyapi', 'model': 'm2'}}
    assert (config['default_ttl'], config['preload']) == (600.0, ['m1'])


def test_client_keys_named_flat_and_gateway():
    flat = router_client_keys(['k1', 'k2'], ['o1'], ['gw'])
    assert [(e['name'], e['key'], e['previous']) for e in flat] == [
        ('client-1', 'k1', False), ('client-2', 'k2', False), ('client-1', 'o1', True), ('gateway', 'gw', False)]
    named = router_client_keys({'alice': 'a1', 'bob': 'b1'}, {'alice': ['a0', 'a00']})
    assert [(e['name'], e['key'], e['previous']) for e in named] == [
        ('alice', 'a1', False), ('bob', 'b1', False), ('alice', 'a0', True), ('alice', 'a00', True)]


@pytest.mark.parametrize('current,previous,gateway,message', [
    ('k1', [], None, 'llm_router_client_api_keys must be a list of keys or a mapping'),
    ([], [], None, 'llm_router_client_api_keys: at least one key is required'),
    ({'bad name': 'secret-k1'}, [], None, 'llm_router_client_api_keys: bad name is not a key name'),
    ({'alice': 'secret k1'}, [], None, 'llm_router_client_api_keys.alice: every key must be a non-empty string'),
    ({'alice': ['secret-k1']}, [], None, 'llm_router_client_api_keys.alice: every key must be a non-empty string'),
    ({'alice': 'secret-k1'}, {'alice': ['secret-k1']}, None, r'_previous \(alice\): a current key may not'),
    ({'gateway': 'secret-k1'}, [], ['secret-gw'], 'the name gateway is the gateways'),
    (['secret-k1'], [''], None, 'llm_router_client_api_keys_previous: every key must be a non-empty string'),
])
def test_bad_client_keys_are_named_never_shown(current, previous, gateway, message):
    with pytest.raises(AnsibleFilterError, match=message) as err:
        router_client_keys(current, previous, gateway)
    assert 'secret' not in str(err.value)


MODELS = {'m1': {'backend': 'b'}, 'm2': {'backend': 'b'}}
ENTRIES = router_client_keys({'alice': 'a1', 'bob': 'b1'}, {'alice': ['a0']}, ['gw'])


def test_clients_scopes_and_the_gateway_scope():
    clients = router_clients({'alice': {'models': ['m1'], 'metrics': False, 'max_concurrent': 2}, 'bob': None},
                             ENTRIES, MODELS)
    assert clients == {'alice': {'models': ['m1'], 'metrics': False, 'max_concurrent': 2}, 'bob': {},
                       'gateway': {'models': [], 'metrics': False, 'health': False}}
    assert router_key_for(ENTRIES, clients) == 'a1'
    assert router_key_for(ENTRIES, clients, 'm2') == 'b1'          # alice may not use m2
    with pytest.raises(AnsibleFilterError, match='no current client key may use model m2'):
        router_key_for(ENTRIES[:1], clients, 'm2')


@pytest.mark.parametrize('clients,message', [
    ([], 'llm_router_clients must be a mapping'),
    ({'carol': {}}, 'llm_router_clients.carol: no client key has this name'),
    ({'alice': []}, 'llm_router_clients.alice must be a mapping'),
    ({'alice': {'model': ['m1']}}, r'llm_router_clients.alice: unknown field\(s\) model'),
    ({'alice': {'models': 'm1'}}, 'llm_router_clients.alice.models must be a list'),
    ({'alice': {'models': ['m3']}}, r'llm_router_clients.alice.models: unknown model\(s\) m3'),
    ({'alice': {'metrics': 'no'}}, 'llm_router_clients.alice.metrics must be true or false'),
    ({'alice': {'max_concurrent': -1}}, 'llm_router_clients.alice.max_concurrent must be a whole number'),
    ({'alice': {'max_concurrent': True}}, 'llm_router_clients.alice.max_concurrent must be a whole number'),
    ({'gateway': {}}, 'llm_router_clients.gateway: the gateways'),
])
def test_bad_clients_are_named(clients, message):
    with pytest.raises(AnsibleFilterError, match=message):
        router_clients(clients, ENTRIES, MODELS)
