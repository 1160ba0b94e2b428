# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter that reads the output of ``systemctl show --property=...`` for one or more units.

Used by the internal role gpufleet.llm.backend_common (tasks/unit.yml): one ``systemctl show`` per
unit file tells which of its units failed (their failed state and start limit are cleared) and
whether systemd must re-read the unit files (NeedDaemonReload), so that ``daemon-reload`` runs only
when it is needed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text


def systemctl_show(output):
    """``systemctl show`` output -> a list of dicts, one per unit (blocks separated by blank lines)."""
    if output is None:
        return []
    units = []
    current = {}
    for line in to_text(output).splitlines():
        line = line.strip()
        if not line:
            if current:
                units.append(current)
            current = {}
            continue
        name, sep, value = line.partition('=')
        if not sep:
            raise AnsibleFilterError('systemctl_show: not a "Property=value" line: %r' % line[:80])
        current[name] = value
    if current:
        units.append(current)
    return units


class FilterModule(object):
    def filters(self):
        return {'systemctl_show': systemctl_show}
