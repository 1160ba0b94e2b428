# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every Molecule scenario's tests/conftest.py needs: its hosts, and their journals on failure.

Molecule's testinfra verifier reaches hosts through Ansible, which costs seconds per command;
podman exec costs a fraction of that, so the checks reach the test hosts with podman directly.
When a check fails, the journal of the units under test on each host is added to its report.

A scenario's conftest.py:

    sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "tests", "support"))
    from molecule_hosts import host_fixture, journal_on_failure
    host = host_fixture("gpufleet-tabbyapi")
    pytest_runtest_makereport = journal_on_failure(["gpufleet-tabbyapi"], ["tabbyapi.service"])
"""
import shlex

import pytest
import testinfra


def podman_host(container):
    """The testinfra host of one test container."""
    return testinfra.get_host("podman://" + container)


def host_fixture(container):
    """A module-scoped `host` fixture for a scenario with one test host."""
    @pytest.fixture(scope="module")
    def host():
        return podman_host(container)
    return host


def hosts_fixture(containers):
    """A session-scoped `hosts` fixture: {container name: testinfra host}."""
    @pytest.fixture(scope="session")
    def hosts():
        return {name: podman_host(name) for name in containers}
    return hosts


def journal_on_failure(containers, units, lines=80):
    """A pytest_runtest_makereport hook adding the last `lines` journal lines of `units` (names or
    patterns such as llamacpp@*) on each container to the report of a failed check."""
    command = "journalctl --no-pager -n %d %s" % (lines, " ".join("-u " + shlex.quote(u) for u in units))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.failed:
            for name in containers:
                journal = podman_host(name).run(command)
                report.sections.append(("journal of %s on %s" % (", ".join(units), name),
                                        journal.stdout + journal.stderr))
    return pytest_runtest_makereport
