# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`systemd-analyze security` of every unit the roles install, on the converged test host.

The figures go to <basetemp>/sechost*/systemd-security.txt (and the test's output) for docs/security.md.
Each unit is held to the figure measured on the test host (docs/security.md), so a unit that loses any
hardening line (systemd-analyze moves in steps of 0.1) fails here. The router faces the network; issue
#7 asks for 4.0 or lower, and the backends "as low as GPU access allows" (a plain unit scores 9.6)."""

import re

import pytest

# Measured with systemd 252 (Debian 12). sglang is 0.1 above tabbyapi for AF_NETLINK (NCCL), llamacpp 0.1
# below for PrivateDevices (the test host's instance is CPU-only).
UNITS = {'llm-router.service': 1.3, 'tabbyapi.service': 1.5, 'llamacpp@tiny.service': 1.4, 'sglang@chat.service': 1.6}


@pytest.fixture(scope='module')
def figures(converged):
    found, report = {}, []
    for unit in UNITS:
        proc = converged.sh('systemd-analyze security --no-pager %s' % unit, check=False)
        report.append('== %s\n%s' % (unit, proc.stdout))
        m = re.search(r'Overall exposure level for %s: ([0-9.]+) (\S+)' % re.escape(unit), proc.stdout)
        found[unit] = (float(m.group(1)), m.group(2)) if m else (None, proc.stdout + proc.stderr)
    (converged.workdir / 'systemd-security.txt').write_text('\n'.join(report))
    print('\n'.join('%s: %s %s' % (u, *found[u]) for u in UNITS))
    return found


@pytest.mark.parametrize('unit', sorted(UNITS))
def test_exposure(figures, unit):
    level, verdict = figures[unit]
    assert level is not None, verdict
    assert level <= UNITS[unit], '%s exposure %.1f %s (bound %.1f)' % (unit, level, verdict, UNITS[unit])


def test_units_run_as_their_service_users_without_new_privileges(converged):
    # the router stops the other backends when it swaps (exclusive policy): start them all again
    converged.sh('systemctl reset-failed; systemctl start tabbyapi.service llamacpp@tiny.service sglang@chat.service')
    for unit, user in (('llm-router.service', 'llm-router'), ('tabbyapi.service', 'tabbyapi'),
                       ('llamacpp@tiny.service', 'llamacpp'), ('sglang@chat.service', 'sglang')):
        props = converged.sh('systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p ActiveState %s' % unit).stdout
        assert 'User=%s' % user in props and 'NoNewPrivileges=yes' in props, (unit, props)
        assert 'ProtectSystem=strict' in props and 'ActiveState=active' in props, (unit, props)


def test_only_the_router_listens_beyond_loopback(converged):
    listening = converged.sh('ss -Hltnp').stdout
    public = [line for line in listening.splitlines()
              if not re.search(r'\s(127\.0\.0\.1|\[::1\]|::1):\d+\s', line)]
    assert public and all(':4000' in line for line in public), listening
