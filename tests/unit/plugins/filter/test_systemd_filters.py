# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the systemctl_show filter (plugins/filter/systemd.py), which backend_common's unit
step uses to find failed units and units whose unit file systemd has not re-read."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.llm.plugins.filter import systemd as f

# What `systemctl show --property=Id,ActiveState,NeedDaemonReload 'llamacpp@*.service'` printed on a
# test host with two instances, one of them start-limited.
TWO_INSTANCES = """Id=llamacpp@chat.service
ActiveState=failed
NeedDaemonReload=no

Id=llamacpp@tiny.service
ActiveState=active
NeedDaemonReload=yes
"""


def test_one_dict_per_unit_in_order():
    assert f.systemctl_show(TWO_INSTANCES) == [
        {'Id': 'llamacpp@chat.service', 'ActiveState': 'failed', 'NeedDaemonReload': 'no'},
        {'Id': 'llamacpp@tiny.service', 'ActiveState': 'active', 'NeedDaemonReload': 'yes'},
    ]


def test_no_unit_loaded_is_an_empty_list():
    # a template unit without instances: systemctl prints nothing
    assert f.systemctl_show('') == []
    assert f.systemctl_show(None) == []


def test_a_value_may_hold_an_equals_sign_and_blank_lines_may_repeat():
    out = '\n\nId=a.service\nDescription=x=y\n\n\nId=b.service\n'
    assert f.systemctl_show(out) == [{'Id': 'a.service', 'Description': 'x=y'}, {'Id': 'b.service'}]


def test_a_line_that_is_not_a_property_is_named():
    with pytest.raises(AnsibleFilterError, match="not a \"Property=value\" line: 'Failed to connect to bus'"):
        f.systemctl_show('Failed to connect to bus\n')
