# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes the `procs` fixture (router_helpers.py) available to the router's integration tests, and
`llama_files`: the real llama-server and its tiny model."""
import pytest

import router_helpers
import llama_units  # tests/support, on the path through router_helpers

procs = router_helpers.procs


@pytest.fixture(scope='session')
def llama_files(tmp_path_factory):
    """(llama-server binary, tiny GGUF model): the binary built once and cached by
    tests/tools/build-llama-server.sh (a cold build takes 8-15 min; `make llama-server`)."""
    return llama_units.llama_server(), llama_units.tiny_model(tmp_path_factory.mktemp('llama') / 'tiny.gguf')
