#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: wait_for_backend
short_description: Wait until an LLM inference backend answers with the key, and fail fast when it refuses the key
version_added: 0.1.0
description:
  - Polls an endpoint of a TabbyAPI, llama.cpp, SGLang, vLLM or other OpenAI-compatible server that
    really checks the API key (a public C(/health) endpoint cannot tell a wrong key from a good one).
  - Keeps waiting while the backend is not up yet (connection refused or reset, request timeouts,
    HTTP 408, 425, 429, 500, 502, 503, 504) or while the wanted O(model) is not loaded yet.
  - Fails at once when the backend refuses the key (O(reject_statuses)), naming the backend, the
    URL, the endpoint, the header that carried the key and the server's own error text. When no key
    was sent the message says so.
  - Fails at once on any other answer that waiting cannot fix, for example 404 for a wrong O(endpoint).
  - With O(unit), fails at once when that systemd unit has failed or exited while waiting, and
    shows the unit's last journal lines.
  - The key never appears in the output, not even inside server or journal text.
  - Polling starts after 0.05 s and backs off to at most O(max_interval) seconds.
author:
  - gpufleet.llm contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; it runs the same way in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  url:
    description:
      - Base URL of the backend, for example V(http://127.0.0.1:5000).
    type: str
    required: true
  backend:
    description:
      - Kind of backend. Chooses the endpoint that checks the key and the header that carries it.
      - V(tabbyapi) sends C(x-api-key) to C(/v1/models), or to C(/v1/model) when O(model) is set.
      - V(llamacpp) sends the key as C(Authorization) C(Bearer) to C(/props).
      - V(sglang), V(vllm) and V(openai) send the key as C(Authorization) C(Bearer) to C(/v1/models).
    type: str
    choices: [tabbyapi, llamacpp, sglang, vllm, openai]
    default: openai
  api_key:
    description:
      - Key to send. Without it no key header is sent, and a backend that demands a key fails the task
        at once with a message saying that no key was sent.
    type: str
  auth_header:
    description:
      - Name of the header that carries the key, instead of the one O(backend) implies.
      - A header named C(Authorization) carries C(Bearer <key>); any other carries the bare key.
    type: str
  endpoint:
    description:
      - Path to poll, instead of the one O(backend) implies. It must check the key.
    type: str
  model:
    description:
      - Model that must be loaded (or listed) before the backend counts as ready.
      - Compared with the ids the backend reports, and for llama.cpp also with the file name of its
        C(model_path).
    type: str
  timeout:
    description:
      - Overall number of seconds to wait before failing.
    type: float
    default: 300
  max_interval:
    description:
      - Longest pause between two attempts, in seconds. Pauses start at 0.05 s and grow to this.
      - The default keeps the delay between "backend ready" and "task returned" well under 0.5 s
        at the cost of at most four small requests per second to a local backend.
    type: float
    default: 0.25
  request_timeout:
    description:
      - Seconds one request may take. A request that takes longer counts as "not ready yet".
    type: float
    default: 5
  reject_statuses:
    description:
      - HTTP statuses that mean "the key was refused" and fail the task at once.
    type: list
    elements: int
    default: [401, 403]
  key_reload_grace:
    description:
      - Seconds, counted from the start of the task, during which an answer in O(reject_statuses)
        still counts as "not ready yet" instead of failing the task.
      - Only for a backend that re-reads its key file while running, right after that file was
        changed (TabbyAPI's C(main) branch re-reads C(api_tokens.yml) within seconds, without a
        restart). Until it has, the new key is refused. After the grace period a refused key fails
        the task at once, as without it.
      - The default V(0) keeps the fail-fast behaviour. Keep it short (a few seconds more than the
        backend needs to re-read its file); at most 300.
    type: float
    default: 0
  unit:
    description:
      - Name of the systemd unit that runs the backend. When it is C(failed), has exited
        (C(inactive)), or its server exited and C(Restart=) is about to start it again
        (C(auto-restart) - a crash during the start, not a slow start), the task fails at once and
        shows the last 20 lines of its journal.
    type: str
  validate_certs:
    description:
      - Whether to verify the server's TLS certificate.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the certificate authorities to trust for HTTPS.
    type: path
  use_proxy:
    description:
      - Whether to honour the proxy environment variables.
    type: bool
    default: true
notes:
  - The HTTP requests use C(ansible.module_utils.urls), so the target needs no extra Python package.
  - O(unit) needs C(systemctl) and C(journalctl) on the target.
seealso:
  - module: ansible.builtin.uri
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Wait for TabbyAPI to load its model and accept the key
  gpufleet.llm.wait_for_backend:
    url: http://127.0.0.1:5000
    backend: tabbyapi
    api_key: "{{ tabbyapi_api_key }}"
    model: Qwen3-8B-exl3
    unit: tabbyapi.service
    timeout: 600

- name: Wait for a llama.cpp instance (answers 503 "Loading model" while it loads)
  gpufleet.llm.wait_for_backend:
    url: http://127.0.0.1:8081
    backend: llamacpp
    api_key: "{{ llamacpp_api_key }}"
    unit: llamacpp@chat.service

- name: Wait for SGLang with a shorter budget and slower polling
  gpufleet.llm.wait_for_backend:
    url: http://127.0.0.1:30000
    backend: sglang
    api_key: "{{ sglang_api_key }}"
    timeout: 120
    max_interval: 2

- name: TabbyAPI main just got a new api_tokens.yml (re-read live), the new key may be refused for a few seconds
  gpufleet.llm.wait_for_backend:
    url: http://127.0.0.1:5000
    backend: tabbyapi
    api_key: "{{ tabbyapi_api_key }}"
    key_reload_grace: 15

- name: Any OpenAI-compatible server behind TLS with a private CA
  gpufleet.llm.wait_for_backend:
    url: https://llm.example.internal
    api_key: "{{ router_key }}"
    ca_path: /etc/ssl/certs/internal-ca.pem
  register: backend

- name: Show what the backend reports
  ansible.builtin.debug:
    msg: "{{ backend.model }} ready after {{ backend.elapsed }} s"
"""

RETURN = r"""
ready:
  description: Whether the backend accepted the key (and has O(model) loaded, when given).
  returned: always
  type: bool
  sample: true
elapsed:
  description: Seconds spent waiting.
  returned: always
  type: float
  sample: 12.41
attempts:
  description: Number of requests made.
  returned: always
  type: int
  sample: 17
status:
  description: HTTP status of the last answer; null when the last attempt got no answer at all.
  returned: always
  type: int
  sample: 200
endpoint:
  description: Path that was polled.
  returned: always
  type: str
  sample: /v1/model
model:
  description:
    - The model as the backend reports it. With O(model), the id that matched; otherwise the first
      one the backend reported. Null when it reported none.
  returned: always
  type: str
  sample: Qwen3-8B-exl3
"""

import socket
import ssl
import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import SSLValidationError, open_url

from ansible_collections.gpufleet.llm.plugins.module_utils import _backend_probe as probe

FIRST_INTERVAL = 0.05
BACKOFF = 1.5
JOURNAL_LINES = 20
MASK = '********'


def scrub(text, secret):
    """text with every occurrence of the secret masked (defence in depth: no_log masks it too)."""
    text = to_text(text, errors='surrogate_or_replace')
    if secret:
        text = text.replace(secret, MASK)
    return text


class Answer:
    """What one attempt got: an HTTP status and body, or an error instead of an answer."""

    def __init__(self, status=None, body=b'', error=None, fatal_error=False):
        self.status = status
        self.body = body
        self.error = error
        self.fatal_error = fatal_error


def request(target, headers, params):
    try:
        response = open_url(
            target, method='GET', headers=headers, timeout=params['request_timeout'],
            validate_certs=params['validate_certs'], ca_path=params['ca_path'],
            use_proxy=params['use_proxy'], use_netrc=False, http_agent='gpufleet.llm.wait_for_backend')
        return Answer(status=response.getcode(), body=response.read())
    except HTTPError as e:
        try:
            body = e.read()
        except Exception:  # the body of an error answer is a courtesy; its status is what counts
            body = b''
        return Answer(status=e.code, body=body)
    except (SSLValidationError, ssl.SSLCertVerificationError) as e:
        return Answer(error='TLS verification failed: %s' % e, fatal_error=True)
    except URLError as e:
        reason = e.reason
        if isinstance(reason, (ssl.SSLCertVerificationError, SSLValidationError)):
            return Answer(error='TLS verification failed: %s' % reason, fatal_error=True)
        return Answer(error=describe_error(reason))
    except (socket.timeout, OSError) as e:
        return Answer(error=describe_error(e))
    except ValueError as e:  # a URL urllib cannot use
        return Answer(error='invalid URL: %s' % e, fatal_error=True)
    except Exception as e:  # http.client.RemoteDisconnected, BadStatusLine, ...: the server is not serving yet
        return Answer(error=describe_error(e))


def describe_error(error):
    if isinstance(error, ConnectionRefusedError):
        return 'connection refused'
    if isinstance(error, ConnectionResetError):
        return 'connection reset'
    if isinstance(error, socket.timeout) or 'timed out' in str(error):
        return 'request timed out'
    return '%s: %s' % (type(error).__name__, error) if not isinstance(error, str) else error


class UnitWatch:
    """Reads a systemd unit's state; tells when it can no longer become ready."""

    PROPERTIES = ('LoadState', 'ActiveState', 'SubState', 'Result', 'ExecMainCode', 'ExecMainStatus')

    def __init__(self, module, unit):
        self.module = module
        self.unit = unit
        self.systemctl = module.get_bin_path('systemctl', required=True)
        self.journalctl = module.get_bin_path('journalctl')

    def state(self):
        args = [self.systemctl, 'show', self.unit, '--no-pager']
        for prop in self.PROPERTIES:
            args.extend(['-p', prop])
        rc, out, err = self.module.run_command(args)
        if rc != 0:
            return {'error': (err or out).strip()}
        state = {}
        for line in out.splitlines():
            name, sep, value = line.partition('=')
            if sep:
                state[name] = value
        return state

    def dead(self):
        """A sentence saying why the unit can no longer get ready, or None while it may."""
        state = self.state()
        if 'error' in state:
            return 'systemctl show %s failed: %s' % (self.unit, state['error'])
        if state.get('LoadState') == 'not-found':
            return 'unit %s does not exist' % self.unit
        if state.get('ActiveState') in ('failed', 'inactive'):
            return 'unit %s is %s (%s, result %s, exit status %s)' % (
                self.unit, state.get('ActiveState'), state.get('SubState'),
                state.get('Result'), state.get('ExecMainStatus'))
        if state.get('SubState') == 'auto-restart':
            how = 'was killed by signal' if state.get('ExecMainCode') in ('2', '3') else 'exited with status'
            return ('the server of unit %s %s %s (result %s) and systemd will start it again: a crash, '
                    'not a slow start' % (self.unit, how, state.get('ExecMainStatus'), state.get('Result')))
        return None

    def journal(self):
        if not self.journalctl:
            return 'journalctl not found'
        rc, out, err = self.module.run_command(
            [self.journalctl, '-u', self.unit, '-n', str(JOURNAL_LINES), '--no-pager', '-o', 'short-iso'])
        return out.rstrip() if rc == 0 else 'journalctl failed: %s' % (err or out).strip()


class Waiter:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.params = p
        self.key = p['api_key'] or None
        self.url = p['url'].rstrip('/')
        endpoint, self.header = probe.probe_plan(p['backend'], p['model'], p['endpoint'], p['auth_header'])
        self.endpoint = endpoint if endpoint.startswith('/') else '/' + endpoint
        self.target = self.url + self.endpoint
        self.headers = probe.auth_headers(self.header, self.key)
        self.headers['Accept'] = 'application/json'
        self.reject = tuple(p['reject_statuses'])
        self.unit = UnitWatch(module, p['unit']) if p['unit'] else None
        self.start = time.monotonic()
        self.attempts = 0
        self.last = None
        self.last_detail = ''

    def elapsed(self):
        return round(time.monotonic() - self.start, 3)

    def result(self, **extra):
        status = self.last.status if self.last else None
        result = dict(ready=False, changed=False, elapsed=self.elapsed(), attempts=self.attempts,
                      status=status, endpoint=self.endpoint, model=None)
        result.update(extra)
        return result

    def fail(self, msg, **extra):
        self.module.fail_json(msg=scrub(msg, self.key), **self.result(**extra))

    def last_seen(self):
        answer = self.last
        if answer is None:
            return 'no attempt'
        if answer.error:
            return scrub(answer.error, self.key)
        return '%s %s' % (answer.status, self.last_detail)

    def run(self):
        p = self.params
        deadline = self.start + p['timeout']
        interval = FIRST_INTERVAL
        while True:
            remaining = deadline - time.monotonic()
            request_params = dict(p, request_timeout=max(0.05, min(p['request_timeout'], remaining)))
            self.attempts += 1
            self.last = answer = request(self.target, self.headers, request_params)
            if answer.error and answer.fatal_error:
                self.fail('%s at %s: %s on %s' % (p['backend'], self.url, answer.error, self.endpoint))
            if not answer.error:
                self.read(answer)
            if self.unit:
                why = self.unit.dead()
                if why:
                    self.fail('%s at %s will not get ready: %s. Last answer on %s: %s. Last journal lines:\n%s' % (
                        p['backend'], self.url, why, self.endpoint, self.last_seen(), self.unit.journal()))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail_timeout()
            time.sleep(min(interval, remaining))
            interval = min(interval * BACKOFF, p['max_interval'])

    def read(self, answer):
        """Exit when the answer settles the wait; return when waiting may still help."""
        p = self.params
        verdict, detail, models = probe.classify(answer.status, answer.body, p['model'], self.reject)
        detail = self.last_detail = scrub(detail, self.key)
        if verdict == probe.READY:
            if p['model']:
                reported = p['model']
            else:
                reported = models[0] if models else None
            self.module.exit_json(**self.result(ready=True, model=scrub(reported, self.key) if reported else None))
        if verdict == probe.REJECTED and time.monotonic() - self.start < p['key_reload_grace']:
            return               # the backend may not have re-read its key file yet
        if verdict == probe.REJECTED:
            msg = probe.rejection_message(p['backend'], self.url, self.endpoint, self.header,
                                          answer.status, detail, bool(self.key))
            if self.key and 'provide an api key' in detail.lower():
                msg += ' (the server saw no key: does %s accept the header %s? see auth_header)' % (
                    p['backend'], self.header)
            self.fail(msg)
        if verdict == probe.FATAL:
            self.fail('%s at %s answered %s on %s: %s (waiting cannot fix this; check url, endpoint and backend)' % (
                p['backend'], self.url, answer.status, self.endpoint, detail))

    def fail_timeout(self):
        msg = '%s at %s was not ready on %s after %s s and %d attempts; last: %s' % (
            self.params['backend'], self.url, self.endpoint, self.params['timeout'], self.attempts,
            self.last_seen())
        if self.unit:
            msg += '. Last journal lines of %s:\n%s' % (self.unit.unit, self.unit.journal())
        self.fail(msg)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type='str', required=True),
            backend=dict(type='str', default='openai', choices=['tabbyapi', 'llamacpp', 'sglang', 'vllm', 'openai']),
            api_key=dict(type='str', no_log=True),
            auth_header=dict(type='str'),
            endpoint=dict(type='str'),
            model=dict(type='str'),
            timeout=dict(type='float', default=300),
            max_interval=dict(type='float', default=0.25),
            request_timeout=dict(type='float', default=5),
            reject_statuses=dict(type='list', elements='int', default=[401, 403]),
            key_reload_grace=dict(type='float', default=0, no_log=False),
            unit=dict(type='str'),
            validate_certs=dict(type='bool', default=True),
            ca_path=dict(type='path'),
            use_proxy=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    for name in ('timeout', 'max_interval', 'request_timeout'):
        if module.params[name] <= 0:
            module.fail_json(msg='%s must be greater than 0, got %s' % (name, module.params[name]))
    if not 0 <= module.params['key_reload_grace'] <= 300:
        module.fail_json(msg='key_reload_grace must be between 0 and 300 seconds, got %s' % module.params['key_reload_grace'])
    Waiter(module).run()


if __name__ == '__main__':
    main()
