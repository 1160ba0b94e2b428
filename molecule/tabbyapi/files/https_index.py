# -*- coding: utf-8 -*-
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serve a directory over HTTPS on 127.0.0.1, logging every request to stderr (the journal).

    python3 https_index.py ROOT CERT KEY PORT

Used by the tabbyapi Molecule scenario as a PEP 503 "simple" package index on the test host: a
directory per project whose listing links the project's files is exactly what pip reads from an
index. The certificate is signed by a test CA that only pip's `cert` setting trusts, as on a host
behind a TLS-intercepting proxy.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import http.server
import ssl
import sys


def main():
    root, cert, key, port = sys.argv[1:5]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
