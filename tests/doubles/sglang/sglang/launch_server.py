"""Test double for ``python -m sglang.launch_server``, for hosts without a GPU.

Stands in for SGLang's OpenAI-compatible server in the Molecule scenarios of gpufleet.llm, because
SGLang needs CUDA. Standard library only. What it reproduces (from SGLang's own source):

* ``--model-path P --host H --port 30000 [--api-key K] [--tp N]``; other flags are accepted and ignored.
* keys as ``Authorization: Bearer K`` or ``x-api-key: K``; paths starting ``/health``, ``/ready``,
  ``/metrics`` are public; everything else (``/v1/models`` too) needs the key; a missing or wrong
  key gets 401 ``{"error":"Unauthorized"}``.
* ``/health`` and ``/health_generate`` answer 503 while the "model loads" (``SGLANG_DOUBLE_STARTUP``
  seconds, default 2), then 200.
* minimal ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (stream and non-stream).
"""

import argparse
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PUBLIC = ("/health", "/ready", "/metrics")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stdout.write("[double] %s - %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()

    def send_json(self, status, data, close=False):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def ready(self):
        return time.monotonic() >= self.server.ready_at

    def authorized(self):
        key = self.server.api_key
        if not key:
            return True
        auth = self.headers.get("authorization") or ""
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else self.headers.get("x-api-key")
        return given == key

    def route(self, method):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path.startswith(PUBLIC):
            if path.startswith("/health") and not self.ready():
                return self.send_json(503, {"error": "Server is starting"})
            if path.startswith("/metrics"):
                return self.send_json(200, {})
            return self.send_json(200, {})
        if not self.authorized():
            return self.send_json(401, {"error": "Unauthorized"})
        if not self.ready():
            return self.send_json(503, {"error": "Server is starting"})
        if method == "GET" and path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [
                {"id": self.server.model, "object": "model", "created": int(time.time()), "owned_by": "sglang",
                 "root": self.server.model, "max_model_len": 4096}]})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self.send_json(400, {"error": "invalid JSON"})
            return self.complete(path.endswith("chat/completions"), body)
        return self.send_json(404, {"detail": "Not Found"})

    def complete(self, chat, body):
        ident = uuid.uuid4().hex
        words = ["Hello", " from", " the", " SGLang", " double."]
        model = self.server.model
        if body.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            for word in words + [None]:
                choice = {"index": 0, "finish_reason": "stop" if word is None else None}
                if chat:
                    choice["delta"] = {} if word is None else {"role": "assistant", "content": word}
                else:
                    choice["text"] = word or ""
                chunk = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "choices": [choice]}
                self.wfile.write(("data: %s\n\n" % json.dumps(chunk)).encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            return None
        text = "".join(words)
        choice = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return self.send_json(200, {"id": ident, "object": "chat.completion" if chat else "text_completion",
                                    "created": int(time.time()), "model": model, "choices": [choice],
                                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--api-key")
    parser.add_argument("--tp", "--tp-size", "--tensor-parallel-size", type=int, default=1, dest="tp")
    args, ignored = parser.parse_known_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.api_key = args.api_key
    server.model = args.served_model_name or args.model_path
    server.ready_at = time.monotonic() + float(os.environ.get("SGLANG_DOUBLE_STARTUP", "2"))
    print("[double] sglang launch_server model=%s tp=%d on %s:%d ignored=%s"
          % (server.model, args.tp, args.host, args.port, " ".join(ignored)), flush=True)
    # As SGLang does at every start (sglang/srt/entrypoints/engine.py: logger.info(f"{server_args=}")):
    # the dataclass repr, the API key included, on stderr.
    print("[%s] server_args=ServerArgs(model_path=%r, host=%r, port=%d, api_key=%r, tp_size=%d)"
          % (time.strftime("%Y-%m-%d %H:%M:%S"), args.model_path, args.host, args.port, args.api_key, args.tp),
          file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
