# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# router.py does `import _backend_probe`; on a host the role puts a copy next to router.py.
for p in (ROOT / 'plugins/module_utils', ROOT / 'roles/llm_router/files'):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
