# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a one-play playbook against localhost (connection local) with ansible-playbook."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess
import sys
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
CHECKOUT_COLLECTIONS = os.path.join(TOP, 'build', 'collections')
# Collections are looked up under ansible_collections/ of this path; `make collection` links the checkout there.

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')


def _yaml_scalar(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(value)
    return "'%s'" % str(value).replace("'", "''")


def write_play(directory, task_args, extra_tasks='', secret_vars=None, name='play.yml', warm_up=False):
    """Write play.yml (and vars.yml with secret_vars) into directory; return the play's path.

    task_args: dict of gpufleet.llm.wait_for_backend options; a value may be a Jinja string.
    warm_up: run ansible.builtin.ping first, so the wait task does not pay Ansible's first-task costs.
    """
    lines = [
        '- name: Wait for a backend',
        '  hosts: localhost',
        '  connection: local',
        '  gather_facts: false',
    ]
    if secret_vars:
        vars_path = os.path.join(directory, 'vars.yml')
        with open(vars_path, 'w') as f:
            f.write('---\n')
            for key, value in secret_vars.items():
                f.write('%s: %s\n' % (key, _yaml_scalar(value)))
        lines += ['  vars_files:', '    - vars.yml']
    lines.append('  tasks:')
    if warm_up:
        lines += ['    - name: Warm up', '      ansible.builtin.ping:']
    lines += [
        '    - name: Wait for the backend',
        '      gpufleet.llm.wait_for_backend:',
    ]
    for key, value in task_args.items():
        lines.append('        %s: %s' % (key, _yaml_scalar(value)))
    lines.append('      register: waited')
    text = '\n'.join(['---'] + lines) + '\n' + extra_tasks
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def run_playbook(play, *args, collections_path=CHECKOUT_COLLECTIONS, cwd=None, env=None, timeout=300):
    """Run ansible-playbook; return (returncode, combined output, seconds it took)."""
    environment = dict(os.environ)
    environment.update({
        'ANSIBLE_COLLECTIONS_PATH': collections_path,
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_LOCALHOST_WARNING': 'false',
        'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'false',
        'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
        'PATH': os.path.dirname(sys.executable) + os.pathsep + environment.get('PATH', ''),
    })
    environment.update(env or {})
    started = time.monotonic()
    proc = subprocess.run([ANSIBLE_PLAYBOOK, '-i', 'localhost,', play] + list(args), cwd=cwd or os.path.dirname(play),
                          env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          check=False, universal_newlines=True)
    return proc.returncode, proc.stdout, time.monotonic() - started
