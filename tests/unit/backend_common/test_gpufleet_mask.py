"""roles/backend_common/files/gpufleet_mask.py: the launcher that keeps key values out of what a
backend prints (journald), run here as the units run it: python3 -I gpufleet_mask.py ... -- COMMAND."""
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MASKER = REPO / 'roles' / 'backend_common' / 'files' / 'gpufleet_mask.py'
sys.path.insert(0, str(MASKER.parent))
import gpufleet_mask  # noqa: E402  pylint: disable=wrong-import-position

KEY = 'k-live-6f1d9a2c4b7e8f00aa11'
ADMIN = 'k-admin-0c9b8a7d6e5f4a3b2c1d'


def launcher(*args, env=None, **kw):
    return subprocess.run([sys.executable, '-I', str(MASKER)] + list(args), capture_output=True, env=env,
                          timeout=60, check=False, **kw)


@pytest.mark.parametrize('text, values', [
    ('api_key: ["%s", "older-key-123456"]\nadmin_key: "%s"\n' % (KEY, ADMIN), [KEY, 'older-key-123456', ADMIN]),
    ('api_key: %s\nadmin_key: %s\n' % (KEY, ADMIN), [KEY, ADMIN]),                  # as TabbyAPI writes it
    ('api_key:\n  - %s\n  - "%s"\n' % (KEY, ADMIN), [KEY, ADMIN]),                  # a YAML block list
    ('%s\n%s\n' % (KEY, ADMIN), [KEY, ADMIN]),                                        # llama.cpp --api-key-file
    ('# comment\nSGLANG_API_KEY=%s\n\n' % KEY, [KEY]),                                 # an environment file
    ('api_key: short\n', []),                                                          # not a key the roles write
])
def test_values_of_each_secrets_file_format(text, values):
    assert gpufleet_mask.values_of(text) == values


def test_a_changed_file_adds_its_new_values_and_keeps_the_old_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(gpufleet_mask, 'RECHECK', 0)
    path = tmp_path / 'api_tokens.yml'
    path.write_text('api_key: %s\n' % KEY)
    secrets = gpufleet_mask.Secrets([str(path)])
    assert secrets.mask(b'key=' + KEY.encode() + b'\n') == b'key=***\n'
    path.write_text('api_key: %s\nadmin_key: %s\n' % ('k-new-aaaaaaaaaaaaaaaa', ADMIN))
    line = ('%s %s %s\n' % (KEY, 'k-new-aaaaaaaaaaaaaaaa', ADMIN)).encode()
    assert secrets.mask(line) == b'*** *** ***\n'                       # the earlier key stays masked


def test_a_key_is_masked_where_a_long_line_is_cut(tmp_path):
    path = tmp_path / 'keys'
    path.write_text(KEY + '\n')
    secrets = gpufleet_mask.Secrets([str(path)])
    for offset in range(-len(KEY), len(KEY) + 1, 3):      # the key across every place of the cut
        head = b'x' * (gpufleet_mask.CHUNK + offset)
        out = io.BytesIO()

        class Source:  # pylint: disable=too-few-public-methods
            parts = [head, KEY.encode() + b'y' * 10, b'tail\n']

            def read(self, _size):
                return self.parts.pop(0) if self.parts else b''
        gpufleet_mask.pump(Source(), out, secrets)
        assert out.getvalue() == head + b'***' + b'y' * 10 + b'tail\n', offset


def test_stdout_and_stderr_of_the_command_are_masked_and_its_status_kept(tmp_path):
    tokens = tmp_path / 'api_tokens.yml'
    tokens.write_text('api_key: ["%s"]\nadmin_key: "%s"\n' % (KEY, ADMIN))
    script = ('import sys; print("Your API key is: %s"); print("Your admin key is: %s", file=sys.stderr); '
              'sys.stdout.write("no newline %s"); sys.exit(3)' % (KEY, ADMIN, KEY))
    proc = launcher('--secrets-file', str(tokens), '--', sys.executable, '-c', script)
    assert proc.returncode == 3
    assert proc.stdout == b'Your API key is: ***\nno newline ***'
    assert proc.stderr == b'Your admin key is: ***\n'


def test_a_key_from_the_environment_is_masked():
    env = dict(os.environ, SGLANG_API_KEY=KEY)
    proc = launcher('--secrets-env', 'SGLANG_API_KEY', '--', sys.executable, '-c',
                    'import os; print("server_args=ServerArgs(api_key=%r)" % os.environ["SGLANG_API_KEY"])', env=env)
    assert proc.returncode == 0 and proc.stdout == b"server_args=ServerArgs(api_key='***')\n"


def test_a_key_from_the_environment_is_masked_whole():
    """The variable holds the key itself, not a file line: an '=' or ':' in it does not split it."""
    secrets = gpufleet_mask.Secrets(env_names=['K'], environ={'K': 'abc=defghij:klmnop'})
    assert secrets.mask(b'key abc=defghij:klmnop.') == b'key ***.'


def test_a_key_written_while_the_command_runs_is_masked(tmp_path):
    tokens = tmp_path / 'api_tokens.yml'
    tokens.write_text('api_key: ["%s"]\n' % KEY)
    new = 'k-rotated-99887766554433'
    script = ('import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); '
              'p.write_text("api_key: [\\"%s\\"]\\n"); time.sleep(1.2); print("%s %s", flush=True)'
              % (new, new, KEY))
    proc = launcher('--secrets-file', str(tokens), '--', sys.executable, '-c', script, str(tokens))
    assert proc.returncode == 0 and proc.stdout == b'*** ***\n'


def test_sigterm_goes_to_the_command_and_its_status_comes_back():
    script = ('import signal, sys, time\n'
              'def bye(*_):\n    print("stopping", flush=True); sys.exit(7)\n'
              'signal.signal(signal.SIGTERM, bye)\nprint("ready", flush=True)\ntime.sleep(60)\n')
    with subprocess.Popen([sys.executable, '-I', str(MASKER), '--', sys.executable, '-c', script],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b'ready\n'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
        assert proc.stdout.read() == b'stopping\n'


@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGSEGV])
def test_a_command_killed_by_a_signal_kills_the_launcher_with_it(signum):
    """systemd sees a crash of the server as it would without the launcher (Restart=on-failure)."""
    proc = launcher('--', sys.executable, '-c', 'import os; os.kill(os.getpid(), %d)' % signum)
    assert proc.returncode == -signum


def test_sigterm_to_a_command_without_a_handler_ends_the_launcher_by_sigterm():
    """A stop (SIGTERM) that ends the server ends the launcher the same way: systemd calls it clean."""
    with subprocess.Popen([sys.executable, '-I', str(MASKER), '--', sys.executable, '-c',
                           'import time; print("ready", flush=True); time.sleep(60)'],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b'ready\n'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM


def test_an_unreadable_secrets_file_stops_it_before_the_server_starts(tmp_path):
    tokens = tmp_path / 'api_tokens.yml'
    tokens.mkdir()                      # exists, cannot be read as a file (works as root too)
    started = tmp_path / 'started'
    proc = launcher('--secrets-file', str(tokens), '--', sys.executable, '-c',
                    'open(%r, "w").close()' % str(started))
    assert proc.returncode == 2 and b'cannot read ' + str(tokens).encode() in proc.stderr
    assert not started.exists()


def test_a_missing_secrets_file_is_no_error(tmp_path):
    proc = launcher('--secrets-file', str(tmp_path / 'absent.yml'), '--', sys.executable, '-c', 'print("up")')
    assert proc.returncode == 0 and proc.stdout == b'up\n'


@pytest.mark.parametrize('args, message', [
    (['--', ], b'no command after --'),
    (['--secrets-fil', 'x', '--', 'true'], b"unknown option '--secrets-fil'"),
    (['--', '/nonexistent/server'], b'cannot run /nonexistent/server'),
])
def test_bad_use_is_named(args, message):
    proc = launcher(*args)
    assert proc.returncode != 0 and message in proc.stderr


def test_the_output_keeps_flowing_while_the_command_runs(tmp_path):
    """A line reaches the journal when printed, not when the server ends: the command waits for the
    test to have read its first line before it prints the second."""
    go = tmp_path / 'go'
    script = ('import os, sys, time\nprint("first", flush=True)\n'
              'for _ in range(100):\n    if os.path.exists(sys.argv[1]): break\n    time.sleep(0.1)\n'
              'print("second: " + ("after the first was read" if os.path.exists(sys.argv[1]) else "timed out"))\n')
    with subprocess.Popen([sys.executable, '-I', str(MASKER), '--', sys.executable, '-c', script, str(go)],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b'first\n'
        go.touch()
        assert proc.stdout.readline() == b'second: after the first was read\n'
        assert proc.wait(timeout=20) == 0


def notify_socket(tmp_path):
    import socket  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / 'notify.sock')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0)
    return sock, path


def received(sock):
    messages = []
    while True:
        try:
            messages.append(sock.recv(65536).decode())
        except BlockingIOError:
            return messages


def test_a_server_that_fails_leaves_its_last_masked_lines_as_the_unit_status(tmp_path):
    sock, path = notify_socket(tmp_path)
    tokens = tmp_path / 'api_tokens.yml'
    tokens.write_text('api_key: "%s"\n' % KEY)
    script = ('import os, sys, time\n'
              'print("child sees NOTIFY_SOCKET:", "NOTIFY_SOCKET" in os.environ)\n'
              'for i in range(14): print("line %%d   of\\tthe load" %% i)\n'
              'print("", flush=True)\n'
              'print("x" * 400, flush=True)\n'
              'time.sleep(0.3)\n'                                  # stderr after stdout (two pipes)
              'print("CUDA error: out of memory; key %s", file=sys.stderr)\n'
              'sys.exit(3)' % KEY)
    proc = launcher('--secrets-file', str(tokens), '--', sys.executable, '-c', script,
                    env=dict(os.environ, NOTIFY_SOCKET=path))
    assert proc.returncode == 3
    assert b'child sees NOTIFY_SOCKET: False' in proc.stdout           # only the launcher speaks to systemd
    messages = received(sock)
    assert messages[0] == 'STATUS=' and len(messages) == 2, messages   # cleared at start, set at the end
    status = messages[1]
    assert status.startswith('STATUS=last lines: line 6 of the load | ')
    lines = status[len('STATUS=last lines: '):].split(' | ')
    assert len(lines) == 10 and lines[-2] == 'x' * 240
    assert lines[-1] == 'CUDA error: out of memory; key ***' and KEY not in status


def test_a_clean_exit_or_a_stop_leaves_no_status(tmp_path):
    sock, path = notify_socket(tmp_path)
    proc = launcher('--', sys.executable, '-c', 'print("bye")', env=dict(os.environ, NOTIFY_SOCKET=path))
    assert proc.returncode == 0 and received(sock) == ['STATUS=']
    proc = launcher('--', sys.executable, '-c', 'import os, signal; os.kill(os.getpid(), signal.SIGTERM)',
                    env=dict(os.environ, NOTIFY_SOCKET=path))
    assert proc.returncode == -signal.SIGTERM and received(sock) == ['STATUS=']


def test_without_a_notify_socket_nothing_is_sent():
    assert gpufleet_mask.notify('STATUS=x', environ={}) is False
    assert gpufleet_mask.notify('STATUS=x', environ={'NOTIFY_SOCKET': '/nonexistent/notify'}) is False
