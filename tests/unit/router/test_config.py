# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router's config parsing (llm_router/config.py), without a network; the entry point's
answer to a bad config."""

import copy
import subprocess
import sys

import pytest
import yaml

from llm_router import config

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'k-new, k-old ,', 'TABBY_ADMIN': 'secret-admin-value',
       'SGLANG_KEY': 'secret-sglang-value'}
GOOD = {
    'listen': {'host': '0.0.0.0', 'port': 4000},
    'backends': {
        'tabby': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000', 'unit': 'tabbyapi.service',
                  'key_env': 'TABBY_ADMIN'},
        'qwen': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:8080/', 'unit': 'llamacpp@qwen.service'},
        'sg': {'kind': 'sglang', 'url': 'http://127.0.0.1:30000', 'key_env': 'SGLANG_KEY',
               'connect_timeout': 2, 'read_timeout': 120},
    },
    'models': {'llama-70b': {'backend': 'tabby', 'model': 'Llama-3.3-70B-exl3'},
               'qwen': {'backend': 'qwen'}, 'mistral': {'backend': 'sg'}},
}


def test_good_config_parses_with_defaults():
    cfg = config.parse_config(copy.deepcopy(GOOD), ENV)
    assert (cfg.host, cfg.port, cfg.swap_policy, cfg.readiness_timeout) == ('0.0.0.0', 4000, 'exclusive', 300.0)
    assert cfg.systemctl == ['/usr/bin/systemctl']
    assert cfg.client_timeout == 75.0 and cfg.failure_backoff == 30.0
    assert [(k.name, k.key) for k in cfg.client_keys] == [('client-1', 'k-new'), ('client-2', 'k-old')]
    assert cfg.backends['qwen'].url == 'http://127.0.0.1:8080'          # trailing slash dropped
    assert cfg.backends['qwen'].key == '' and cfg.backends['qwen'].unit == 'llamacpp@qwen.service'
    assert cfg.backends['tabby'].key == 'secret-admin-value'
    assert cfg.backends['sg'].read_timeout == 120.0
    assert cfg.models['llama-70b'].backend_model == 'Llama-3.3-70B-exl3'
    assert cfg.models['qwen'].backend_model == 'qwen'                     # defaults to the name
    assert cfg.models['mistral'].backend is cfg.backends['sg']


def edit(path, value):
    data = copy.deepcopy(GOOD)
    node = data
    *parents, last = path
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize('path,value,message', [
    (('models', 'qwen', 'backend'), 'x', "models.qwen.backend: unknown backend 'x'"),
    (('models', 'qwen', 'backend'), KeyError, 'models.qwen.backend: required'),
    (('models', 'qwen', 'extra'), 1, 'models.qwen: unknown field(s) extra'),
    (('backends', 'sg', 'kind'), 'ollama', "backends.sg.kind: must be one of llamacpp, openai, sglang, tabbyapi, vllm, got 'ollama'"),
    (('backends', 'sg', 'url'), 'localhost:30000', 'backends.sg.url: expected http(s)://host:port'),
    (('backends', 'sg', 'url'), 'http://h:1/v1', 'backends.sg.url: expected http(s)://host:port'),
    (('backends', 'sg', 'url'), KeyError, 'backends.sg.url: required'),
    (('backends', 'sg', 'unit'), 'rm -rf /', 'backends.sg.unit: expected a systemd service name'),
    (('backends', 'sg', 'key_env'), 'NOT-A-VAR', 'backends.sg.key_env: not a valid variable name'),
    (('backends', 'sg', 'key_env'), 'MISSING_VAR', 'backends.sg.key_env: environment variable MISSING_VAR is not set or empty'),
    (('backends', 'sg', 'read_timeout'), 'soon', 'backends.sg.read_timeout: expected float, got str'),
    (('backends', 'sg', 'connect_timeout'), 0, 'backends.sg.connect_timeout: must be greater than 0'),
    (('backends', 'sg'), 'http://x', 'backends.sg: expected a mapping'),
    (('backends',), {}, 'backends: at least one backend is required'),
    (('models',), KeyError, 'models: required'),
    (('listen', 'port'), 70000, 'listen.port: must be 1-65535'),
    (('listen', 'port'), '4000', 'listen.port: expected int, got str'),
    (('listen', 'port'), True, 'listen.port: expected int, got bool'),
    (('listen', 'hots'), 'x', 'listen: unknown field(s) hots'),
    (('swap_policy',), 'greedy', "swap_policy: must be one of exclusive, shared, got 'greedy'"),
    (('readiness_timeout',), -1, 'readiness_timeout: must be greater than 0'),
    (('client_timeout',), 0, 'client_timeout: must be greater than 0'),
    (('client_timeout',), -2.5, 'client_timeout: must be greater than 0'),
    (('client_timeout',), '75s', 'client_timeout: expected float, got str'),
    (('client_timeout',), True, 'client_timeout: expected float, got bool'),
    (('client_timeout',), float('inf'), 'client_timeout: must be a finite number'),
    (('systemctl',), '/usr/bin/systemctl', 'systemctl: expected list, got str'),
    (('systemctl',), [], 'systemctl: expected a non-empty list'),
    (('log_level',), 'chatty', "log_level: must be DEBUG, INFO, WARNING or ERROR"),
    (('failure_backoff',), 0, 'failure_backoff: must be greater than 0'),
    (('failure_backoff',), 3601, 'failure_backoff: must be at most 3600 seconds, got 3601'),
    (('failure_backoff',), 'long', 'failure_backoff: expected float, got str'),
    (('backend',), {}, 'config: unknown field(s) backend'),
])
def test_bad_config_names_the_field(path, value, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse_config(edit(path, value), ENV)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize('keys', [None, '', ' , ,'])
def test_missing_client_keys_named_by_variable(keys):
    env = dict(ENV)
    if keys is None:
        del env['LLM_ROUTER_CLIENT_API_KEYS']
    else:
        env['LLM_ROUTER_CLIENT_API_KEYS'] = keys
    with pytest.raises(config.ConfigError, match='^LLM_ROUTER_CLIENT_API_KEYS: environment variable is not set'):
        config.parse_config(copy.deepcopy(GOOD), env)


def test_top_level_must_be_a_mapping():
    with pytest.raises(config.ConfigError, match='top level'):
        config.parse_config(['x'], ENV)


def test_router_refuses_to_start_on_bad_config_and_never_prints_a_key(tmp_path, installed_router):
    bad = edit(('models', 'qwen', 'backend'), 'x')
    path = tmp_path / 'router.yml'
    path.write_text(yaml.safe_dump(bad))
    env = dict(ENV, PYTHONPATH=str(installed_router))
    run = subprocess.run([sys.executable, '-m', 'llm_router', '--config', str(path)],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert run.returncode == 2
    assert "config error: models.qwen.backend: unknown backend 'x'" in run.stderr
    path.write_text(yaml.safe_dump(GOOD))
    ok = subprocess.run([sys.executable, '-m', 'llm_router', '--config', str(path),
                         '--check'], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert 'config OK (3 backends, 3 models)' in ok.stdout
    path.write_text('listen: [unclosed')
    broken = subprocess.run([sys.executable, '-m', 'llm_router', '--config', str(path)],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert broken.returncode == 2 and 'is not valid YAML' in broken.stderr
    for out in (run.stdout + run.stderr, ok.stdout + ok.stderr, broken.stdout + broken.stderr):
        for secret in ('secret-admin-value', 'secret-sglang-value', 'k-new', 'k-old'):
            assert secret not in out


def test_ttl_and_preload_parse():
    doc = copy.deepcopy(GOOD)
    doc.update(default_ttl=600, preload=['qwen', 'mistral'])
    doc['backends']['tabby']['ttl'] = 0                  # never, whatever default_ttl says
    doc['models']['qwen']['ttl'] = 2.5
    cfg = config.parse_config(doc, ENV)
    assert cfg.default_ttl == 600.0 and [m.name for m in cfg.preload] == ['qwen', 'mistral']
    assert cfg.backends['tabby'].ttl == 0.0 and cfg.backends['qwen'].ttl is None
    assert cfg.models['qwen'].ttl == 2.5 and cfg.models['mistral'].ttl is None
    plain = config.parse_config(copy.deepcopy(GOOD), ENV)
    assert plain.default_ttl == 0.0 and plain.preload == []       # default: nothing unloaded, nothing preloaded


@pytest.mark.parametrize('path,value,message', [
    (('default_ttl',), -1, 'default_ttl: must be 0 (never unload) or more seconds, got -1'),
    (('default_ttl',), '10m', 'default_ttl: expected seconds (a number, 0 = never unload), got str'),
    (('default_ttl',), float('nan'), 'default_ttl: must be 0 (never unload) or more seconds, got nan'),
    (('backends', 'qwen', 'ttl'), True, 'backends.qwen.ttl: expected seconds (a number, 0 = never unload), got bool'),
    (('backends', 'qwen', 'ttl'), -0.5, 'backends.qwen.ttl: must be 0 (never unload) or more seconds'),
    (('models', 'qwen', 'ttl'), [1], 'models.qwen.ttl: expected seconds (a number, 0 = never unload), got list'),
    (('models', 'qwen', 'ttl'), float('inf'), 'models.qwen.ttl: must be 0 (never unload) or more seconds, got inf'),
    # sg has no unit: the router stops only the units it manages
    (('backends', 'sg', 'ttl'), 60, 'backends.sg.ttl: the backend has no unit, and the router stops only the units'),
    (('models', 'mistral', 'ttl'), 60, 'models.mistral.ttl: backend sg has no unit, and the router stops only the units'),
    (('preload',), 'qwen', 'preload: expected list, got str'),
    (('preload',), ['qwen', 'nope'], "preload[1]: unknown model 'nope' (not in models)"),
    (('preload',), [{'model': 'qwen'}], "preload[0]: unknown model {'model': 'qwen'} (not in models)"),
    (('preload',), ['qwen', 'qwen'], 'preload[1]: model qwen is listed twice'),
    (('preload',), ['llama-70b', 'qwen'], 'preload: with swap_policy exclusive only one backend with a unit runs at '
                                          'a time; got llama-70b (backend tabby), qwen (backend qwen)'),
])
def test_bad_ttl_or_preload_names_the_field(path, value, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse_config(edit(path, value), ENV)
    assert str(e.value).startswith(message), str(e.value)


def test_preload_of_two_models_on_one_tabbyapi_is_refused_and_shared_policy_allows_several_units():
    doc = edit(('models', 'small'), {'backend': 'tabby', 'model': 'Small-exl3'})
    doc['preload'] = ['llama-70b', 'small']
    with pytest.raises(config.ConfigError, match='^preload\\[1\\]: models llama-70b and small are on the same '
                                                 'TabbyAPI backend tabby, which holds one model at a time'):
        config.parse_config(doc, ENV)
    doc = edit(('preload',), ['llama-70b', 'qwen', 'mistral'])
    doc['swap_policy'] = 'shared'
    assert [m.name for m in config.parse_config(doc, ENV).preload] == ['llama-70b', 'qwen', 'mistral']
