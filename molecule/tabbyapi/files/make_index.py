# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lay a directory of wheels out as two PEP 503 "simple" indexes (a directory per project):

    python3 make_index.py WHEELS OUT

The build backend (setuptools, packaging, wheel) goes to OUT/extra/simple/<project>/, every other
wheel to OUT/simple/<project>/, so an install needs both the index and the extra index.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shutil
import sys

EXTRA = ('setuptools', 'packaging', 'wheel')


def main(wheels, out):
    for name in sorted(os.listdir(wheels)):
        if not name.endswith('.whl'):
            continue
        project = re.sub(r'[-_.]+', '-', name.split('-', 1)[0]).lower()
        where = os.path.join(out, 'extra', 'simple', project) if project in EXTRA else os.path.join(out, 'simple', project)
        if not os.path.isdir(where):
            os.makedirs(where)
        shutil.copy(os.path.join(wheels, name), where)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
