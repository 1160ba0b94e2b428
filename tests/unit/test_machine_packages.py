"""One list of the Debian packages the controller needs (tests/tools/machine-packages.txt), installed
by one script that `make site`, `make test` and .ci/run all go through."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIST = REPO / 'tests' / 'tools' / 'machine-packages.txt'
SCRIPT = REPO / 'tests' / 'tools' / 'machine-packages.sh'
# A Debian package install in any form a script could write it.
INSTALL = re.compile(r'\b(apt-get|apt|aptitude)\s+(-\S+\s+)*install\b|\bdpkg\s+(-\S+\s+)*-i\b')
# `for tool in a b c; do command -v "$tool"` -- how the scripts check for the tools they need.
TOOL_LOOP = re.compile(r'for tool in ([^;]+); do\s+command -v')


def listed():
    """{package: command or None} from the list."""
    out = {}
    for line in LIST.read_text().splitlines():
        fields = line.split('#', 1)[0].split()
        if fields:
            assert len(fields) == 2, 'machine-packages.txt: want "package command-or-dash": %r' % line
            out[fields[0]] = None if fields[1] == '-' else fields[1]
    return out


def entry_points():
    """Every file on the controller side that a person or CI runs: scripts, the Makefile, .ci/run,
    Python tools and tests (roles/ and molecule/ act on test hosts through Ansible, not here)."""
    tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = [REPO / f for f in tracked if not f.startswith(('roles/', 'molecule/', 'docs/'))]
    # Files this change adds are not yet tracked when the test runs in a work tree.
    files += [p for p in (REPO / 'tests' / 'tools').iterdir() if p.is_file()]
    files = [f for f in files if f != Path(__file__).resolve()]  # its own examples of installs
    return sorted({f for f in files if f.is_file() and (f.suffix in ('.sh', '.py', '') or f.name == 'Makefile')
                   and f.suffix not in ('.md', '.txt', '.yml', '.yaml', '.cfg', '.j2')})


def test_only_the_one_script_installs_debian_packages():
    offenders = []
    for path in entry_points():
        if path == SCRIPT:
            continue
        for n, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
            # Installs inside a podman test host (podman exec) are marked so; they are not the controller's.
            if INSTALL.search(line.split('#', 1)[0]) and not line.rstrip().endswith('# on a test host'):
                offenders.append('%s:%d: %s' % (path.relative_to(REPO), n, line.strip()))
    assert not offenders, 'install Debian packages through tests/tools/machine-packages.sh only:\n' + \
        '\n'.join(offenders)


def test_the_check_finds_an_install_outside_the_script():
    assert INSTALL.search('DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman')
    assert INSTALL.search('apt-get -qq install ccache')
    assert INSTALL.search('dpkg -i foo.deb')
    assert not INSTALL.search('pip install -r requirements/dev.txt')


def test_every_tool_a_script_checks_for_comes_from_the_list():
    commands = {c for c in listed().values() if c}
    # Parts of every Debian system (essential packages), never missing.
    essential = {'bash', 'flock', 'ldd', 'cmp', 'gzip', 'sed', 'awk', 'find', 'install'}
    checked = {}
    for path in entry_points():
        for m in TOOL_LOOP.finditer(path.read_text(errors='replace')):
            for tool in m.group(1).split():
                checked.setdefault(tool, path.relative_to(REPO))
    assert 'ccache' in checked, 'the build script no longer checks its tools: this test lost its subject'
    missing = {t: str(p) for t, p in checked.items() if t not in commands | essential}
    assert not missing, 'add to tests/tools/machine-packages.txt: %s' % missing


def test_ci_and_make_go_through_the_script():
    ci = (REPO / '.ci' / 'run').read_text()
    assert re.search(r'^make test$', ci, re.M)
    make = (REPO / 'Makefile').read_text()
    # The venv (which every target needs) depends on `machine`, whose recipe is the script.
    assert re.search(r'^\$\(VENV\)/\.stamp:.*\|\s*machine\b', make, re.M)
    assert re.search(r'^machine:\n\t@?tests/tools/machine-packages\.sh$', make, re.M)
    assert re.search(r'^hosts-image: .*\bmachine\b', make, re.M)


@pytest.fixture
def fake_system(tmp_path):
    """A PATH where dpkg-query says 'podman' and 'ccache' are not installed and id says uid 1000."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'dpkg-query').write_text('#!/bin/sh\nfor a; do last=$a; done\ncase $last in podman|ccache) '
                                        'printf not-installed;; *) printf installed;; esac\n')
    (bin_dir / 'id').write_text('#!/bin/sh\necho 1000\n')
    (bin_dir / 'apt-get').write_text('#!/bin/sh\necho "apt-get must not run" >&2; exit 99\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']), GPUFLEET_LOGS=str(tmp_path / 'logs'))


def test_without_root_the_missing_packages_and_the_command_are_named(fake_system):
    run = subprocess.run(['bash', str(SCRIPT)], env=fake_system, capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert 'missing Debian packages: podman ccache' in run.stderr
    assert 'sudo apt-get update && sudo apt-get install -y --no-install-recommends podman ccache' in run.stderr
    assert 'must not run' not in run.stderr


def test_nothing_missing_is_quiet(fake_system, tmp_path):
    everything = tmp_path / 'bin' / 'dpkg-query'
    everything.write_text('#!/bin/sh\nprintf installed\n')
    run = subprocess.run(['bash', str(SCRIPT)], env=fake_system, capture_output=True, text=True, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, '', '')


def test_as_root_apt_get_update_comes_before_the_install(fake_system, tmp_path):
    calls = tmp_path / 'calls'
    (tmp_path / 'bin' / 'id').write_text('#!/bin/sh\necho 0\n')
    (tmp_path / 'bin' / 'apt-get').write_text('#!/bin/sh\necho "$*" >> %s\n' % calls)
    run = subprocess.run(['bash', str(SCRIPT)], env=fake_system, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert calls.read_text().splitlines() == ['update', 'install -y --no-install-recommends podman ccache']
    assert run.stdout.startswith('==> installing Debian packages: podman ccache')
