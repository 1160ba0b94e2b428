# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzzing the router's config loader (llm_router/config.py): any YAML-ish document gives a Config or
one ConfigError whose message starts with the field it is about; never another exception (which
would be a traceback at start-up instead of a one-line error naming the field)."""

import copy
import math
import os
import re
import subprocess
import sys

import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from llm_router import config

ENV = {'LLM_ROUTER_CLIENT_API_KEYS': 'fuzz-client-key', 'TABBY_KEY': 'fuzz-tabby-key', 'SG_KEY': 'fuzz-sg-key'}
GOOD = {
    'listen': {'host': '127.0.0.1', 'port': 4000},
    'swap_policy': 'exclusive',
    'readiness_timeout': 30,
    'drain_timeout': 30,
    'shutdown_timeout': 5,
    'systemctl': ['/usr/bin/systemctl'],
    'log_level': 'INFO',
    'default_ttl': 60,
    'preload': ['m'],
    'backends': {
        'tabby': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000', 'unit': 'tabbyapi.service',
                  'key_env': 'TABBY_KEY', 'connect_timeout': 5, 'read_timeout': 60, 'ttl': 30},
        'sg': {'kind': 'sglang', 'url': 'http://127.0.0.1:30000', 'key_env': 'SG_KEY'},
    },
    'models': {'m': {'backend': 'tabby', 'model': 'M-exl3'}, 's': {'backend': 'sg'}},
}
# The message begins with the field: "config", the client-key variable, or a top-level field, then
# ".<name>..." down to the field, then a colon (names of backends and models may be any string).
FIELD = re.compile(r'^(config|cannot read config|LLM_ROUTER_CLIENT_API_KEYS|listen|backends|models|swap_policy|'
                   r'readiness_timeout|drain_timeout|shutdown_timeout|systemctl|log_level|default_ttl|preload)[.:\[]')

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(['tabbyapi', 'sglang', 'http://127.0.0.1:1', 'x.service', 'TABBY_KEY',
                                     'exclusive', 'DEBUG', 'tabby', '']))
KEYS = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.booleans(), st.none(),
                 st.sampled_from(['listen', 'port', 'host', 'backends', 'models', 'kind', 'url', 'unit', 'key_env',
                                  'backend', 'model', 'read_timeout', 'ttl']))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
                      max_leaves=12)


def paths(node, prefix=()):
    """Every path to a node of a nested dict/list document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(GOOD) if p]


@st.composite
def mutated(draw):
    """GOOD with one to three nodes replaced, deleted, or given an extra field."""
    doc = copy.deepcopy(GOOD)
    for _ign in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        node = doc
        try:
            for p in path[:-1]:
                node = node[p]
            action = draw(st.sampled_from(['replace', 'delete', 'add']))
            if action == 'replace':
                node[path[-1]] = draw(VALUES)
            elif action == 'delete' and isinstance(node, dict):
                del node[path[-1]]
            elif isinstance(node, dict):
                node[draw(KEYS)] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            pass                        # an earlier mutation removed or replaced a parent
    return doc


def check(doc, environ=None):
    try:
        cfg = config.parse_config(doc, ENV if environ is None else environ)
    except config.ConfigError as e:
        message = str(e)
        assert FIELD.match(message), 'error does not start with a field: %r' % message
        assert '\n' not in message
        for secret in ENV.values():
            assert secret not in message
        return None
    # accepted: what was accepted must be usable
    assert isinstance(cfg.port, int) and 0 < cfg.port < 65536
    # NaN compares false with everything: "> 0" lets it through, and every deadline built on it is broken.
    # (.inf would at least be a deliberate "wait forever"; the router refuses it as well.)
    for t in (cfg.readiness_timeout, cfg.drain_timeout, cfg.shutdown_timeout):
        assert isinstance(t, float) and not math.isnan(t) and t > 0, 'timeout %r accepted' % t
    for b in cfg.backends.values():
        assert not math.isnan(b.connect_timeout) and not math.isnan(b.read_timeout), 'backend timeout accepted: %r' % b
    return cfg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
@example({1: 'x', 'listen': {}, 'extra': 2})                      # unknown keys of mixed types
@example(dict(GOOD, listen={'port': 4000, 7: 'x'}))
def test_mutated_configs_fail_cleanly_naming_a_field(doc):
    check(doc)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_arbitrary_documents_fail_cleanly(doc):
    check(doc)


def test_nan_timeouts_are_refused():
    for name in ('readiness_timeout', 'drain_timeout', 'shutdown_timeout'):
        assert check(dict(copy.deepcopy(GOOD), **{name: float('nan')})) is None, name
    doc = copy.deepcopy(GOOD)
    doc['backends']['sg']['read_timeout'] = float('nan')
    assert check(doc) is None


def test_mutated_configs_as_files_exit_2_with_one_line(tmp_path, installed_router):
    """A sample of the generated documents through the real entry point (YAML file, --check)."""
    docs = ['1: x\nfoo: y\n', 'readiness_timeout: .nan\n', dict(GOOD, listen={'port': '4000'}), dict(GOOD, backends={'b': []}),
            dict(GOOD, models={'m': {'backend': 'nope'}}), dict(GOOD, listen={'port': 4000, 7: 'x'})]
    env = dict(ENV, PATH=os.environ['PATH'], PYTHONPATH=str(installed_router))
    for i, doc in enumerate(docs):
        path = tmp_path / ('c%d.yml' % i)
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        proc = subprocess.run([sys.executable, '-m', 'llm_router', '--check', '--config',
                               str(path)], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, (doc, proc.stderr)
        assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith('llm-router: config error: ')
