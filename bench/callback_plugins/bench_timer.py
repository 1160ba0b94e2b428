# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback for bench/fail_fast.py: writes one JSON line per finished task with the CLOCK_MONOTONIC
times the task started and returned (the same clock the bench's server process reads)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: bench_timer
type: aggregate
short_description: Record when each task started and returned (for bench/fail_fast.py)
description:
  - Appends a JSON line per finished task to the file named by E(BENCH_TIMER_FILE).
requirements:
  - enable in configuration
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._started = {}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.monotonic()

    def _record(self, result, outcome):
        returned = time.monotonic()
        data = result._result
        line = {
            'task': result._task.get_name(),
            'outcome': outcome,
            'started': self._started.get(result._task._uuid),
            'returned': returned,
            'elapsed': data.get('elapsed'),
            'attempts': data.get('attempts'),
            'msg': data.get('msg'),
        }
        with open(os.environ['BENCH_TIMER_FILE'], 'a') as f:
            f.write(json.dumps(line) + '\n')

    def v2_runner_on_ok(self, result):
        self._record(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, 'failed')
