# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs a backend with every key value masked in what it prints.

    python3 -I gpufleet_mask.py [--secrets-file F]... [--secrets-env NAME]... -- COMMAND [ARG]...

The backend units start their server through this launcher (ExecStart), so what reaches journald is
the server's stdout and stderr with each key value replaced by ``***``:

- key values come from the named files (TabbyAPI's api_tokens.yml, llama.cpp's key file: lines of
  ``name: value``, ``name: ["v1", "v2"]``, ``NAME=value`` or a bare value) and environment variables
  (SGLANG_API_KEY); a named file that exists but cannot be read stops the launcher before the server
  starts (a missing one is fine: TabbyAPI with auth off has no api_tokens.yml);
- a file is read again when it changes (TabbyAPI's main branch re-reads api_tokens.yml while
  running), and a value once seen stays masked: an earlier key is masked after a rotation too;
- output is masked line by line; a line longer than 64 KiB is passed on in pieces that keep enough of
  their end back for a key split across two pieces to be masked;
- SIGTERM, SIGINT, SIGHUP and SIGQUIT go to the server (the units use KillMode=mixed); the launcher
  exits with the server's exit status, or dies of the signal the server died of;
- when the server ends with an error (a non-zero status, or a signal other than SIGTERM/SIGINT), its
  last lines (masked, at most 10, each at most 240 characters, on one line joined by " | ") become
  the unit's status text (sd_notify STATUS=, the units set NotifyAccess=main), which
  ``systemctl show -p StatusText`` gives without reading the journal: the router names them in its
  502 (docs/router.md). The text is cleared at each start.

What it cannot mask: a key the server prints in a changed form (cut, split across lines, encoded),
and anything the server writes elsewhere than stdout/stderr (TabbyAPI's log files are masked inside
the process: tabbyapi_launch.py). Standard library only: it runs with the host's python3.
"""

import collections
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

MASK = b'***'
MIN_SECRET = 6          # shorter values are not keys the roles write (validated elsewhere)
CHUNK = 65536
RECHECK = 0.5           # seconds between looks at the secrets files
TAIL_LINES = 10         # last lines of output kept for the status text
TAIL_WIDTH = 240        # characters kept of each

_LINE = re.compile(r'^\s*(?:-\s+)?(?:([A-Za-z_][A-Za-z0-9_.-]*)\s*[:=]\s*)?(.*?)\s*$')


def values_of(text):
    """The key values in a secrets file's text (YAML-like ``name: value`` or a JSON list of strings,
    ``NAME=value``, or one bare value per line); comments and empty lines are skipped."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        match = _LINE.match(line)
        value = match.group(2)
        if not value:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value.strip('\'"')
        items = parsed if isinstance(parsed, list) else [parsed]
        found.extend(str(item) for item in items if isinstance(item, (str, int)) and not isinstance(item, bool))
    return [v for v in found if len(v) >= MIN_SECRET]


class Secrets:
    """Every key value seen so far in the files and environment variables; files are re-read when
    their size, inode or modification time change."""

    def __init__(self, files=(), env_names=(), environ=None):
        self.files = list(files)
        self.values = set()
        self._seen = {}
        self._checked = 0.0
        self._pattern = None
        self._lock = threading.Lock()
        self.unreadable = []    # files that exist but cannot be read (at the first look)
        environ = os.environ if environ is None else environ
        # An environment variable holds the key itself: no file syntax to read (a key with ':' or '='
        # in it is masked whole).
        self._add([environ.get(name, '') for name in env_names])
        self.refresh(force=True)

    def _add(self, values):
        new = {v for v in values if len(v) >= MIN_SECRET} - self.values
        if new:
            self.values |= new
            longest_first = sorted(self.values, key=len, reverse=True)
            self._pattern = re.compile(b'|'.join(re.escape(v.encode()) for v in longest_first))

    def refresh(self, force=False):
        now = time.monotonic()
        if not force and now - self._checked < RECHECK:
            return
        with self._lock:
            self._checked = now
            for path in self.files:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if self._seen.get(path) == stamp:
                    continue
                try:
                    with open(path, encoding='utf-8', errors='replace') as handle:
                        text = handle.read()
                except OSError as err:
                    if force:
                        self.unreadable.append('%s: %s' % (path, err.strerror))
                    continue
                self._seen[path] = stamp
                self._add(values_of(text))

    @property
    def longest(self):
        return max((len(v.encode()) for v in self.values), default=0)

    def safe_cut(self, data):
        """Where a long line without a line end can be cut: the last len(longest key) - 1 bytes (which
        may be the start of a key still coming) are kept back, and the cut never falls inside a key."""
        cut = len(data) - max(self.longest - 1, 0)
        if self._pattern is not None:
            for match in self._pattern.finditer(data):
                if match.start() < cut < match.end():
                    return match.start()
        return cut

    def mask(self, data):
        """data (bytes) with every known key value replaced by ***."""
        self.refresh()
        pattern = self._pattern
        return pattern.sub(MASK, data) if pattern is not None else data


class Tail:
    """The last TAIL_LINES non-empty lines of the server's (masked) output, whitespace collapsed."""

    def __init__(self):
        self.lines = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()

    def add(self, masked):
        for raw in masked.splitlines():
            line = ' '.join(raw.decode('utf-8', 'replace').split())
            if line:
                with self._lock:
                    self.lines.append(line[:TAIL_WIDTH])

    def text(self):
        with self._lock:
            return ' | '.join(self.lines)


def notify(message, environ=None):
    """sd_notify(message) to systemd when the unit gave a NOTIFY_SOCKET (NotifyAccess=main); True if sent."""
    address = (os.environ if environ is None else environ).get('NOTIFY_SOCKET', '')
    if not address:
        return False
    if address.startswith('@'):
        address = '\0' + address[1:]            # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode('utf-8', 'replace'), address)
    except OSError:
        return False
    return True


def pump(source, sink, secrets, tail=None):
    """Copy source to sink (binary files) line by line, masked, until source ends."""
    pending = b''
    while True:
        chunk = source.read1(CHUNK) if hasattr(source, 'read1') else source.read(CHUNK)
        if not chunk:
            break
        pending += chunk
        cut = max(pending.rfind(b'\n'), pending.rfind(b'\r'))
        if cut >= 0:
            out, pending = pending[:cut + 1], pending[cut + 1:]
        elif len(pending) > CHUNK:
            cut = secrets.safe_cut(pending)
            out, pending = pending[:cut], pending[cut:]
        else:
            continue
        masked = secrets.mask(out)
        sink.write(masked)
        sink.flush()
        if tail is not None:
            tail.add(masked)
    if pending:
        masked = secrets.mask(pending)
        sink.write(masked)
        sink.flush()
        if tail is not None:
            tail.add(masked)


def parse_args(argv):
    files, env_names = [], []
    args = list(argv)
    while args and args[0] != '--':
        option = args.pop(0)
        if option in ('--secrets-file', '--secrets-env') and args:
            (files if option == '--secrets-file' else env_names).append(args.pop(0))
        else:
            raise SystemExit('gpufleet_mask: unknown option %r (usage: %s)' % (option, __doc__.split('\n\n')[1].strip()))
    if len(args) < 2:
        raise SystemExit('gpufleet_mask: no command after --')
    return files, env_names, args[1:]


def main(argv=None):
    files, env_names, command = parse_args(sys.argv[1:] if argv is None else argv)
    secrets = Secrets(files, env_names)
    if secrets.unreadable:
        # Its keys could not be masked: the server is not started (the unit fails, naming the file).
        sys.stderr.write('gpufleet_mask: cannot read %s\n' % '; '.join(secrets.unreadable))
        return 2
    notify('STATUS=')                            # no lines of an earlier run
    # The server gets no NOTIFY_SOCKET: only this process speaks to systemd (NotifyAccess=main).
    environ = {k: v for k, v in os.environ.items() if k != 'NOTIFY_SOCKET'}
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)
    except OSError as err:
        sys.stderr.write('gpufleet_mask: cannot run %s: %s\n' % (command[0], err.strerror))
        return 127

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)

    tail = Tail()
    threads = [threading.Thread(target=pump, args=(child.stdout, sys.stdout.buffer, secrets, tail), daemon=True),
               threading.Thread(target=pump, args=(child.stderr, sys.stderr.buffer, secrets, tail), daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = child.wait()
    if status > 0 or status < 0 and -status not in (signal.SIGTERM, signal.SIGINT):
        notify('STATUS=last lines: %s' % (tail.text() or '(none)'))
    if status < 0:
        # The server died of a signal: die of the same one, so systemd sees what it would have seen
        # without the launcher (SIGTERM at a stop is a clean stop; SIGKILL or SIGSEGV is a crash).
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # no core file of this process: it holds keys
        if -status != signal.SIGKILL:
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


if __name__ == '__main__':
    sys.exit(main())
