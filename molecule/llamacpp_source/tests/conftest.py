"""Reach the test host with podman directly and print the journal when a check fails.

Molecule's testinfra verifier reaches hosts through Ansible, which costs seconds per command;
podman exec costs a fraction of that.
"""
import pytest
import testinfra

CONTAINER = "gpufleet-llamacpp-source"
UNITS = "'llamacpp@*'"


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host("podman://" + CONTAINER)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        journal = testinfra.get_host("podman://" + CONTAINER).run("journalctl --no-pager -n 80 -u %s" % UNITS)
        report.sections.append(("journal of %s" % UNITS, journal.stdout + journal.stderr))
