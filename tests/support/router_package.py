# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router package laid out as the llm_router role installs it (roles/llm_router/tasks/install.yml):
DEST/llm_router/ holds the modules of roles/llm_router/files/llm_router/ and a copy of the
collection's plugins/module_utils/_backend_probe.py. Run it as
``python -m llm_router --config PATH`` with PYTHONPATH=DEST."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / 'roles/llm_router/files/llm_router'
PROBE = ROOT / 'plugins/module_utils/_backend_probe.py'


def install(dest, source=SOURCE, probe=PROBE):
    """Copy the package's modules and _backend_probe.py to dest/llm_router/ (replacing what was
    there); return dest, the directory to put on PYTHONPATH."""
    dest = Path(dest)
    package = dest / 'llm_router'
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for module in sorted(Path(source).glob('*.py')):
        shutil.copy(module, package)
    if not (package / '_backend_probe.py').exists():
        shutil.copy(probe, package)
    return dest
