# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input is refused before anything happens, with the name of what was wrong.

* Every role's meta/argument_specs.yml, through real ``ansible-playbook`` runs on localhost (connection
  local). The cases are generated from the specs themselves (every required option left out, every
  int/float/bool/dict option given a value of the wrong type, every option with choices given one
  that is not among them, every list of dicts given a bad element), so a role or an option added
  later is covered without editing this file. Each case is one inventory host of a single run; a
  baseline host per entry point proves the valid variables pass, so each case fails for its own
  reason. The run uses ``--check`` and a tag no task has: only the validation tasks (tagged
  ``always`` by Ansible) run, so nothing on the controller changes even if a case were accepted.
* The checks the roles assert themselves (validate.yml: unknown TabbyAPI config sections, keys that
  are not strings, bad instance entries), run through ``tasks_from: validate``.
* The options of gpufleet.llm.wait_for_backend: wrong type, bad choice, missing url.
* The router's config loader: wrong types, missing and unknown fields, as
  ``python -m llm_router --check`` (the package laid out as the role installs it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tests/support'))

import router_package  # noqa: E402  pylint: disable=wrong-import-position

ROLES = ROOT / 'roles'
PLAYBOOK = Path(sys.executable).parent / 'ansible-playbook'

# Ansible converts almost anything to a string (a dict becomes its repr), so str and path options
# have no "wrong type"; the roles check the ones that matter (keys) themselves, tested further below.
WRONG = {'int': 'soon', 'float': 'soon', 'bool': 'maybe', 'dict': 'not-a-mapping'}
SAMPLE = {'str': 'x', 'path': '/nonexistent/gpufleet-test', 'int': 1, 'float': 1.0, 'bool': True,
          'list': [], 'dict': {}, 'raw': 'x'}


def _specs():
    """(role, entry point, options) of every role with an argument spec."""
    found = []
    for spec_file in sorted(ROLES.glob('*/meta/argument_specs.yml')):
        role = spec_file.parent.parent.name
        specs = yaml.safe_load(spec_file.read_text())['argument_specs']
        for entry, spec in sorted(specs.items()):
            found.append((role, entry, spec.get('options') or {}))
    return found


def _sample(option):
    if option.get('type') == 'list' and option.get('elements') == 'dict':
        return []
    if 'choices' in option and option.get('type', 'str') == 'str':
        return option['choices'][0]
    return SAMPLE[option.get('type', 'str')]


def _element(suboptions):
    """A valid element of a list of dicts: its required sub-options with sample values."""
    return {name: _sample(o) for name, o in suboptions.items() if o.get('required')}


def _cases():
    """[(case id, role, entry, vars, names that must appear in the error)], baselines first."""
    cases = []
    for role, entry, options in _specs():
        base = {name: _sample(o) for name, o in options.items() if o.get('required')}
        tag = '%s.%s' % (role, entry)
        cases.append(('%s:baseline' % tag, role, entry, base, None))
        for name, o in sorted(options.items()):
            kind = o.get('type', 'str')
            if o.get('required'):
                cases.append(('%s:missing:%s' % (tag, name), role, entry,
                              {k: v for k, v in base.items() if k != name}, [name]))
            if kind in WRONG:
                cases.append(('%s:type:%s' % (tag, name), role, entry, dict(base, **{name: WRONG[kind]}), [name]))
            if 'choices' in o and kind == 'str':
                cases.append(('%s:choice:%s' % (tag, name), role, entry, dict(base, **{name: 'no-such-choice'}), [name]))
            if 'choices' in o and kind == 'list':
                cases.append(('%s:choice:%s' % (tag, name), role, entry, dict(base, **{name: ['no-such-choice']}), [name]))
            if kind == 'list' and o.get('elements') in ('int', 'dict'):
                cases.append(('%s:element:%s' % (tag, name), role, entry, dict(base, **{name: ['not-an-element']}), [name]))
            subs = o.get('options')
            if kind == 'list' and o.get('elements') == 'dict' and subs:
                good = _element(subs)
                cases.append(('%s:unknown-field:%s' % (tag, name), role, entry,
                              dict(base, **{name: [dict(good, no_such_field=1)]}), [name, 'no_such_field']))
                for sub, so in sorted(subs.items()):
                    if so.get('required'):
                        cases.append(('%s:missing:%s.%s' % (tag, name, sub), role, entry,
                                      dict(base, **{name: [{k: v for k, v in good.items() if k != sub}]}), [name, sub]))
                    if so.get('type', 'str') in WRONG:
                        cases.append(('%s:type:%s.%s' % (tag, name, sub), role, entry,
                                      dict(base, **{name: [dict(good, **{sub: WRONG[so['type']]})]}), [name, sub]))
    return cases


CASES = _cases()


def _run(tmp, hosts, play, *args, timeout=600):
    """ansible-playbook with the json callback; returns (rc, {host: [task results]}, stats, raw output)."""
    inventory = {'all': {'hosts': {h: dict(v, ansible_connection='local', ansible_python_interpreter=sys.executable)
                                   for h, v in hosts.items()}}}
    (tmp / 'inventory.yml').write_text(yaml.safe_dump(inventory))
    (tmp / 'play.yml').write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / 'build/collections'), ANSIBLE_FORKS='8',
               ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_DEPRECATION_WARNINGS='false',
               ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'))
    proc = subprocess.run([str(PLAYBOOK), '-i', str(tmp / 'inventory.yml'), str(tmp / 'play.yml')] + list(args),
                          cwd=str(tmp), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    data = json.loads(proc.stdout[proc.stdout.index('{'):])
    results = {}
    for p in data['plays']:
        for t in p['tasks']:
            for host, r in t['hosts'].items():
                if not r.get('skipped'):
                    results.setdefault(host, []).append((t['task']['name'], r))
    return proc.returncode, results, data['stats'], proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def argspec_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('argspec')
    hosts, tasks = {}, []
    for i, (_ign, role, entry, variables, _ign) in enumerate(CASES):
        hosts['case%03d' % i] = dict(variables, case_entry='%s.%s' % (role, entry))
    for role, entry, _ign in _specs():
        tasks.append({'name': 'Validate %s %s' % (role, entry),
                      'ansible.builtin.import_role': {'name': 'gpufleet.llm.' + role, 'tasks_from': entry},
                      'when': "case_entry == '%s.%s'" % (role, entry)})
    play = [{'name': 'Bad input', 'hosts': 'all', 'gather_facts': False, 'tasks': tasks}]
    return _run(tmp, hosts, play, '--check', '--tags', 'gpufleet_no_such_tag')


def test_every_role_has_an_argument_spec_for_main():
    with_spec = {role for role, _ign, _ign in _specs()}
    with_tasks = {p.parent.parent.name for p in ROLES.glob('*/tasks/main.yml')}
    assert with_tasks <= with_spec, 'roles without meta/argument_specs.yml: %s' % sorted(with_tasks - with_spec)


def test_generated_cases_cover_every_role():
    roles = {c[1] for c in CASES if c[4]}
    assert roles == {role for role, _ign, options in _specs() if options}
    assert len(CASES) > 40


@pytest.mark.parametrize('index', range(len(CASES)), ids=[c[0] for c in CASES])
def test_argument_spec_rejects_naming_the_variable(argspec_run, index):
    rc, results, stats, output = argspec_run
    case_id, role, entry, _ign, names = CASES[index]
    host = 'case%03d' % index
    ran = results.get(host, [])
    assert len(ran) == 1, '%s: expected only the validation task, got %s' % (case_id, [n for n, _ign in ran])
    task, result = ran[0]
    assert 'Validating arguments against arg spec' in task and role in task
    assert stats[host]['changed'] == 0
    if names is None:
        assert not result.get('failed'), '%s: the baseline must pass: %s' % (case_id, result.get('msg'))
        return
    assert rc != 0
    assert result.get('failed') and stats[host]['failures'] == 1, '%s was accepted' % case_id
    for name in names:
        assert name in result['msg'], '%s: %r not named in %r' % (case_id, name, result['msg'])
    assert 'Traceback' not in output


# --- the checks the roles make themselves (tasks/validate.yml) -------------------------------------

ASSERTED = [
    ('tabbyapi-auth-section', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_config_extra': {'auth': {'disable': True}}},
     ['tabbyapi_config_extra', 'auth', 'tabbyapi_disable_auth']),
    ('tabbyapi-section-not-mapping', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_config_extra': {'network': 'x'}},
     ['tabbyapi_config_extra.network']),
    ('tabbyapi-no-api-key', 'tabbyapi', {'tabbyapi_admin_key': 'k2'}, ['tabbyapi_api_key']),
    ('tabbyapi-key-not-a-string', 'tabbyapi', {'tabbyapi_api_key': {'a': 1}, 'tabbyapi_admin_key': 'k2'},
     ['tabbyapi_api_key']),
    ('tabbyapi-archive-without-src', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_install_method': 'archive'},
     ['tabbyapi_archive_src']),
    ('tabbyapi-port-too-high', 'tabbyapi', {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_port': 99999},
     ['tabbyapi_port', '1-65535']),
    ('tabbyapi-port-zero', 'tabbyapi', {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_port': 0},
     ['tabbyapi_port', '1-65535']),
    # settings of the real config model only (roles/tabbyapi/vars/config_schema.yml), per branch
    ('tabbyapi-unknown-setting', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_config_extra': {'model': {'max_seq_length': 4096}}},
     ['tabbyapi_config_extra.model', 'max_seq_length', 'max_seq_len']),
    ('tabbyapi-main-only-setting-on-exl2-checkpoint', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_config_extra': {'network': {'sse_ping_interval': 5}}},
     ['tabbyapi_config_extra.network', 'sse_ping_interval', 'exl2-checkpoint']),
    ('tabbyapi-bad-log-retention', 'tabbyapi',
     {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'tabbyapi_log_retention': 'a week'},
     ['tabbyapi_log_retention']),
    ('sglang-key-not-a-string', 'sglang', {'sglang_api_key': ['a']}, ['sglang_api_key']),
    ('sglang-bad-instance-name', 'sglang',
     {'sglang_api_key': 'k', 'sglang_instances': [{'name': 'a b', 'model_path': '/m'}]}, ['sglang_instances[0]']),
    ('sglang-duplicate-ports', 'sglang',
     {'sglang_api_key': 'k', 'sglang_instances': [{'name': 'a', 'model_path': '/m', 'port': 1},
                                                  {'name': 'b', 'model_path': '/m', 'port': 1}]},
     ['sglang_instances']),
    ('llamacpp-key-not-a-string', 'llamacpp', {'llamacpp_api_key': {'a': 1}}, ['llamacpp_api_key']),
    ('llamacpp-key-is-a-comment', 'llamacpp', {'llamacpp_api_key': '#k'}, ['llamacpp_api_key']),
    ('llamacpp-model-and-model-src', 'llamacpp',
     {'llamacpp_api_key': 'k', 'llamacpp_instances': [{'name': 'a', 'model': '/m.gguf', 'model_src': '/m.gguf'}]},
     ['llamacpp_instances[0]', 'model_src']),
    ('llamacpp-reserved-arg', 'llamacpp',
     {'llamacpp_api_key': 'k', 'llamacpp_instances': [{'name': 'a', 'model': '/m.gguf', 'extra_args': ['--api-key=x']}]},
     ['llamacpp_instances[0]', 'extra_args']),
    ('router-ttl-on-a-backend-without-unit', 'llm_router',
     {'llm_router_client_api_keys': ['ck'], 'llm_router_models': {'m': {'backend': 'plain'}},
      'llm_router_backends': {'plain': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'ttl': 60}}},
     ['llm_router_backends.plain', 'ttl']),
    ('router-model-ttl-negative', 'llm_router',
     {'llm_router_client_api_keys': ['ck'], 'llm_router_models': {'m': {'backend': 'plain', 'ttl': -1}},
      'llm_router_backends': {'plain': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'unit': 'p.service'}}},
     ['llm_router_models.m', 'ttl']),
    ('router-preload-unknown-model', 'llm_router',
     {'llm_router_client_api_keys': ['ck'], 'llm_router_models': {'m': {'backend': 'plain'}}, 'llm_router_preload': ['x'],
      'llm_router_backends': {'plain': {'kind': 'openai', 'url': 'http://127.0.0.1:9'}}},
     ['llm_router_preload', 'm']),
    ('router-preload-two-units-exclusive', 'llm_router',
     {'llm_router_client_api_keys': ['ck'], 'llm_router_preload': ['m', 'n'],
      'llm_router_models': {'m': {'backend': 'p'}, 'n': {'backend': 'q'}},
      'llm_router_backends': {'p': {'kind': 'openai', 'url': 'http://127.0.0.1:9', 'unit': 'p.service'},
                              'q': {'kind': 'openai', 'url': 'http://127.0.0.1:8', 'unit': 'q.service'}}},
     ['llm_router_preload', 'exclusive']),
    ('gateway-health-key-too-short', 'llm_gateway', {'llm_gateway_health_key': 'short', 'llm_gateway_http_enabled': True},
     ['llm_gateway_health_key']),
    ('gateway-health-key-with-a-quote', 'llm_gateway',
     {'llm_gateway_health_key': 'a-long-enough-key-"quoted"', 'llm_gateway_http_enabled': True}, ['llm_gateway_health_key']),
    ('gateway-no-listener', 'llm_gateway', {'llm_gateway_health_key': 'a-long-enough-health-key'},
     ['llm_gateway_tls_cert', 'llm_gateway_http_enabled']),
    ('gateway-cert-without-key', 'llm_gateway',
     {'llm_gateway_health_key': 'a-long-enough-health-key', 'llm_gateway_tls_cert': '-----BEGIN CERTIFICATE-----\nx'},
     ['llm_gateway_tls_key']),
    ('gateway-max-body-too-small', 'llm_gateway',
     {'llm_gateway_health_key': 'a-long-enough-health-key', 'llm_gateway_http_enabled': True, 'llm_gateway_max_body': 10},
     ['llm_gateway_max_body']),
    ('gateway-no-router-host', 'llm_gateway',
     {'llm_gateway_health_key': 'a-long-enough-health-key', 'llm_gateway_http_enabled': True}, ['llm_gateway_router_group']),
]


@pytest.fixture(scope='module')
def asserted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('asserted')
    hosts = {'a%02d' % i: dict(v, case_role=role) for i, (_ign, role, v, _ign) in enumerate(ASSERTED)}
    tasks = [{'name': 'Validate %s' % role,
              'ansible.builtin.include_role': {'name': 'gpufleet.llm.' + role, 'tasks_from': 'validate'},
              'when': "case_role == '%s'" % role}
             for role in sorted({c[1] for c in ASSERTED})]
    play = [{'name': 'Asserted input', 'hosts': 'all', 'gather_facts': False, 'tasks': tasks}]
    return _run(tmp, hosts, play, '--check')


@pytest.mark.parametrize('index', range(len(ASSERTED)), ids=[c[0] for c in ASSERTED])
def test_role_asserts_name_the_variable(asserted_run, index):
    rc, results, stats, _ign = asserted_run
    case_id, _ign, _ign, names = ASSERTED[index]
    host = 'a%02d' % index
    assert rc != 0
    failed = [(t, r) for t, r in results.get(host, []) if r.get('failed')]
    assert stats[host]['failures'] == 1 and stats[host]['changed'] == 0 and len(failed) == 1, case_id
    result = failed[0][1]
    # a looped assert reports 'One or more items failed'; each failed item carries its own message
    message = ' | '.join([result.get('msg', '')] + [r.get('msg', '') for r in result.get('results', []) if r.get('failed')])
    for name in names:
        assert name in message, '%s: %r not named in %r' % (case_id, name, message)


# --- gpufleet.llm.wait_for_backend options ---------------------------------------------------------

MODULE_CASES = [
    ('timeout-not-a-number', {'url': 'http://127.0.0.1:9', 'timeout': 'soon'}, ['timeout']),
    ('max-interval-not-a-number', {'url': 'http://127.0.0.1:9', 'max_interval': 'often', 'timeout': 1}, ['max_interval']),
    ('reject-statuses-not-ints', {'url': 'http://127.0.0.1:9', 'reject_statuses': ['four-oh-one'], 'timeout': 1},
     ['reject_statuses']),
    ('validate-certs-not-a-bool', {'url': 'http://127.0.0.1:9', 'validate_certs': 'perhaps', 'timeout': 1},
     ['validate_certs']),
    ('backend-bad-choice', {'url': 'http://127.0.0.1:9', 'backend': 'ollama', 'timeout': 1}, ['backend', 'ollama']),
    ('url-missing', {'backend': 'tabbyapi', 'timeout': 1}, ['url']),
    ('unknown-option', {'url': 'http://127.0.0.1:9', 'api_keys': 'x', 'timeout': 1}, ['api_keys']),
]


@pytest.fixture(scope='module')
def module_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('module')
    hosts = {'m%02d' % i: {} for i in range(len(MODULE_CASES))}
    tasks = [{'name': 'Case %s' % case_id, 'gpufleet.llm.wait_for_backend': args,
              'when': "inventory_hostname == 'm%02d'" % i}
             for i, (case_id, args, _ign) in enumerate(MODULE_CASES)]
    play = [{'name': 'Bad module options', 'hosts': 'all', 'gather_facts': False, 'tasks': tasks}]
    return _run(tmp, hosts, play)


@pytest.mark.parametrize('index', range(len(MODULE_CASES)), ids=[c[0] for c in MODULE_CASES])
def test_module_options_name_the_option(module_run, index):
    rc, results, stats, _ign = module_run
    case_id, _ign, names = MODULE_CASES[index]
    host = 'm%02d' % index
    assert rc != 0
    ran = results.get(host, [])
    assert len(ran) == 1 and ran[0][1].get('failed') and stats[host]['failures'] == 1, case_id
    message = ran[0][1].get('msg', '')
    # refused by the argument spec, not after a connection attempt
    assert 'attempt' not in message and 'connection refused' not in message, message
    for name in names:
        assert name in message, '%s: %r not named in %r' % (case_id, name, message)


# --- python -m llm_router --check ------------------------------------------------------------------

ROUTER_ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'client-key-1', 'TABBY_KEY': 'tabby-key-1'}
ROUTER_GOOD = {
    'listen': {'host': '127.0.0.1', 'port': 4000},
    'readiness_timeout': 30,
    'backends': {'tabby': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000', 'unit': 'tabbyapi.service',
                           'key_env': 'TABBY_KEY', 'read_timeout': 60}},
    'models': {'m': {'backend': 'tabby', 'model': 'M-exl3'}},
}


@pytest.fixture(scope='module')
def installed_router(tmp_path_factory):
    """The router package as the role installs it (tests/support/router_package.py)."""
    return router_package.install(tmp_path_factory.mktemp('router-package'))


def router_check(installed, tmp_path, config, env=None):
    path = tmp_path / 'router.yml'
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    full = {'PATH': os.environ['PATH'], 'PYTHONPATH': str(installed)}
    full.update(ROUTER_ENV if env is None else env)
    return subprocess.run([sys.executable, '-m', 'llm_router', '--check', '--config', str(path)], env=full,
                          capture_output=True, text=True, timeout=60, check=False)


def _edit(path, value):
    data = json.loads(json.dumps(ROUTER_GOOD))
    node = data
    for p in path[:-1]:
        node = node[p]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


ROUTER_CASES = [
    (('listen', 'port'), 'four thousand', 'listen.port'),
    (('listen', 'host'), 4, 'listen.host'),
    (('listen',), ['0.0.0.0'], 'listen'),
    (('readiness_timeout',), 'long', 'readiness_timeout'),
    (('drain_timeout',), -1, 'drain_timeout'),
    (('shutdown_timeout',), False, 'shutdown_timeout'),
    (('client_timeout',), 0, 'client_timeout'),
    (('systemctl',), '/usr/bin/systemctl', 'systemctl'),
    (('systemctl',), ['/usr/bin/sudo', 3], 'systemctl'),
    (('log_level',), 'LOUD', 'log_level'),
    (('swap_policy',), ['exclusive'], 'swap_policy'),
    (('backends',), KeyError, 'backends'),
    (('backends',), ['tabby'], 'backends'),
    (('backends', 'tabby', 'kind'), KeyError, 'backends.tabby.kind'),
    (('backends', 'tabby', 'kind'), 7, 'backends.tabby.kind'),
    (('backends', 'tabby', 'url'), ['http://127.0.0.1:5000'], 'backends.tabby.url'),
    (('backends', 'tabby', 'unit'), True, 'backends.tabby.unit'),
    (('backends', 'tabby', 'key_env'), 12, 'backends.tabby.key_env'),
    (('backends', 'tabby', 'read_timeout'), '10m', 'backends.tabby.read_timeout'),
    (('backends', 'tabby', 'api_key'), 'plain', 'api_key'),
    (('models',), KeyError, 'models'),
    (('models', 'm', 'backend'), KeyError, 'models.m.backend'),
    (('models', 'm', 'backend'), {'name': 'tabby'}, 'models.m.backend'),
    (('models', 'm', 'model'), 3.5, 'models.m.model'),
    (('models', 'm', 'weights'), '/x', 'weights'),
    (('listen', 'address'), '::', 'address'),
    (('bind',), '0.0.0.0:4000', 'bind'),
    (('default_ttl',), '15m', 'default_ttl'),
    (('backends', 'tabby', 'ttl'), -5, 'backends.tabby.ttl'),
    (('models', 'm', 'ttl'), [60], 'models.m.ttl'),
    (('preload',), 'm', 'preload'),
    (('preload',), ['m', 'ghost'], 'preload[1]'),
]


@pytest.mark.parametrize('path,value,field', ROUTER_CASES,
                         ids=['%s=%s' % ('.'.join(c[0]), 'missing' if c[1] is KeyError else type(c[1]).__name__)
                              for c in ROUTER_CASES])
def test_router_config_errors_name_the_field(installed_router, tmp_path, path, value, field):
    proc = router_check(installed_router, tmp_path, _edit(path, value))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('llm-router: config error: '), proc.stderr
    assert field in lines[0]
    assert 'Traceback' not in proc.stderr
    for secret in ROUTER_ENV.values():
        assert secret not in proc.stdout + proc.stderr


def test_router_good_config_passes_the_check(installed_router, tmp_path):
    proc = router_check(installed_router, tmp_path, ROUTER_GOOD)
    assert proc.returncode == 0 and 'config OK (1 backends, 1 models)' in proc.stdout, proc.stderr


@pytest.mark.parametrize('env,field', [
    ({'TABBY_KEY': 'tabby-key-1'}, 'LLM_ROUTER_CLIENT_API_KEYS'),
    ({'LLM_ROUTER_CLIENT_API_KEYS': ' , ,', 'TABBY_KEY': 'tabby-key-1'}, 'LLM_ROUTER_CLIENT_API_KEYS'),
    ({'LLM_ROUTER_CLIENT_API_KEYS': 'client-key-1'}, 'backends.tabby.key_env: environment variable TABBY_KEY'),
])
def test_router_missing_keys_are_named(installed_router, tmp_path, env, field):
    proc = router_check(installed_router, tmp_path, ROUTER_GOOD, env=env)
    assert proc.returncode == 2 and field in proc.stderr, proc.stderr


@pytest.mark.parametrize('text,field', [
    ('listen: [', 'not valid YAML'),
    ('- a\n- b\n', 'top level'),
    ('', 'top level'),
])
def test_router_unparsable_config(installed_router, tmp_path, text, field):
    proc = router_check(installed_router, tmp_path, text)
    assert proc.returncode == 2 and field in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
