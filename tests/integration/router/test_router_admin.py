# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Planned maintenance on loopback: drain / resume over the admin unix socket, drains meeting swaps,
and key reloads (python -m llm_router --reload and SIGHUP) that keep open connections."""

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from router_helpers import (AUTH, CLIENT_KEY, OLD_CLIENT_KEY, ROUTER, SGLANG_KEY, TABBY_ADMIN_KEY,
                            chat, free_port, install_router, two_backends)

NEW_CLIENT_KEY = 'ck-rotated-0a9b8c7d'
NEW_SGLANG_KEY = 'sglang-rotated-6f5e4d3c'


def post(r, model, key=CLIENT_KEY, timeout=30):
    return httpx.post(r.url + '/v1/chat/completions', content=chat(model),
                      headers={'Authorization': 'Bearer ' + key}, timeout=timeout)


def admin(sock, path, timeout=30):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=timeout) as c:
        return c.post('http://localhost' + path)


def write_keys(path, client_keys, sglang_key):
    # The role's format (backend_common's secret_file.j2): NAME="value" with \\ \" \$ escaped.
    path.write_text('# Managed by Ansible\nLLM_ROUTER_CLIENT_API_KEYS="%s"\nTABBY_KEY="%s"\nSGLANG_KEY="%s"\n'
                    % (','.join(client_keys), TABBY_ADMIN_KEY, sglang_key))
    path.chmod(0o600)


def assert_drained_answer(resp, backend):
    assert resp.status_code == 503
    assert resp.headers['Retry-After'] == '5'
    err = resp.json()['error']
    assert err['code'] == 'backend_draining' and backend in err['message']
    assert set(err) == {'message', 'type', 'param', 'code'}


def test_drain_answers_503_lets_in_flight_finish_and_resume_reopens(procs, tmp_path):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a', loaded='a', delay=1.5)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    sock = tmp_path / 'admin.sock'
    r = router(two_backends(tabby, sg, admin_socket=str(sock)))
    assert post(r, 'a').status_code == 200
    with ThreadPoolExecutor(4) as pool:
        inflight = [pool.submit(post, r, 'a') for dummy in range(2)]
        deadline = time.monotonic() + 10
        while tabby.stats()['inflight'] < 2:
            assert time.monotonic() < deadline, 'the two requests never reached the backend'
            time.sleep(0.02)
        drain = pool.submit(admin, sock, '/admin/backends/tabby/drain')
        time.sleep(0.3)
        assert not drain.done()                               # waits for the two in flight
        assert_drained_answer(post(r, 'a'), 'tabby')            # new requests: 503 at once
        assert post(r, 's1').status_code == 200                 # other backends are untouched
        answer = drain.result(timeout=10)
        assert [f.result().status_code for f in inflight] == [200, 200]
    assert answer.status_code == 200
    assert answer.json()['drained'] == ['tabby'] and answer.json()['in_flight'] == 0
    assert answer.json()['timed_out'] is False
    health = httpx.get(r.url + '/health', headers=AUTH).json()['backends']['tabby']
    assert health['drained'] is True and health['in_flight'] == 0
    # Admin endpoints exist only on the unix socket.
    assert httpx.post(r.url + '/admin/backends/tabby/resume', headers=AUTH).status_code == 404
    assert httpx.post(r.url + '/admin/reload', headers=AUTH).status_code == 404
    assert admin(sock, '/admin/backends/nope/drain').status_code == 404
    resumed = admin(sock, '/admin/backends/tabby/resume')
    assert resumed.status_code == 200 and resumed.json()['resumed'] == ['tabby']
    assert post(r, 'a').status_code == 200
    assert httpx.get(r.url + '/health', headers=AUTH).json()['backends']['tabby']['drained'] is False


def test_drain_is_bounded_by_its_timeout(procs, tmp_path):
    double, router = procs
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', delay=4)
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a')
    sock = tmp_path / 'admin.sock'
    r = router(two_backends(tabby, sg, admin_socket=str(sock)))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, r, 's1')
        deadline = time.monotonic() + 10
        while sg.stats()['inflight'] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        answer = admin(sock, '/admin/backends/sg/drain?timeout=0.5').json()
        assert time.monotonic() - started < 3
        assert answer == dict(answer, in_flight=1, timed_out=True)
        assert slow.result().status_code == 200                 # the drain never cuts a request
    assert admin(sock, '/admin/backends/sg/drain?timeout=-1').status_code == 400


def test_drain_meets_swaps(procs, tmp_path):
    """Drain by unit name; a drained backend is neither started nor stopped by a swap; a drain during
    a swap waits for it, and the requests that waited for the swap get the 503."""
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a,b', loaded='a', load_delay=2.0)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    sock, calls = tmp_path / 'admin.sock', tmp_path / 'systemctl.log'
    # systemctl stand-in that records its calls (real units: test_router_systemd.py).
    cfg = two_backends(tabby, sg, admin_socket=str(sock),
                       systemctl=['/bin/sh', '-c', 'echo "$*" >> %s' % calls, 'systemctl'])
    cfg['backends']['tabby']['unit'] = 'tabby.service'
    cfg['backends']['sg']['unit'] = 'sg.service'
    r = router(cfg)
    assert post(r, 'a').status_code == 200                      # stop sg, start tabby
    assert admin(sock, '/admin/units/sg.service/drain').json()['drained'] == ['sg']
    before = calls.read_text()
    assert_drained_answer(post(r, 's1'), 'sg')                  # would start sg: refused, not started
    assert calls.read_text() == before
    assert admin(sock, '/admin/units/sg.service/resume').json()['resumed'] == ['sg']
    assert post(r, 's1').status_code == 200                      # exclusive: stops tabby
    assert admin(sock, '/admin/backends/sg/drain').status_code == 200
    before = calls.read_text()
    assert_drained_answer(post(r, 'a'), 'sg')                   # would stop the drained sg: refused
    assert calls.read_text() == before
    assert admin(sock, '/admin/backends/sg/resume').status_code == 200
    # A drain while a swap to tabby (model b, 2 s load) is in progress waits for the swap; the
    # requests queued behind the swap get the 503 once it is done.
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(post, r, 'b') for dummy in range(3)]
        deadline = time.monotonic() + 10
        while httpx.get(r.url + '/health', headers=AUTH).json()['swapping_to'] != 'b':
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        drained = admin(sock, '/admin/backends/tabby/drain')
        assert drained.status_code == 200 and time.monotonic() - started > 0.5
        for f in waiting:
            assert_drained_answer(f.result(), 'tabby')
    health = httpx.get(r.url + '/health', headers=AUTH).json()
    assert health['swapping_to'] is None and health['backends']['tabby']['drained'] is True
    assert admin(sock, '/admin/backends/tabby/resume').json()['resumed'] == ['tabby']
    assert post(r, 'b').status_code == 200


def raw_request(conn, path, key, body=b''):
    """One request on an open keep-alive socket; returns the status (the answer has Content-Length)."""
    method = b'POST' if body else b'GET'
    conn.sendall(b'%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (method, path.encode(), key.encode(), len(body), body))
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = conn.recv(65536)
        assert chunk, 'the router closed the keep-alive connection'
        data += chunk
    head, dummy, rest = data.partition(b'\r\n\r\n')
    length = int([h.split(b':')[1] for h in head.split(b'\r\n') if h.lower().startswith(b'content-length:')][0])
    while len(rest) < length:
        rest += conn.recv(65536)
    return int(head.split(b' ')[1])


def test_reload_swaps_keys_keeps_connections_and_resumes_a_backend_whose_key_changed(procs, tmp_path):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a', loaded='a')
    port = free_port()
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', port=port)
    sock, keys = tmp_path / 'admin.sock', tmp_path / 'keys.env'
    write_keys(keys, [CLIENT_KEY, OLD_CLIENT_KEY], SGLANG_KEY)
    r = router(two_backends(tabby, sg, admin_socket=str(sock), key_file=str(keys)),
               env={'LLM_ROUTER_CLIENT_API_KEYS': 'not-used-the-key-file-wins', 'SGLANG_KEY': 'not-used'})
    assert post(r, 's1').status_code == 200
    conn = socket.create_connection(('127.0.0.1', r.port))
    assert raw_request(conn, '/v1/models', OLD_CLIENT_KEY) == 200
    # A single-key backend restarts with a new key: drained first, then the router's old key is refused.
    assert admin(sock, '/admin/backends/sg/drain').json()['in_flight'] == 0
    sg.stop()
    double('openai', api_keys=[NEW_SGLANG_KEY], models='s1', port=port)
    answer = admin(sock, '/admin/backends/sg/resume').json()
    assert answer['resumed'] == [] and answer['still_drained_key_refused'] == ['sg']
    assert_drained_answer(post(r, 's1'), 'sg')                   # 503, never the backend's 401
    assert httpx.get(r.url + '/health', headers=AUTH).json()['backends']['sg']['resume_pending'] is True
    # New keys in the file; --reload returns once they are in force (what ExecReload runs).
    write_keys(keys, [NEW_CLIENT_KEY], NEW_SGLANG_KEY)
    done = subprocess.run(ROUTER + ['--config', str(tmp_path / ('router-%d.yml' % r.port)), '--reload'],
                          capture_output=True, text=True, check=False, timeout=60,
                          env={'PYTHONPATH': str(install_router(tmp_path))})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result['reloaded'] is True and result['client_keys'] == 1 and result['resumed'] == ['sg']
    assert raw_request(conn, '/v1/models', OLD_CLIENT_KEY) == 401        # same open connection
    assert raw_request(conn, '/v1/models', NEW_CLIENT_KEY) == 200
    assert raw_request(conn, '/v1/chat/completions', NEW_CLIENT_KEY, chat('s1')) == 200   # sg with its new key
    conn.close()
    assert post(r, 'a', key=CLIENT_KEY).status_code == 401
    assert post(r, 'a', key=NEW_CLIENT_KEY).status_code == 200
    # A broken key file: the reload fails, names the problem, and the keys in force stay.
    keys.write_text('LLM_ROUTER_CLIENT_API_KEYS\n')
    bad = admin(sock, '/admin/reload')
    assert bad.status_code == 500 and 'line 1' in bad.json()['error']
    assert post(r, 'a', key=NEW_CLIENT_KEY).status_code == 200
    log = r.log()
    for secret in (CLIENT_KEY, OLD_CLIENT_KEY, NEW_CLIENT_KEY, SGLANG_KEY, NEW_SGLANG_KEY, TABBY_ADMIN_KEY):
        assert secret not in log and secret not in bad.text and secret not in done.stdout + done.stderr


def test_sighup_reloads_the_keys(procs, tmp_path):
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a', loaded='a')
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    keys = tmp_path / 'keys.env'
    write_keys(keys, [CLIENT_KEY], SGLANG_KEY)
    r = router(two_backends(tabby, sg, key_file=str(keys)))
    conn = socket.create_connection(('127.0.0.1', r.port))
    assert raw_request(conn, '/v1/models', CLIENT_KEY) == 200
    write_keys(keys, [NEW_CLIENT_KEY], SGLANG_KEY)
    r.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while raw_request(conn, '/v1/models', CLIENT_KEY) != 401:
        assert time.monotonic() < deadline, 'SIGHUP did not reload the client keys'
        time.sleep(0.05)
    assert raw_request(conn, '/v1/models', NEW_CLIENT_KEY) == 200
    assert raw_request(conn, '/v1/chat/completions', NEW_CLIENT_KEY, chat('a')) == 200
    assert r.proc.poll() is None
    conn.close()


def test_a_reloaded_backend_key_is_checked_before_the_next_request(procs, tmp_path):
    """A backend whose key changed in a reload is re-checked: a key it refuses gives the router's own
    502 backend_rejected_key (naming the variable), never the backend's 401 passed on to the client."""
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a', loaded='a')
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1')
    sock, keys = tmp_path / 'admin.sock', tmp_path / 'keys.env'
    write_keys(keys, [CLIENT_KEY], SGLANG_KEY)
    r = router(two_backends(tabby, sg, admin_socket=str(sock), key_file=str(keys)))
    assert post(r, 's1').status_code == 200 and post(r, 'a').status_code == 200
    write_keys(keys, [CLIENT_KEY], NEW_SGLANG_KEY)             # the backend still has the old one
    assert admin(sock, '/admin/reload').status_code == 200
    refused = post(r, 's1')
    assert refused.status_code == 502, refused.text
    assert refused.json()['error']['code'] == 'backend_rejected_key' and 'SGLANG_KEY' in refused.text
    assert post(r, 'a').status_code == 200                      # tabby's key did not change: not touched
    write_keys(keys, [CLIENT_KEY], SGLANG_KEY)
    assert admin(sock, '/admin/reload').status_code == 200
    assert post(r, 's1').status_code == 200
