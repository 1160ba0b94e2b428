"""The gateway and the two router hosts, reached with podman directly; the journals of HAProxy, the
routers and the llama.cpp instances are printed when a check fails."""
import os
import sys

sys.path.insert(0, os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "tests", "support"))
from molecule_hosts import hosts_fixture, journal_on_failure  # noqa: E402

HOSTS = ("gpufleet-gw-1", "gpufleet-gw-2", "gpufleet-gw-3")
hosts = hosts_fixture(HOSTS)
pytest_runtest_makereport = journal_on_failure(HOSTS, ["haproxy.service", "llm-router.service", "llamacpp@*"], lines=40)
