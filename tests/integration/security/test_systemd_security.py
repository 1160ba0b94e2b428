# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`systemd-analyze security` of every unit the roles install, on the converged test host.

The figures go to <basetemp>/sechost*/systemd-security.txt (and the test's output) for docs/security.md.
The router faces the network and needs no device: its exposure must stay at or below 4.0. The
backends need the GPU device nodes (DeviceAllow) and a writable home, so they are held to a looser
bound that still catches a unit losing its hardening (the Debian default for a plain unit is 9.6)."""

import re

import pytest

UNITS = {'llm-router.service': 4.0, 'tabbyapi.service': 6.0, 'llamacpp@tiny.service': 6.0, 'sglang@chat.service': 6.0}


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
