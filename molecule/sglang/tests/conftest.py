"""Print the backends' journal when a check fails, so a failure explains itself."""
import pytest

UNITS = "'sglang@*'"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "host" in item.funcargs:
        journal = item.funcargs["host"].run("journalctl --no-pager -n 60 -u %s" % UNITS)
        report.sections.append(("journal of %s" % UNITS, journal.stdout + journal.stderr))
