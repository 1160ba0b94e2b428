"""Reach the fleet's hosts with podman directly; print each host's gpufleet journal when a check fails."""
import pytest
import testinfra

HOSTS = ("gpufleet-fleet-1", "gpufleet-fleet-2", "gpufleet-fleet-3")
JOURNAL = ("journalctl --no-pager -n 40 -u 'tabbyapi.service' -u 'llamacpp@*' -u 'sglang@*' "
           "-u llm-router.service")


@pytest.fixture(scope="session")
def hosts():
    return {name: testinfra.get_host("podman://" + name) for name in HOSTS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in HOSTS:
            journal = testinfra.get_host("podman://" + name).run(JOURNAL)
            report.sections.append(("journal of %s" % name, journal.stdout + journal.stderr))
