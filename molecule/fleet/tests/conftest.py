"""The fleet's hosts, reached with podman directly; each host's gpufleet journal is printed when a check fails."""
import os
import sys

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "tests", "support"))
from molecule_hosts import hosts_fixture, journal_on_failure  # noqa: E402

HOSTS = ("gpufleet-fleet-1", "gpufleet-fleet-2", "gpufleet-fleet-3")
hosts = hosts_fixture(HOSTS)
pytest_runtest_makereport = journal_on_failure(
    HOSTS, ["tabbyapi.service", "llamacpp@*", "sglang@*", "llm-router.service"], lines=40)
