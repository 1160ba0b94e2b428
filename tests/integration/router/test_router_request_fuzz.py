# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzzing the running router (hypothesis): random methods, paths, headers and bodies, sent as raw
bytes over loopback to the router in front of an SGLang-like double. Whatever arrives, the router
answers (a 4xx, or the backend's own answer) and never with a 500 of its own, and no exception
escapes its handlers (a traceback through the router's package llm_router in its log). Requests that are not valid HTTP
are answered 400 without a traceback in the log: the router faces the network, and anyone could
otherwise fill its journal with multi-line tracebacks without a key."""

import json
import socket
import sys
import time

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from router_helpers import CLIENT_KEY, DOUBLE, ROUTER, SGLANG_KEY, Proc, free_port, install_router

import yaml

ENDPOINTS = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/models', '/health', '/metrics',
             '/', '/v1/model/load', '/v1/chat/completions/', '//v1/models', '/v1/chat/completions?x=1']
METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'BREW']
HEADER_NAMES = ['Authorization', 'x-api-key', 'Content-Type', 'Accept', 'X-Api-Key', 'authorization',
                'Accept-Encoding', 'X-Forwarded-For', 'Cookie', 'Connection']
# Expect is not fuzzed here: test_expect_header_with_non_utf8_bytes covers it (aiohttp.web, which served
# clients before the router's own server, answered a non-UTF-8 Expect with a 500).


@pytest.fixture(scope='module')
def router_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fuzz')
    bport, rport = free_port(), free_port()
    backend = Proc([sys.executable, str(DOUBLE), '--port', str(bport), '--kind', 'openai', '--api-key', SGLANG_KEY,
                    '--models', 'm1'], bport, tmp / 'double.log')
    config = {'listen': {'host': '127.0.0.1', 'port': rport}, 'log_level': 'DEBUG',
              'backends': {'sg': {'kind': 'sglang', 'url': backend.url, 'key_env': 'SGLANG_KEY', 'read_timeout': 10}},
              'models': {'m1': {'backend': 'sg'}}}
    (tmp / 'router.yml').write_text(yaml.safe_dump(config))
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(install_router(tmp)), 'LLM_ROUTER_CLIENT_API_KEYS': CLIENT_KEY,
           'SGLANG_KEY': SGLANG_KEY}
    router = Proc(ROUTER + ['--config', str(tmp / 'router.yml')], rport, tmp / 'router.log', env=env)
    yield router
    router.stop()
    backend.stop()


def own_failures(log):
    """Tracebacks that pass through the router's package, and handlers that raised (aiohttp's 'Unhandled
    exception')."""
    return [block for block in log.split('Traceback (most recent call last):')[1:]
            if '/llm_router/' in block] + (['Unhandled exception'] if 'Unhandled exception' in log else [])


def exchange(port, raw, timeout=15):
    """Send raw bytes; return the status code of the answer (None if the router closed without one)."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        s.sendall(raw)
        data = b''
        deadline = time.monotonic() + timeout
        while b'\r\n' not in data and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b'HTTP/1.'):
        return None
    return int(data.split(b' ', 2)[1])


def request(method, path, headers, body):
    head = '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n' % (method, path)
    raw = head.encode('utf-8', 'surrogateescape')
    for name, value in headers:
        raw += name.encode('ascii') + b': ' + value + b'\r\n'
    raw += b'Content-Length: %d\r\n\r\n' % len(body)
    return raw + body


KEY_VALUES = st.sampled_from([b'Bearer ' + CLIENT_KEY.encode(), CLIENT_KEY.encode(), b'Bearer', b'bearer ',
                              b'Basic ' + CLIENT_KEY.encode(), b'Bearer \xff\xfe', b'\xc3\xa9t\xc3\xa9',
                              b'Bearer ' + CLIENT_KEY.encode() + b'\xe2\x82\xac', b''])
HEADER_VALUES = st.one_of(KEY_VALUES, st.binary(max_size=40).map(lambda b: b.replace(b'\r', b'').replace(b'\n', b'')),
                          st.sampled_from([b'application/json', b'text/event-stream', b'application/json; charset=\xe2\x82\xac',
                                           b'application/json; charset=\xff', b'100-continue', b'gzip, br']))
MODEL = st.one_of(st.sampled_from(['m1', 'nope', '', 'M1', 'm1\x00']), st.text(max_size=20), st.integers(), st.none(),
                  st.lists(st.just('m1'), max_size=2))
JSON_BODIES = st.builds(lambda model, stream, extra: json.dumps(
    dict({'model': model, 'messages': [{'role': 'user', 'content': 'hi'}], 'stream': stream}, **extra)).encode(),
    MODEL, st.one_of(st.booleans(), st.none(), st.text(max_size=3)),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3))
BODIES = st.one_of(JSON_BODIES, st.binary(max_size=200),
                   st.sampled_from([b'', b'null', b'[]', b'"m1"', b'{"model": "m1"', b'{"model": "m1"}\xff',
                                    b'[' * 100000 + b']' * 100000, b'{"model":' * 50000]))
WITH_KEY = [('Authorization', b'Bearer ' + CLIENT_KEY.encode())]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), path=st.one_of(st.sampled_from(ENDPOINTS), st.text(min_size=1, max_size=30)),
       headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=4), body=BODIES,
       keyed=st.booleans())
@example(method='POST', path='/v1/chat/completions', headers=[('Authorization', b'Bearer \xff')], body=b'{}', keyed=False)
@example(method='POST', path='/v1/chat/completions', headers=[('Content-Type', b'application/json; charset=\xe2\x82\xac')],
         body=b'{"model": "m1", "messages": []}', keyed=True)
@example(method='POST', path='/v1/chat/completions', headers=[], body=b'[' * 100000 + b']' * 100000, keyed=True)
@example(method='GET', path='/v1/models', headers=[('x-api-key', b'\xc3\xa9t\xc3\xa9')], body=b'', keyed=False)
def test_router_never_fails_with_500(router_url, method, path, headers, body, keyed):
    if not path.startswith('/'):
        path = '/' + path
    path = path.replace('\r', '').replace('\n', '').replace(' ', '%20')
    raw = request(method, path, (WITH_KEY if keyed else []) + headers, body)
    status = exchange(router_url.port, raw)
    assert status is not None, 'no answer to %r' % raw[:300]
    assert status != 500, 'router answered 500 to %r' % raw[:300]
    failures = own_failures(router_url.log())
    assert not failures, failures[-1][-3000:]


def test_expect_header_with_non_utf8_bytes(router_url):
    """aiohttp's default expect handler (the router's HTTP stack until 2026-11) echoed the header into
    its 417 text and failed to encode a non-UTF-8 byte: a 500. The 417 must not echo it."""
    raw = request('POST', '/v1/chat/completions', [('Expect', b'\x80')], b'')
    assert exchange(router_url.port, raw) in (400, 401, 417)


@pytest.mark.parametrize('raw', [
    b'GET /v1/models\x01 HTTP/1.1\r\nHost: x\r\n\r\n',
    b'GET /v1/m\xffodels HTTP/1.1\r\nHost: x\r\n\r\n',
    b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
    b'GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n',
    b'GET /health HTTP/9.9\r\nHost: x\r\n\r\n',
], ids=['control-char-in-path', 'non-utf8-path', 'bad-content-length', 'blank-in-header-name', 'http-9'])
def test_invalid_http_gets_400_without_a_traceback_in_the_log(router_url, raw):
    before = len(router_url.log())
    assert exchange(router_url.port, raw) in (400, 505)
    time.sleep(0.2)
    new = router_url.log()[before:]
    assert 'Traceback' not in new, 'an unauthenticated client wrote a traceback into the log:\n' + new[-2000:]


def test_router_still_serves_after_the_fuzz(router_url):
    body = json.dumps({'model': 'm1', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()
    assert exchange(router_url.port, request('POST', '/v1/chat/completions', WITH_KEY, body)) == 200
