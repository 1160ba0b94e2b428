"""The test host, reached with podman directly; its journal is printed when a check fails."""
import os
import sys

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "tests", "support"))
from molecule_hosts import host_fixture, journal_on_failure  # noqa: E402

host = host_fixture("gpufleet-llamacpp")
pytest_runtest_makereport = journal_on_failure(["gpufleet-llamacpp"], ["llamacpp@*"])
