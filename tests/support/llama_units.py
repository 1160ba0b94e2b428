# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real llama-server instances of the tiny model as "units" of the systemctl stand-in
(systemctl_standin.py), and clients that ask the router for models in turn: what the swap
scheduling tests (tests/integration/router/test_router_scheduling.py) and bench/swap_thrash.py share.

The llama-server binary is the one tests/tools/build-llama-server.sh built and cached (`make
llama-server`); the model comes from tests/tools/make-tiny-gguf.py."""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# stop_all: the tests' clean-up of what the stand-in started
from systemctl_standin import stop_all  # noqa: F401  pylint: disable=unused-import

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / 'systemctl_standin.py'


def llama_server():
    built = subprocess.run([str(ROOT / 'tests/tools/build-llama-server.sh')], check=True, capture_output=True,
                           text=True)
    return built.stdout.strip().splitlines()[-1]


def tiny_model(path):
    """The tiny GGUF model of tests/tools/make-tiny-gguf.py at path (made once); returns path."""
    path = Path(path)
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / 'tests/tools/make-tiny-gguf.py'), str(path)], check=True,
                       capture_output=True)
    return path


def make_units(state_dir, ports, key):
    """Units <name>.service of llama-server on 127.0.0.1:<port> (ports: name -> port), all serving
    the tiny model with the key key; returns the router's systemctl setting."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(state_dir / 'tiny.gguf')
    key_file = state_dir / 'api-key'
    key_file.write_text(key + '\n')
    key_file.chmod(0o600)
    binary = llama_server()
    units = {name + '.service': {'argv': [binary, '--host', '127.0.0.1', '--port', str(port), '--model', str(model),
                                          '--ctx-size', '256', '--threads', '1', '--api-key-file', str(key_file)]}
             for name, port in ports.items()}
    (state_dir / 'units.json').write_text(json.dumps(units))
    return [sys.executable, str(STANDIN), str(state_dir)]


def starts(state_dir):
    """How many times each unit was started (calls.log of the stand-in)."""
    counts = {}
    path = Path(state_dir) / 'calls.log'
    for line in path.read_text().splitlines() if path.exists() else ():
        dummy, verb, unit = line.split()
        if verb == 'start':
            counts[unit] = counts.get(unit, 0) + 1
    return counts


def chat(url, key, model, timeout=120):
    """(status, seconds, error code or None) of one chat completion through the router."""
    body = json.dumps({'model': model, 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 2}).encode()
    req = urllib.request.Request(url + '/v1/chat/completions', data=body, method='POST', headers={
        'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            answer.read()
            return answer.status, time.monotonic() - t0, None
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - t0, json.loads(e.read() or b'{}').get('error', {}).get('code')


def clients_in_turn(url, key, models, seconds):
    """One client per model, each sending its next request as soon as the last one was answered, for
    seconds. Returns {model: [(status, seconds, code), ...]}."""
    results = {m: [] for m in models}
    end = time.monotonic() + seconds

    def client(model):
        while time.monotonic() < end:
            results[model].append(chat(url, key, model))

    threads = [threading.Thread(target=client, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def swaps_total(url, key):
    """Successful swaps the router counted (llm_router_swaps_total{result="ok"})."""
    req = urllib.request.Request(url + '/metrics', headers={'Authorization': 'Bearer ' + key})
    with urllib.request.urlopen(req, timeout=10) as answer:
        text = answer.read().decode()
    return sum(int(float(line.rsplit(' ', 1)[1])) for line in text.splitlines()
               if line.startswith('llm_router_swaps_total{') and 'result="ok"' in line)
