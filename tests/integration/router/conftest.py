# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes the `procs` fixture (router_helpers.py) available to the router's integration tests."""
import router_helpers

procs = router_helpers.procs
