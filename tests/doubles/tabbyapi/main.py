"""Test double for TabbyAPI (theroyallab/tabbyAPI), for hosts without a GPU.

It stands in for TabbyAPI's ``main.py`` in the Molecule scenarios of gpufleet.llm, because the real
server needs GPU inference libraries that cannot be installed on the test machines. It reproduces
what the roles and the router depend on, as the real server does it (TabbyAPI's own source;
tests/integration/test_tabbyapi_contract.py runs the same requests against both and fails on any
difference):

* started as ``<venv>/bin/python main.py [--config PATH]`` from its directory; reads ``config.yml``
  (or ``--config``) and ``api_tokens.yml`` from the working directory. Unknown top-level sections
  (for example ``auth:``) are ignored silently, as TabbyAPI does. Without ``api_tokens.yml`` it
  writes one with random keys, as TabbyAPI does.
* the branch it imitates comes from the environment variable ``TABBY_DOUBLE_BRANCH`` or else the
  file ``VERSION`` next to this file: ``exl2-checkpoint``
  (the default) accepts only a string ``api_key`` and exits with the validation error
  ``api_key: Input should be a valid string`` on a list; ``main`` accepts a list of keys and
  re-reads ``api_tokens.yml`` while running.
* without ``developer.unsafe_launch: true`` it refuses to start when no NVIDIA device exists.
* ``network.host``, ``network.port`` (port+1 when busy), ``network.disable_auth``; a configured
  ``model.model_name`` (a directory under ``model.model_dir``) is loaded BEFORE the port is bound.
* endpoints: /health (open), /v1/model, /v1/models, /v1/model/load (streamed), /v1/model/unload,
  /v1/chat/completions and /v1/completions (stream and non-stream, OpenAI shape), with TabbyAPI's
  headers (x-api-key / x-admin-key / Authorization: Bearer) and 401 bodies.

* it logs through loguru as TabbyAPI does: the API key and the admin key at every start, to the console
  and to ``logs/<time>.log`` under the working directory.

Only the Python standard library, PyYAML and loguru are used.
"""

import argparse
import json
import os
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from loguru import logger

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("network", "logging", "model", "draft_model", "lora", "embeddings", "sampling", "developer")
LOAD_SECONDS = float(os.environ.get("TABBY_DOUBLE_LOAD_SECONDS", "1"))


def branch():
    if os.environ.get("TABBY_DOUBLE_BRANCH"):
        return os.environ["TABBY_DOUBLE_BRANCH"]
    try:
        with open(os.path.join(HERE, "VERSION"), encoding="utf-8") as handle:
            return handle.read().strip() or "exl2-checkpoint"
    except OSError:
        return "exl2-checkpoint"


class Tokens:
    """api_tokens.yml as TabbyAPI reads it (re-read while running on the main branch)."""

    def __init__(self, path, live):
        self.path = path
        self.live = live
        self.mtime = None
        self.api_keys = []
        self.admin_key = None
        self.lock = threading.Lock()
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as handle:
                yaml.safe_dump({"api_key": secrets.token_hex(16), "admin_key": secrets.token_hex(16)}, handle)
        self.load(startup=True)

    def load(self, startup=False):
        with open(self.path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        api_key = data.get("api_key")
        admin_key = data.get("admin_key")
        if isinstance(api_key, list) and self.live:
            keys = [str(k) for k in api_key]
        elif isinstance(api_key, str):
            keys = [api_key]
        else:
            message = ("1 validation error for AuthKeys\napi_key\n  Input should be a valid string "
                       "[type=string_type, input_value=%r, input_type=%s]"
                       % ("<redacted>", type(api_key).__name__))
            if startup:
                sys.stderr.write(message + "\n")
                sys.exit(1)
            return
        self.api_keys = keys
        self.admin_key = str(admin_key) if admin_key is not None else None
        self.mtime = os.stat(self.path).st_mtime_ns

    def current(self):
        if self.live:
            with self.lock:
                try:
                    if os.stat(self.path).st_mtime_ns != self.mtime:
                        self.load()
                except OSError:
                    pass
        return self.api_keys, self.admin_key


class State:
    def __init__(self, config, tokens):
        net = config.get("network") or {}
        self.model_cfg = config.get("model") or {}
        self.disable_auth = bool(net.get("disable_auth", False))
        self.tokens = tokens
        self.model_dir = self.model_cfg.get("model_dir") or "models"
        self.loaded = None
        self.lock = threading.Lock()

    def models_on_disk(self):
        try:
            return sorted(d for d in os.listdir(self.model_dir) if os.path.isdir(os.path.join(self.model_dir, d)))
        except OSError:
            return []


def model_card(name):
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "tabbyAPI",
            "logging": None, "parameters": {"max_seq_len": 4096, "cache_mode": "FP16"}}


class Handler(BaseHTTPRequestHandler):
    server_version = "uvicorn"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests go to the journal without headers (no keys)
        sys.stdout.write("INFO: %s - %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()

    # --- helpers ---------------------------------------------------------------------------
    def send_json(self, status, data):
        body = json.dumps(data, separators=(",", ":")).encode()   # FastAPI's compact JSON
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def event(self, data):
        payload = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(("data: %s\n\n" % payload).encode())
        self.wfile.flush()

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def bearer(self):
        value = self.headers.get("authorization") or ""
        parts = value.split(" ", 1)
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1].strip()
        return None

    def check_api(self):
        state = self.server.state
        if state.disable_auth:
            return True
        api_keys, admin_key = state.tokens.current()
        given = self.headers.get("x-api-key")
        if given is None:
            given = self.bearer()
        if given is None:
            self.send_json(401, {"detail": "Please provide an API key"})
            return False
        if given in api_keys or (admin_key is not None and given == admin_key):
            return True
        self.send_json(401, {"detail": "Invalid API key"})
        return False

    def check_admin(self):
        state = self.server.state
        if state.disable_auth:
            return True
        admin_key = state.tokens.current()[1]
        given = self.headers.get("x-admin-key")
        if given is None:
            given = self.bearer()
        if given is None:
            self.send_json(401, {"detail": "Please provide an admin key"})
            return False
        if admin_key is not None and given == admin_key:
            return True
        self.send_json(401, {"detail": "Invalid admin key"})
        return False

    def is_admin(self):
        admin_key = self.server.state.tokens.current()[1]
        given = self.headers.get("x-admin-key") or self.headers.get("x-api-key") or self.bearer()
        return self.server.state.disable_auth or (admin_key is not None and given == admin_key)

    # --- routes ----------------------------------------------------------------------------
    def do_GET(self):
        state = self.server.state
        path = self.path.split("?", 1)[0]
        if path == "/health":
            return self.send_json(200, {"status": "healthy", "issues": []})
        if path == "/v1/model":
            if not self.check_api():
                return None
            if state.loaded is None:
                return self.send_json(503, {"detail": "No models are currently loaded."})
            return self.send_json(200, model_card(state.loaded))
        if path == "/v1/models":
            if not self.check_api():
                return None
            names = state.models_on_disk() if self.is_admin() else ([state.loaded] if state.loaded else [])
            return self.send_json(200, {"object": "list", "data": [model_card(n) for n in names]})
        return self.send_json(404, {"detail": "Not Found"})

    def do_POST(self):
        state = self.server.state
        path = self.path.split("?", 1)[0]
        body = self.read_body()  # always drain the body: keep-alive connections stay in sync
        if path == "/v1/model/load":
            if not self.check_admin():
                return None
            body = body or {}
            name = body.get("model_name") or body.get("name")
            if not name or name not in state.models_on_disk():
                return self.send_json(400, {"detail": "Could not find the model path for load. "
                                                      "Check model name or config.yml?"})
            with state.lock:
                self.start_stream()
                for done in range(1, 4):
                    time.sleep(LOAD_SECONDS / 3)
                    self.event({"model_type": "model", "module": done, "modules": 3, "status": "processing"})
                state.loaded = name
                self.event({"model_type": "model", "module": 3, "modules": 3, "status": "finished"})
            return None
        if path == "/v1/model/unload":
            if not self.check_admin():
                return None
            if state.loaded is None:
                return self.send_json(503, {"detail": "No models are currently loaded."})
            state.loaded = None
            return self.send_json(200, {})
        if path in ("/v1/chat/completions", "/v1/completions"):
            if not self.check_api():
                return None
            if body is None:
                return self.send_json(422, {"detail": "Invalid JSON body"})
            if state.loaded is None:
                return self.send_json(503, {"detail": "No models are currently loaded."})
            return self.complete(path == "/v1/chat/completions", body)
        return self.send_json(404, {"detail": "Not Found"})

    def complete(self, chat, body):
        state = self.server.state
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        words = ["Hello", " from", " the", " TabbyAPI", " double."]
        kind = "chat.completion" if chat else "text_completion"
        if body.get("stream"):
            self.start_stream()
            for word in words:
                choice = {"index": 0, "finish_reason": None}
                if chat:
                    choice["delta"] = {"role": "assistant", "content": word}
                else:
                    choice["text"] = word
                self.event({"id": ident, "object": kind + (".chunk" if chat else ""), "created": created,
                            "model": state.loaded, "choices": [choice]})
            final = {"index": 0, "finish_reason": "stop"}
            final.update({"delta": {}} if chat else {"text": ""})
            self.event({"id": ident, "object": kind + (".chunk" if chat else ""), "created": created,
                        "model": state.loaded, "choices": [final]})
            self.event("[DONE]")
            return None
        text = "".join(words)
        choice = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
        return self.send_json(200, {"id": ident, "object": kind, "created": created, "model": state.loaded,
                                    "choices": [choice], "usage": usage})


def setup_logger():
    """TabbyAPI's sinks (common/logger.py): the console, and logs/{time}.log under the working
    directory (created at start: a read-only working directory stops the server with
    PermissionError), rotated at 20 MB and kept a week."""
    logger.remove()
    logger.add(sys.stdout, level="INFO", format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level}: {message}")
    logger.add("logs/{time}.log", level="INFO", format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {message}",
               rotation="20 MB", retention="1 week")


def main():
    parser = argparse.ArgumentParser(description="TabbyAPI test double")
    parser.add_argument("--config", default="config.yml")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    args = parser.parse_args()

    config = {}
    if os.path.exists(args.config):
        with open(args.config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    # TabbyAPI reads only its own sections; anything else (e.g. "auth:") is ignored silently.
    config = {k: v for k, v in config.items() if k in SECTIONS}
    net = config.get("network") or {}
    dev = config.get("developer") or {}
    host = args.host or net.get("host", "127.0.0.1")
    port = args.port or int(net.get("port", 5000))

    print("INFO: TabbyAPI double, branch %s" % branch(), flush=True)
    if not dev.get("unsafe_launch") and not os.path.exists("/dev/nvidiactl"):
        sys.stderr.write("ERROR: Unable to find a supported GPU (no CUDA or ROCm device). "
                         "Set developer.unsafe_launch to start anyway.\n")
        sys.exit(1)

    setup_logger()
    tokens = Tokens(os.path.join(os.getcwd(), "api_tokens.yml"), live=branch() == "main")
    state = State(config, tokens)
    if state.disable_auth:
        print("WARNING: Disabling authentication makes your instance vulnerable.", flush=True)
    else:
        # As TabbyAPI does at every start (common/auth.py), to the console and to its log file.
        logger.info("Your API key is: %s\nYour admin key is: %s\nIf these keys get compromised, make sure to "
                    "delete api_tokens.yml and restart the server. Have fun!"
                    % (", ".join(tokens.api_keys), tokens.admin_key))

    name = state.model_cfg.get("model_name")
    if name:
        if name not in state.models_on_disk():
            sys.stderr.write("ERROR: Could not find the model path for load. Check model name or config.yml?\n")
            sys.exit(1)
        print("INFO: Loading model %s" % name, flush=True)
        time.sleep(LOAD_SECONDS)  # the port stays closed while the model loads
        state.loaded = name

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        if err.errno != 98:
            raise
        port += 1  # TabbyAPI silently takes the next port when its port is busy
        server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.state = state
    print("INFO: Uvicorn running on http://%s:%d" % (host, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
