# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures for the plugin unit tests: the collection on sys.path, a fake backend, and a
helper that runs a module's main() with given arguments and returns (exit code, result JSON)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
for path in (os.path.join(TOP, 'build', 'collections'), os.path.join(TOP, 'tests', 'support')):
    if path not in sys.path:
        sys.path.insert(0, path)

from ansible.module_utils import basic  # noqa: E402

from fake_backend import FakeBackend  # noqa: E402


@pytest.fixture
def backend():
    """Factory: backend(kind, keys=..., model=..., loading=...) -> a started FakeBackend."""
    started = []

    def make(kind='tabbyapi', start_after=0.0, **kwargs):
        fake = FakeBackend(kind, **kwargs)
        started.append(fake)
        return fake.start(after=start_after)

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def run_module(capsys, monkeypatch):
    """run_module(main, args) -> (exit code, parsed JSON, raw stdout)."""
    def run(main, args):
        monkeypatch.setattr(basic, '_ANSIBLE_ARGS', json.dumps({'ANSIBLE_MODULE_ARGS': args}).encode())
        monkeypatch.setattr(basic, '_ANSIBLE_PROFILE', 'legacy')
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr().out
        return exc.value.code, json.loads(out), out
    return run
