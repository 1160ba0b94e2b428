# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the key store filters (plugins/filter/keys.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.llm.plugins.filter import keys as f

OLD = {
    'tabbyapi': {'api_key': 'a' * 40, 'admin_key': 'b' * 40},
    'llamacpp': {'api_key': 'c' * 40},
    'sglang': {'api_key': 'd' * 40},
    'router': {'client_api_keys': ['e' * 40, 'f' * 40]},
}
SCOPES = list(OLD)


def store():
    return f.key_store_normalize(OLD, SCOPES)


def test_normalize_fills_previous_and_marker():
    s = store()
    assert s['llamacpp'] == {'api_key': 'c' * 40, 'api_key_previous': [], 'rotation_pending': False,
                             'rotation_started': ''}
    assert s['router']['client_api_keys'] == ['e' * 40, 'f' * 40]


def test_comma_separated_client_keys_are_a_list():
    s = f.key_store_normalize({'router': {'client_api_keys': 'x' * 40 + ', ' + 'y' * 40}}, ['router'])
    assert s['router']['client_api_keys'] == ['x' * 40, 'y' * 40]


def test_missing_field_is_named_without_values():
    with pytest.raises(AnsibleFilterError) as err:
        f.key_store_normalize({'tabbyapi': {'api_key': 'secret-value-1234'}}, ['tabbyapi'])
    assert 'tabbyapi lacks admin_key' in str(err.value)
    assert 'secret-value-1234' not in str(err.value)


def test_unknown_scope_is_refused():
    with pytest.raises(AnsibleFilterError):
        f.key_names(['vllm'])


def test_contract_vars_only_contract_previous():
    v = f.key_contract_vars(store())
    assert set(v) == {'tabbyapi_api_key', 'tabbyapi_admin_key', 'tabbyapi_api_key_previous',
                      'llamacpp_api_key', 'llamacpp_api_key_previous', 'sglang_api_key',
                      'llm_router_client_api_keys', 'llm_router_client_api_keys_previous'}


def test_begin_rotation_makes_strong_unique_keys_and_keeps_the_old():
    s = f.key_begin_rotation(store(), SCOPES, started='T')
    new = f.key_values(s, 'current')
    assert len(new) == 6 and len(set(new)) == 6
    for k in new:
        assert len(k) == 48 and k.isalnum()
    assert sorted(f.key_values(s, 'previous')) == sorted(f.key_values(store(), 'current'))
    assert all(s[x]['rotation_pending'] and s[x]['rotation_started'] == 'T' for x in SCOPES)
    v = f.key_contract_vars(s)
    assert v['llamacpp_api_key_previous'] == ['c' * 40]
    assert v['llm_router_client_api_keys_previous'] == ['e' * 40, 'f' * 40]
    assert f.key_contract_vars(s, previous=False)['llamacpp_api_key_previous'] == []


def test_begin_rotation_resumes_a_pending_scope_unchanged():
    s = f.key_begin_rotation(store(), ['llamacpp'])
    again = f.key_begin_rotation(s, ['llamacpp', 'sglang'])
    assert again['llamacpp'] == s['llamacpp']
    assert again['sglang']['rotation_pending'] and again['sglang']['api_key'] != 'd' * 40


def test_begin_rotation_keeps_earlier_previous_keys():
    s = store()
    s['llamacpp']['api_key_previous'] = ['z' * 40]
    r = f.key_begin_rotation(s, ['llamacpp'])
    assert r['llamacpp']['api_key_previous'] == ['c' * 40, 'z' * 40]


def test_end_rotation_forgets_old_keys():
    s = f.key_end_rotation(f.key_begin_rotation(store(), SCOPES), SCOPES)
    assert f.key_values(s, 'previous') == []
    assert not any(s[x]['rotation_pending'] for x in SCOPES)


def test_previous_by_scope():
    s = f.key_begin_rotation(store(), ['tabbyapi', 'router'])
    p = f.key_previous_by_scope(s)
    assert sorted(p['tabbyapi']) == ['a' * 40, 'b' * 40]
    assert p['llamacpp'] == []


def test_vault_vars_round_trip_keeps_other_variables():
    vault = {'vault_tabbyapi_api_key': 'a' * 40, 'vault_tabbyapi_admin_key': 'b' * 40,
             'vault_llamacpp_api_key': 'c' * 40, 'vault_sglang_api_key': 'd' * 40,
             'vault_llm_router_client_api_keys': ['e' * 40, 'f' * 40], 'vault_other': 1}
    s = f.key_store_from_vault_vars(vault, SCOPES)
    assert s == store()
    r = f.key_begin_rotation(s, ['llamacpp'], started='T')
    out = f.key_store_to_vault_vars({'llamacpp': r['llamacpp']}, vault)
    assert out['vault_other'] == 1
    assert out['vault_gpufleet_rotation_pending'] == ['llamacpp']
    assert out['vault_llamacpp_api_key_previous'] == ['c' * 40]
    back = f.key_store_from_vault_vars(out, SCOPES)
    assert back['llamacpp'] == r['llamacpp']
    done = f.key_store_to_vault_vars(f.key_end_rotation(back, ['llamacpp']), out)
    assert done['vault_gpufleet_rotation_pending'] == []
    assert done['vault_gpufleet_rotation_started'] == {}


def test_missing_vault_variable_is_named():
    with pytest.raises(AnsibleFilterError) as err:
        f.key_store_from_vault_vars({'vault_llamacpp_api_key': 'c' * 40}, ['router'])
    assert 'vault_llm_router_client_api_keys' in str(err.value)


def test_store_problems_name_scopes_and_versions_only():
    written = f.key_begin_rotation(store(), ['llamacpp'])
    results = [{'item': 'llamacpp', 'secret': written['llamacpp'], 'metadata': {'version': 3}}]
    assert f.key_store_problems(results, {'llamacpp': written['llamacpp']}, {'llamacpp': 2}) == []
    bad = f.key_store_problems(results, {'llamacpp': written['llamacpp']}, {'llamacpp': 1})
    assert bad == ['llamacpp is at version 3, expected 2']
    other = dict(written['llamacpp'], api_key='q' * 48)
    results[0]['secret'] = other
    bad = f.key_store_problems(results, {'llamacpp': written['llamacpp']}, {'llamacpp': 2})
    assert bad == ['llamacpp does not hold the keys just written']
    assert f.key_store_problems([], {'sglang': store()['sglang']}) == ['sglang was not read back']


def test_short_keys_are_not_generated():
    with pytest.raises(AnsibleFilterError):
        f.new_key(16)


def test_old_checks_pair_each_endpoint_with_each_old_key_of_its_scope():
    endpoints = [{'scope': 'tabbyapi', 'url': 'a'}, {'scope': 'llamacpp', 'url': 'b'}, {'scope': 'llamacpp', 'url': 'c'},
                 {'scope': 'router', 'url': 'd'}]
    old = {'tabbyapi': ['t1', 't2'], 'llamacpp': ['l1'], 'router': []}
    checks = f.key_old_checks(endpoints, old)
    assert [(e['url'], i) for e, i in checks] == [('a', 0), ('a', 1), ('b', 0), ('c', 0)]
    assert 't1' not in repr(checks)


# --- the gateway scope: one health key, checked by the routers ------------------------------------

GATEWAY = {'gateway': {'health_key': 'g' * 40}}


def test_gateway_scope_is_a_health_key_with_a_contract_previous_list():
    s = f.key_store_normalize(GATEWAY, ['gateway'])
    assert f.key_contract_vars(s) == {'llm_gateway_health_key': 'g' * 40, 'llm_gateway_health_key_previous': []}
    rotating = f.key_begin_rotation(s, ['gateway'], started='T')
    new = f.key_contract_vars(rotating)
    assert new['llm_gateway_health_key'] != 'g' * 40 and len(new['llm_gateway_health_key']) == f.KEY_LENGTH
    assert new['llm_gateway_health_key_previous'] == ['g' * 40]
    assert f.key_contract_vars(rotating, previous=False)['llm_gateway_health_key_previous'] == []
    assert f.key_previous_by_scope(rotating) == {'gateway': ['g' * 40]}
    assert f.key_names(['gateway']) == ['llm_gateway_health_key']


def test_gateway_scope_in_the_ansible_vault_layout():
    vault = {'vault_llm_gateway_health_key': 'g' * 40, 'vault_unrelated': 1}
    s = f.key_store_from_vault_vars(vault, ['gateway'])
    rotating = f.key_begin_rotation(s, ['gateway'], started='T')
    out = f.key_store_to_vault_vars(rotating, vault)
    assert out['vault_llm_gateway_health_key_previous'] == ['g' * 40]
    assert out['vault_gpufleet_rotation_pending'] == ['gateway'] and out['vault_unrelated'] == 1
    assert f.key_store_from_vault_vars(out, ['gateway']) == rotating
    with pytest.raises(AnsibleFilterError) as err:
        f.key_store_from_vault_vars({}, ['gateway'])
    assert 'vault_llm_gateway_health_key' in str(err.value)


def test_checker_endpoints_copy_each_router_endpoint_for_the_gateway_scope():
    endpoints = [{'scope': 'llamacpp', 'url': 'b', 'key_var': 'llamacpp_api_key', 'key_index': -1},
                 {'scope': 'router', 'url': 'd', 'key_var': 'llm_router_client_api_keys', 'key_index': 0}]
    out = f.key_checker_endpoints(endpoints, {'gateway': 'router'})
    assert out[:2] == endpoints
    assert out[2:] == [{'scope': 'gateway', 'url': 'd', 'key_var': 'llm_gateway_health_key', 'key_index': -1}]
    assert endpoints[1]['scope'] == 'router'                  # the description itself is left as it is
    # an old health key is sent to the router endpoint, and only there
    checks = f.key_old_checks(out, {'gateway': ['g1'], 'router': [], 'llamacpp': []})
    assert [(e['url'], e['scope'], i) for e, i in checks] == [('d', 'gateway', 0)]
    assert f.key_checker_endpoints(endpoints, {}) == endpoints
    with pytest.raises(AnsibleFilterError):
        f.key_checker_endpoints(endpoints, {'gateway': 'vllm'})
