# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named client keys (llm_router/config.py parse_client_keys, auth.py): names, scopes and caps from the
config's ``clients`` and the environment, errors that name the field and never a key, the key's entry
found in constant time, and what a scoped key may do at /v1/models, /health, /metrics and the proxy."""

import asyncio
import copy
import json

import pytest
import yaml
from hypothesis import given, strategies as st

from llm_router import admin, app as app_module, auth, config, endpoints, proxy, server

CONFIG = {
    'backends': {'sg': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}},
    'models': {'m1': {'backend': 'sg'}, 'm2': {'backend': 'sg'}},
    'clients': {'alice': {'models': ['m1'], 'metrics': False, 'health': False, 'max_concurrent': 2},
                'ops': {'metrics': True}},
}
ENV = {'LLM_ROUTER_CLIENT_KEYS': 'alice:alice-new, alice:alice-old,ops:ops-key',
       'LLM_ROUTER_CLIENT_API_KEYS': 'flat-1,flat-2'}


def parse(cfg=None, env=None):
    return config.parse_config(copy.deepcopy(CONFIG if cfg is None else cfg), ENV if env is None else env)


def test_names_scopes_and_defaults():
    cfg = parse()
    assert [(k.name, k.key) for k in cfg.client_keys] == [
        ('client-1', 'flat-1'), ('client-2', 'flat-2'), ('alice', 'alice-new'), ('alice', 'alice-old'), ('ops', 'ops-key')]
    alice = cfg.client_keys[2].client
    assert cfg.client_keys[3].client is alice          # the old and the new key of a name: one client
    assert (alice.models, alice.metrics, alice.health, alice.max_concurrent) == (frozenset({'m1'}), False, False, 2)
    ops = cfg.client_keys[4].client
    assert (ops.models, ops.metrics, ops.health, ops.max_concurrent) == (None, True, True, 0)
    flat = cfg.client_keys[0].client                   # a name not in clients may do everything, uncapped
    assert (flat.name, flat.models, flat.metrics, flat.health, flat.max_concurrent) == ('client-1', None, True, True, 0)
    assert 'alice-new' not in repr(cfg)                # no key in a repr


def test_flat_keys_alone_still_work():
    cfg = parse({k: v for k, v in CONFIG.items() if k != 'clients'}, {'LLM_ROUTER_CLIENT_API_KEYS': 'a,b'})
    assert [(k.name, k.key, k.client.models) for k in cfg.client_keys] == [('client-1', 'a', None), ('client-2', 'b', None)]


@pytest.mark.parametrize('env,message', [
    ({'LLM_ROUTER_CLIENT_KEYS': 'alice:k1,nocolon'}, 'LLM_ROUTER_CLIENT_KEYS: entry 2 is not name:key'),
    ({'LLM_ROUTER_CLIENT_KEYS': 'bad name:k1'}, 'LLM_ROUTER_CLIENT_KEYS: entry 1 is not name:key'),
    ({'LLM_ROUTER_CLIENT_KEYS': 'alice:'}, 'LLM_ROUTER_CLIENT_KEYS: entry 1 is not name:key'),
    ({'LLM_ROUTER_CLIENT_KEYS': ' , '}, 'LLM_ROUTER_CLIENT_API_KEYS: environment variable is not set or holds no key '
                                        r'\(nor LLM_ROUTER_CLIENT_KEYS\)'),
])
def test_bad_key_entries_are_named_by_position_never_by_value(env, message):
    with pytest.raises(config.ConfigError, match='^' + message) as e:
        parse({k: v for k, v in CONFIG.items() if k != 'clients'}, env)
    assert 'k1' not in str(e.value)


@pytest.mark.parametrize('clients,message', [
    ([], 'clients: expected dict, got list'),
    ({'alice': []}, 'clients.alice: expected a mapping'),
    ({'alice': {'models': ['m1', 'nope']}}, "clients.alice.models: unknown model nope"),
    ({'alice': {'models': 'm1'}}, 'clients.alice.models: expected list, got str'),
    ({'alice': {'metrics': 'no'}}, 'clients.alice.metrics: expected bool, got str'),
    ({'alice': {'health': 1}}, 'clients.alice.health: expected bool, got int'),
    ({'alice': {'max_concurrent': -1}}, r'clients.alice.max_concurrent: must be 0 \(no cap\) to 100000, got -1'),
    ({'alice': {'max_concurrent': 1.5}}, 'clients.alice.max_concurrent: expected int, got float'),
    ({'alice': {'limit': 3}}, r'clients.alice: unknown field\(s\) limit'),
    ({'bob': {}}, r'clients.bob: no client key has this name'),
    ({'a b': {}}, r'clients.a b: not a key name'),
])
def test_bad_clients_are_named_by_field(clients, message):
    cfg = dict(CONFIG, clients=clients)
    with pytest.raises(config.ConfigError, match='^' + message) as e:
        parse(cfg)
    assert 'alice-new' not in str(e.value) and 'flat-1' not in str(e.value)


@given(keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True),
       other=st.text(max_size=12))
def test_match_key_finds_the_entry_of_exactly_that_key(keys, other):
    entries = [config.ClientKey('n%d' % i, k, config.Client('n%d' % i)) for i, k in enumerate(keys)]
    for entry in entries:
        assert auth.match_key(entry.key, entries) is entry
    found = auth.match_key(other, entries)
    assert (found.key if found else None) == (other if other and other in keys else None)


def request(path='/', key=None, body=b''):
    req = server.Request(conn=None)
    req.method, req.path, req.body = ('POST' if body else 'GET'), path, body
    req.headers = {'authorization': 'Bearer ' + key} if key else {}
    return req


def call(handler, app, req):
    return asyncio.run(handler(app, req))


def test_the_key_is_checked_once_and_its_name_kept_on_the_request():
    app = app_module.App(parse())
    req = request(key='alice-old')
    assert auth.client_of(app, req).name == 'alice' and req.key_name == 'alice'
    app.cfg.client_keys = []                           # the verdict is kept: not checked again
    assert auth.client_of(app, req).name == 'alice'
    refused = request(key='nope')
    assert auth.client_of(app, refused) is None and refused.key_name == '' and refused.client is False


def test_a_scoped_key_lists_only_its_models_and_sees_no_details_nor_metrics():
    app = app_module.App(parse())
    listed = json.loads(call(endpoints.list_models, app, request(key='alice-new')).body)
    assert [m['id'] for m in listed['data']] == ['m1']
    listed = json.loads(call(endpoints.list_models, app, request(key='flat-2')).body)
    assert [m['id'] for m in listed['data']] == ['m1', 'm2']
    assert json.loads(call(endpoints.health, app, request(key='alice-new')).body) == {'status': 'ok'}
    assert 'backends' in json.loads(call(endpoints.health, app, request(key='ops-key')).body)
    reply = call(endpoints.metrics_endpoint, app, request(key='alice-new'))
    assert reply.status == 403 and json.loads(reply.body)['error']['code'] == 'permission_denied'
    assert call(endpoints.metrics_endpoint, app, request(key='ops-key')).status == 200
    assert call(endpoints.metrics_endpoint, app, request(key='nope')).status == 401


def test_a_scoped_key_gets_404_for_other_models_and_429_over_its_cap():
    app = app_module.App(parse())
    reply = call(proxy.proxy, app, request('/v1/chat/completions', 'alice-new', b'{"model": "m2"}'))
    assert reply.status == 404 and json.loads(reply.body)['error']['code'] == 'model_not_found'
    app.caps.inflight['alice'] = 2                     # two requests of alice in flight (any of its keys)
    reply = call(proxy.proxy, app, request('/v1/chat/completions', 'alice-old', b'{"model": "m1"}'))
    assert reply.status == 429 and dict(reply.headers)['Retry-After'] == '1'
    error = json.loads(reply.body)['error']
    assert error['code'] == 'rate_limit_exceeded' and 'alice' in error['message'] and 'alice-old' not in error['message']
    assert app.caps.inflight == {'alice': 2}           # a refused request is not counted


def test_caps_count_by_name():
    caps = auth.Caps()
    alice = config.Client('alice', max_concurrent=2)
    free = config.Client('free')
    assert caps.take(alice) and caps.take(config.Client('alice', max_concurrent=2)) and not caps.take(alice)
    assert all(caps.take(free) for dummy in range(50))
    caps.give(alice)
    assert caps.take(alice)
    for dummy in range(50):
        caps.give(free)
    assert caps.inflight == {'alice': 2}


def test_a_reload_applies_new_keys_and_scopes_and_keeps_the_counts(tmp_path):
    keys, path = tmp_path / 'env', tmp_path / 'router.yml'
    keys.write_text('LLM_ROUTER_CLIENT_KEYS="alice:alice-old"\n')
    path.write_text(yaml.safe_dump(dict(CONFIG, key_file=str(keys), clients={'alice': {'models': ['m1']}})))
    app = app_module.App(config.load_config(str(path), environ={}), str(path))
    app.caps.inflight['alice'] = 1                     # a request of alice in flight across the reload
    keys.write_text('LLM_ROUTER_CLIENT_KEYS="alice:alice-new,alice:alice-old"\n')
    path.write_text(yaml.safe_dump(dict(CONFIG, key_file=str(keys), clients={'alice': {'max_concurrent': 1}})))
    result = asyncio.run(admin.reload_keys(app))
    assert result['reloaded'] and result['client_keys'] == 2
    listed = json.loads(call(endpoints.list_models, app, request(key='alice-new')).body)
    assert [m['id'] for m in listed['data']] == ['m1', 'm2']          # the new scope: every model
    reply = call(proxy.proxy, app, request('/v1/chat/completions', 'alice-old', b'{"model": "m2"}'))
    assert reply.status == 429                                        # the new cap, the count kept
