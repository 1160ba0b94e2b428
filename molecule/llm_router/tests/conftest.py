"""Reach the test host with podman directly and print the journals when a check fails.

Molecule's testinfra verifier would reach the host through Ansible, which costs seconds per command;
podman exec costs a fraction of that.
"""
import pytest
import testinfra

CONTAINER = "gpufleet-llm-router"
UNITS = "-u llm-router.service -u 'llamacpp@*' -u polkit.service"


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host("podman://" + CONTAINER)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        journal = testinfra.get_host("podman://" + CONTAINER).run("journalctl --no-pager -n 120 %s" % UNITS)
        report.sections.append(("journal of llm-router, llamacpp@*, polkit", journal.stdout + journal.stderr))
