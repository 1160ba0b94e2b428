# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start ``sglang.launch_server`` without the API key on the command line (installed by gpufleet.llm.sglang).

SGLang takes its key only as ``--api-key K``. A command line is world-readable (/proc/PID/cmdline,
``ps``, ``systemctl status``) and journald stores it in the ``_CMDLINE`` field of every line the
process logs. So sglang@.service runs ``<venv>/bin/python sglang-launch.py <launch_server args>``
and this launcher adds ``--api-key`` to ``sys.argv`` in-process only, then runs
``sglang.launch_server`` as ``__main__`` with runpy, exactly as ``python -m`` would. The command line
of the process stays the launcher's; SGLang's worker processes (multiprocessing, spawn) get their
arguments pickled over a pipe, not on their command line.

Where the key comes from:

* ``SGLANG_API_KEY`` in the environment (the unit's EnvironmentFile, 0600 root, read by systemd
  before it drops privileges; /proc/PID/environ is readable only by the same user and root). The
  launcher removes it from the environment, so SGLang's child processes do not inherit it.
* or ``--api-key-file PATH`` as the first two arguments: a file readable by the service user with
  the key on its first line.

``--api-key`` among the arguments is refused: that is exactly what this launcher exists to avoid.
"""

import os
import runpy
import sys

ENV = "SGLANG_API_KEY"


def fail(message):
    sys.stderr.write("sglang-launch: %s\n" % message)
    sys.exit(2)


def main():
    args = sys.argv[1:]
    key = os.environ.pop(ENV, "")
    if args[:1] == ["--api-key-file"]:
        if len(args) < 2:
            fail("--api-key-file needs a path")
        try:
            with open(args[1], encoding="utf-8") as handle:
                key = handle.readline().rstrip("\r\n")
        except OSError as exc:
            fail("cannot read the key file %s: %s" % (args[1], exc.strerror))
        args = args[2:]
    if any(a == "--api-key" or a.startswith("--api-key=") for a in args):
        fail("--api-key must not be given on the command line (set %s or use --api-key-file)" % ENV)
    if not key:
        fail("no API key: %s is not set and no --api-key-file was given" % ENV)
    sys.argv = ["sglang.launch_server", *args, "--api-key", key]
    del key
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
