# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for ``systemctl`` on loopback that runs REAL processes as "units", with systemd's
start limit. The router's ``systemctl`` setting: [python, this file, STATE_DIR].

STATE_DIR/units.json maps a unit name to {"argv": [...], "stop_delay": seconds (optional)}; each unit's
state is STATE_DIR/<unit>.json (pid, result, start times). What it does, as systemd does for a Type=exec
unit without Restart= that it keeps loaded (an enabled unit; a disabled one that stopped cleanly is
unloaded, and with it its start count):

- ``start -- UNIT``: refused (exit 1, "start of the service was attempted too often", ActiveState=failed,
  Result=start-limit-hit) when the unit was started START_LIMIT_BURST times in the last
  START_LIMIT_INTERVAL seconds (environment; default 5 in 300 s, the roles' unit defaults); else
  the process is started (its own session, output to STATE_DIR/<unit>.log) unless it runs already.
- ``stop -- UNIT``: after stop_delay seconds (a slow stop, as a server that unloads a large model has),
  SIGTERM, then SIGKILL after 10 s; waits for the exit.
- ``reset-failed -- UNIT``: forgets a failure and the start count.
- ``show --property=... -- UNIT``: ActiveState, SubState, Result, ExecMainCode, ExecMainStatus.

Every call is appended to STATE_DIR/calls.log (verb and unit).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def pid_alive(pid):
    if not pid:
        return False
    try:
        with open('/proc/%d/stat' % pid, encoding='utf-8') as f:
            return f.read().split(') ', 1)[1][0] != 'Z'
    except (OSError, IndexError):
        return False


def main(argv):
    state_dir = Path(argv[0])
    verb, unit = argv[1], argv[-1]
    burst = int(os.environ.get('START_LIMIT_BURST', '5'))
    interval = float(os.environ.get('START_LIMIT_INTERVAL', '300'))
    with open(state_dir / 'lock', 'w', encoding='utf-8') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(state_dir / 'calls.log', 'a', encoding='utf-8') as log:
            log.write('%.3f %s %s\n' % (time.time(), verb, unit))
        units = json.loads((state_dir / 'units.json').read_text())
        if unit not in units:
            print('Unit %s could not be found.' % unit)
            return 5
        path = state_dir / (unit + '.json')
        st = json.loads(path.read_text()) if path.exists() else {'pid': 0, 'result': 'success', 'starts': []}
        alive = pid_alive(st['pid'])
        code = 0
        if verb == 'start' and not alive:
            now = time.time()
            st['starts'] = [t for t in st['starts'] if t > now - interval]
            if len(st['starts']) >= burst:
                st['result'] = 'start-limit-hit'
                print('Job for %s failed because start of the service was attempted too often.' % unit)
                code = 1
            else:
                st['starts'].append(now)
                with open(state_dir / (unit + '.log'), 'ab') as out:
                    st['pid'] = subprocess.Popen(units[unit]['argv'], stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT, start_new_session=True).pid
                st['result'] = 'success'
        elif verb == 'stop' and alive:
            time.sleep(units[unit].get('stop_delay', 0))
            os.kill(st['pid'], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(st['pid']) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(st['pid']):
                os.kill(st['pid'], signal.SIGKILL)
            st['pid'], st['result'] = 0, 'success'
        elif verb == 'stop':
            st['pid'] = 0
        elif verb == 'reset-failed':
            st['starts'], st['result'] = [], 'success'
        elif verb == 'show':
            if alive:
                state = ('active', 'running')
            elif st['result'] != 'success' or st['pid']:      # refused, or its process died on its own
                state = ('failed', 'failed')
                st['result'] = 'exit-code' if st['result'] == 'success' else st['result']
            else:
                state = ('inactive', 'dead')
            print('ActiveState=%s\nSubState=%s\nResult=%s\nExecMainCode=0\nExecMainStatus=0' % (state + (st['result'],)))
        path.write_text(json.dumps(st))
        return code


def stop_all(state_dir):
    """Kill what the stand-in started (a test's clean-up)."""
    for path in Path(state_dir).glob('*.service.json'):
        pid = json.loads(path.read_text())['pid']
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
