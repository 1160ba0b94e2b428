#!/usr/bin/python3
# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for llama-server (standard library only) used by the security suite when the real,
cached build (tests/tools/build-llama-server.sh) is not available: the llamacpp role copies it to the
host as its llama-server. It takes llama-server's arguments and answers as docs/backends.md says:
/health, /v1/health, /models and /v1/models without a key; /props and completions need a key from
--api-key-file (one per line, "#" lines are comments) as Bearer or X-Api-Key; a wrong key gets
401 {"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}."""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def read_keys(path):
    with open(path, encoding='utf-8') as handle:
        return [line.rstrip('\n') for line in handle if line.strip() and not line.startswith('#')]


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        sys.stdout.write('request %s\n' % self.path)      # never headers: they carry the key

    def send_json(self, status, data):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        auth = self.headers.get('Authorization', '')
        key = auth[7:].strip() if auth.lower().startswith('bearer ') else self.headers.get('X-Api-Key', '')
        if key and key in read_keys(self.server.key_file):
            return True
        self.send_json(401, {'error': {'message': 'Invalid API Key', 'type': 'authentication_error', 'code': 401}})
        return False

    def do_GET(self):  # noqa: N802  pylint: disable=invalid-name
        model = os.path.basename(self.server.model)
        if self.path in ('/health', '/v1/health'):
            self.send_json(200, {'status': 'ok'})
        elif self.path in ('/models', '/v1/models'):
            self.send_json(200, {'object': 'list', 'data': [{'id': model, 'object': 'model'}]})
        elif self.path == '/props':
            if self.authorized():
                self.send_json(200, {'model_path': self.server.model, 'total_slots': 1})
        else:
            self.send_json(404, {'error': {'message': 'File Not Found', 'type': 'not_found_error', 'code': 404}})

    def do_POST(self):  # noqa: N802  pylint: disable=invalid-name
        self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if self.authorized():
            self.send_json(200, {'object': 'chat.completion', 'model': os.path.basename(self.server.model),
                                 'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': 'ok'},
                                              'finish_reason': 'stop'}]})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8080)
    parser.add_argument('--api-key-file', required=True)
    parser.add_argument('-m', '--model', required=True)
    args, _ign = parser.parse_known_args()
    read_keys(args.api_key_file)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.key_file, server.model = args.api_key_file, args.model
    print('main: server is listening on http://%s:%d' % (args.host, args.port), flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
