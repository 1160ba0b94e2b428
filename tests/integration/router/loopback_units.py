# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemctl for the loopback tests: ``loopback_units.py DIR start|stop|show [--property=..] -- UNIT``.

A unit is a REAL process (a llama-server, a test double) whose command line DIR/units.json holds
({unit: {"argv": [...], "stop_delay": seconds}}); start runs it in its own session (pid in
DIR/UNIT.pid, output in DIR/UNIT.log), stop sends SIGTERM after stop_delay seconds (a slow stop, as
a server that unloads a large model has) and waits for the exit, show answers ActiveState and
SubState as systemctl does. Every call is one line of DIR/calls.log ("start UNIT", "stop UNIT"), so
a test sees what the router asked for, in order. Real units under systemd: test_router_systemd.py
and the Molecule scenario llm_router."""

import json
import os
import signal
import subprocess
import sys
import time


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii') as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')   # a zombie has exited
    except (OSError, IndexError):
        return False


def pid_of(base):
    try:
        with open(base + '.pid', encoding='ascii') as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def main(argv):
    state, verb, unit = argv[0], argv[1], argv[-1]
    with open(os.path.join(state, 'units.json'), encoding='utf-8') as f:
        spec = json.load(f).get(unit)
    if spec is None:
        print('Unit %s not found.' % unit)
        return 5
    base = os.path.join(state, unit)
    if verb in ('start', 'stop'):
        with open(os.path.join(state, 'calls.log'), 'a', encoding='utf-8') as f:
            f.write('%s %s\n' % (verb, unit))
    pid = pid_of(base)
    if verb == 'start':
        if pid is None:
            with open(base + '.log', 'ab') as log:
                proc = subprocess.Popen(spec['argv'], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            with open(base + '.pid', 'w', encoding='ascii') as f:
                f.write(str(proc.pid))
        return 0
    if verb == 'stop':
        if pid is not None:
            time.sleep(spec.get('stop_delay', 0))
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return 0
    if verb == 'show':
        running = pid is not None
        print('ActiveState=%s\nSubState=%s\nResult=success\nExecMainCode=0\nExecMainStatus=0'
              % (('active', 'running') if running else ('inactive', 'dead')))
        return 0
    print('unknown verb %s' % verb)
    return 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
