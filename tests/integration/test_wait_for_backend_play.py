# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpufleet.llm.wait_for_backend in real ansible-playbook runs (localhost, connection local)
against a TabbyAPI-like server; the key must not appear in any output, even with -vvv."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'support'))

from fake_backend import FakeBackend  # noqa: E402
from run_play import run_playbook, write_play  # noqa: E402

KEY = 'sk-integration-right-5d41402abc'
WRONG = 'sk-integration-wrong-7d793037a0'

CHECK_RESULT = """
    - name: Check what the module returned
      ansible.builtin.assert:
        that:
          - waited.ready
          - not waited.changed
          - waited.model == 'Qwen3-8B-exl3'
          - waited.endpoint == '/v1/model'
          - waited.status == 200
          - waited.attempts == 4
"""


@pytest.fixture
def tabbyapi():
    fake = FakeBackend('tabbyapi', keys=[KEY], model=None).start()
    yield fake
    fake.stop()


@pytest.mark.parametrize('verbosity', [[], ['-vvv']])
def test_play_waits_for_the_model_then_succeeds(tmp_path, tabbyapi, verbosity):
    tabbyapi.after_requests(3, model='Qwen3-8B-exl3')
    play = write_play(str(tmp_path), {
        'url': tabbyapi.url, 'backend': 'tabbyapi', 'api_key': '{{ tabbyapi_api_key }}',
        'model': 'Qwen3-8B-exl3', 'timeout': 30,
    }, extra_tasks=CHECK_RESULT, secret_vars={'tabbyapi_api_key': KEY})
    rc, out, _seconds = run_playbook(play, *verbosity)
    assert rc == 0, out
    assert 'ok=2' in out and 'failed=0' in out
    assert out.count(KEY) == 0
    if verbosity:   # -vvv prints the module's arguments: the key is there, masked
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in out
    assert [r[3].get('x-api-key') for r in tabbyapi.requests][-1] == KEY   # the key did reach the server


@pytest.mark.parametrize('verbosity', [[], ['-vvv']])
def test_play_fails_fast_on_a_wrong_key(tmp_path, tabbyapi, verbosity):
    tabbyapi.model = 'Qwen3-8B-exl3'
    play = write_play(str(tmp_path), {
        'url': tabbyapi.url, 'backend': 'tabbyapi', 'api_key': '{{ tabbyapi_api_key }}',
        'model': 'Qwen3-8B-exl3', 'timeout': 60,
    }, secret_vars={'tabbyapi_api_key': WRONG})
    rc, out, seconds = run_playbook(play, *verbosity)
    assert rc == 2, out
    assert ('tabbyapi at %s rejected the API key sent as x-api-key on /v1/model: 401 Invalid API key'
            % tabbyapi.url) in out
    assert seconds < 20          # the whole ansible-playbook run, against a 60 s budget
    assert len(tabbyapi.requests) == 1
    assert out.count(WRONG) == 0
    assert out.count(KEY) == 0
    if verbosity:
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in out


def test_play_without_key_says_no_key_was_sent(tmp_path, tabbyapi):
    tabbyapi.model = 'Qwen3-8B-exl3'
    play = write_play(str(tmp_path), {'url': tabbyapi.url, 'backend': 'tabbyapi', 'timeout': 60})
    rc, out, seconds = run_playbook(play)
    assert rc == 2, out
    assert ('tabbyapi at %s demands an API key, but no key was sent (set api_key) on /v1/models: '
            '401 Please provide an API key' % tabbyapi.url) in out
    assert seconds < 20


def test_check_mode_play(tmp_path, tabbyapi):
    tabbyapi.model = 'Qwen3-8B-exl3'
    play = write_play(str(tmp_path), {'url': tabbyapi.url, 'backend': 'tabbyapi', 'api_key': '{{ k }}'},
                      secret_vars={'k': KEY})
    rc, out, _seconds = run_playbook(play, '--check')
    assert rc == 0, out
    assert 'changed=0' in out and KEY not in out
