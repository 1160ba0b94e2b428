# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router package (roles/llm_router/files/llm_router) importable as ``llm_router`` from this
checkout. On a host the role puts a copy of plugins/module_utils/_backend_probe.py into the package
(``from . import _backend_probe``); here the package's search path names module_utils instead, so
that the tests run the checkout's files themselves. Tests that run the router as a process use the
package laid out as the role installs it (``installed_router`` below, tests/support/router_package.py)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
for p in (ROOT / 'roles/llm_router/files', ROOT / 'tests/support'):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import llm_router  # noqa: E402  pylint: disable=wrong-import-position
import router_package  # noqa: E402  pylint: disable=wrong-import-position

if str(ROOT / 'plugins/module_utils') not in llm_router.__path__:
    llm_router.__path__.append(str(ROOT / 'plugins/module_utils'))


@pytest.fixture(scope='session')
def installed_router(tmp_path_factory):
    """A directory holding the package as the role installs it: run ``python -m llm_router`` with
    PYTHONPATH set to it."""
    return router_package.install(tmp_path_factory.mktemp('router-package'))
