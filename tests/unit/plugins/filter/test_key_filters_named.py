# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named client keys in the key store (plugins/filter/keys.py): read from both layouts, rotated by
name, ended, and never shown in an error."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.llm.plugins.filter import keys as f

ALICE = 'a' * 40
BOB = 'b' * 40


def named():
    return f.key_store_normalize({'router': {'client_api_keys': {'alice': ALICE, 'bob': BOB}}}, ['router'])


def test_named_keys_from_a_mapping_or_a_json_string():
    assert named()['router']['client_api_keys'] == {'alice': ALICE, 'bob': BOB}
    from_cli = f.key_store_normalize({'router': {'client_api_keys': json.dumps({'alice': ALICE, 'bob': BOB})}},
                                     ['router'])
    assert from_cli == named()
    assert f.key_client_names(named()) == ['alice', 'bob']
    assert f.key_client_names(f.key_store_normalize({'router': {'client_api_keys': [ALICE]}}, ['router'])) == []


@pytest.mark.parametrize('value,message', [
    ({'bad name': ALICE}, 'router.client_api_keys: bad name is not a key name'),
    ({'alice': ['x' * 40]}, 'router.client_api_keys.alice must be one key'),
    ({}, 'the key secret of scope router lacks client_api_keys'),
    ('{"alice": ', 'router.client_api_keys is neither a comma-separated list of keys nor a JSON object'),
])
def test_bad_named_keys_are_named_never_shown(value, message):
    with pytest.raises(AnsibleFilterError, match=message) as err:
        f.key_store_normalize({'router': {'client_api_keys': value}}, ['router'])
    assert 'x' * 40 not in str(err.value)


def test_rotation_by_name_rotates_only_those_names():
    s = f.key_begin_rotation(named(), ['router'], started='T', client_names=['alice'])
    r = s['router']
    assert r['client_api_keys']['bob'] == BOB                         # untouched
    assert r['client_api_keys']['alice'] not in (ALICE, BOB) and len(r['client_api_keys']['alice']) == 48
    assert r['client_api_keys_previous'] == {'alice': [ALICE]} and r['rotation_pending'] is True
    assert f.key_previous_by_scope(s) == {'router': [ALICE]}          # only alice's old key must be refused
    assert f.key_contract_vars(s)['llm_router_client_api_keys_previous'] == {'alice': [ALICE]}
    assert f.key_contract_vars(s, previous=False)['llm_router_client_api_keys_previous'] == {}
    assert sorted(f.key_values(s)) == sorted([r['client_api_keys']['alice'], BOB, ALICE])
    again = f.key_begin_rotation(s, ['router'], started='U', client_names=['bob'])
    assert again == s                                                # pending: resumed as stored
    end = f.key_end_rotation(s, ['router'])['router']
    assert end['client_api_keys_previous'] == {} and end['client_api_keys'] == r['client_api_keys']


def test_rotation_of_all_names_by_default():
    r = f.key_begin_rotation(named(), ['router'], started='T')['router']
    assert set(r['client_api_keys_previous']) == {'alice', 'bob'}
    assert not set(r['client_api_keys'].values()) & {ALICE, BOB}


def test_rotation_by_name_refuses_unknown_names_and_flat_lists():
    with pytest.raises(AnsibleFilterError, match=r'no client key is named carol \(known: alice, bob\)'):
        f.key_begin_rotation(named(), ['router'], client_names=['carol'])
    flat = f.key_store_normalize({'router': {'client_api_keys': [ALICE]}}, ['router'])
    with pytest.raises(AnsibleFilterError, match='flat list, without names'):
        f.key_begin_rotation(flat, ['router'], client_names=['client-1'])


def test_named_keys_round_trip_through_the_ansible_vault_layout():
    s = f.key_begin_rotation(named(), ['router'], started='T', client_names=['bob'])
    vault = f.key_store_to_vault_vars(s, {'other': 1})
    assert vault['vault_llm_router_client_api_keys_previous'] == {'bob': [BOB]} and vault['other'] == 1
    assert f.key_store_from_vault_vars(vault, ['router']) == s
    assert f.key_store_problems(f.key_store_from_vault_vars(vault, ['router']), s) == []
