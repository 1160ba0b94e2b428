# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the one description of a host's services (plugins/module_utils/_backends.py).

    {{ vars | gpufleet.llm.backends }}                       # every service of the host
    {{ vars | gpufleet.llm.backends(role='tabbyapi') }}      # ... and this role's, whatever the groups
    {{ vars | gpufleet.llm.backends(groups=_keys_groups) }}  # scopes in other inventory groups
    {{ services | gpufleet.llm.router_defaults }}            # the router's backends and models
    {{ llamacpp_instances | gpufleet.llm.llamacpp_instances(llamacpp_port_base, llamacpp_models_dir, llamacpp_ctx_size) }}
    {{ sglang_instances | gpufleet.llm.sglang_instances(sglang_host) }}
    {{ services | gpufleet.llm.services_summary(ansible_check_mode, ansible_run_tags, ansible_skip_tags) }}
    {{ _backend_common_planned | default({}) | gpufleet.llm.plan_restart(units, 'restart') }}   # handlers
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.llm.plugins.module_utils import _backends


def _wrap(function):
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except _backends.DescriptionError as exc:
            raise AnsibleFilterError(str(exc))
    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    return run


def plan_restart(planned, units, action='restart'):
    """The handlers' one convention: note that units need a planned restart ('restart') or only a key
    re-read ('reread'; the backend reads its key file by itself). A restart covers a re-read, so a
    unit already noted for 'restart' stays so. Returns a new mapping unit -> action."""
    if action not in ('restart', 'reread'):
        raise AnsibleFilterError("plan_restart: action must be restart or reread, got %r" % (action,))
    out = dict(planned or {})
    for unit in units or []:
        out[str(unit)] = 'restart' if out.get(str(unit)) == 'restart' else action
    return out


# role -> label, in the order the summary lists them
_LABELS = (('tabbyapi', 'TabbyAPI'), ('llamacpp', 'llama.cpp'), ('sglang', 'SGLang'), ('llm_router', 'router'))


def services_summary(services, check_mode=False, run_tags=('all',), skip_tags=()):
    """One line per role the host runs (and the run's tags selected), saying plainly what runs and
    what was left stopped."""
    out = []
    for role, label in _LABELS:
        states = [s['state'] for s in services if s['role'] == role]
        if not states or role in skip_tags or not ('all' in run_tags or role in run_tags):
            continue
        state = states[0]
        if state == 'stopped':
            out.append('%s: installed and configured, NOT started (%s_service_state: stopped)' % (label, role))
        elif state == 'router':
            out.append('%s: installed and configured, started on demand by the router (exclusive swap; '
                       'not enabled at boot)%s' % (label, ' (check mode: readiness not proven)' if check_mode
                                                   else ', readiness proven through the router'))
        elif check_mode:
            out.append('%s: would run (check mode: the readiness gate was not run)' % label)
        else:
            out.append('%s: running, passed its readiness gate' % label)
    return out or ['no gpufleet role ran on this host']


class FilterModule(object):
    def filters(self):
        return {
            'backends': _wrap(_backends.describe),
            'router_defaults': _wrap(_backends.router_defaults),
            'llamacpp_instances': _wrap(_backends.llamacpp_instances),
            'sglang_instances': _wrap(_backends.sglang_instances),
            'services_summary': services_summary,
            'plan_restart': plan_restart,
        }
