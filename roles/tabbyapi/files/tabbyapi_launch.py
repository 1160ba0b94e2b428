# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starts TabbyAPI (main.py of the working directory) with its key values masked in its own logger.

    <TabbyAPI venv>/bin/python /usr/local/lib/gpufleet/tabbyapi_launch.py --config /opt/tabbyapi/config.yml

TabbyAPI logs through loguru to the console and to files (logs/<time>.log under its working
directory), and at every start it logs its API key and admin key. tabbyapi.service runs this file
under gpufleet_mask.py (which masks the console output on its way to journald); this file masks the
messages themselves before any loguru sink sees them, so the log files hold no key either. The key
values come from api_tokens.yml in the working directory, read again when it changes (TabbyAPI's
main branch reloads it while running), and every value once seen stays masked.
"""
import os
import runpy
import sys

from gpufleet_mask import Secrets  # next to this file (/usr/local/lib/gpufleet)


def main():
    secrets = Secrets([os.path.abspath('api_tokens.yml')])
    from loguru import logger  # pylint: disable=import-outside-toplevel  # TabbyAPI's venv has it

    def mask(record):
        record['message'] = secrets.mask(record['message'].encode('utf-8', 'surrogateescape')).decode(
            'utf-8', 'surrogateescape')
    # A patcher set with configure() stays when TabbyAPI's setup_logger() replaces the sinks.
    logger.configure(patcher=mask)
    sys.argv = [os.path.abspath('main.py')] + sys.argv[1:]
    sys.path.insert(0, os.getcwd())
    runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
    main()
