"""Reach the test host with podman directly and print the journal when a check fails.

Molecule's testinfra verifier would reach the host through Ansible, which costs seconds per command;
podman exec costs a fraction of that, so the checks stay cheap.
"""
import pytest
import testinfra

CONTAINER = "gpufleet-tabbyapi-wrong-key"
UNITS = "tabbyapi.service"


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host("podman://" + CONTAINER)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        journal = testinfra.get_host("podman://" + CONTAINER).run("journalctl --no-pager -n 60 -u %s" % UNITS)
        report.sections.append(("journal of %s" % UNITS, journal.stdout + journal.stderr))
