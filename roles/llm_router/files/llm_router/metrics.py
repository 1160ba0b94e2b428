# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metrics: counters and latency histograms, rendered in the Prometheus text format (no dependency),
and the token counts of an answer read from its OpenAI ``usage`` object (usage_tokens).

Labels: ``model`` is a configured model name ('(unknown)' for any other), ``key`` the name of the
client key that was accepted ('-' when the router has none), ``backend`` a configured backend:
all bounded by the config, never by what a client sends. The histograms are by model only (each is
17 series per label set; by key too they would multiply by the number of keys). No key value is
ever a label: only the key's name."""

import bisect
import json

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_USAGE = b'"usage"'
WINDOW = 16384                   # bytes searched for "usage": a stream's tail, a whole answer's head and tail
_DECODER = json.JSONDecoder()

# name -> (type, help); render() writes them in this order.
FAMILIES = {
    'llm_router_requests_total': ('counter', 'Proxied requests by model, client key name and status.'),
    'llm_router_request_duration_seconds': ('histogram', 'Proxied requests, from arrival to the end of the answer, by model.'),
    'llm_router_time_to_first_byte_seconds': (
        'histogram', 'Answers relayed from a backend, from the request\'s arrival to the first byte of the answer\'s body '
        'written to the client (a stream: its first chunk), by model.'),
    'llm_router_tokens_total': ('counter', 'Tokens the backend reported in the answer\'s usage object, by model, '
                                'client key name and type (prompt, completion).'),
    'llm_router_swaps_total': ('counter', 'Swaps by backend, the model that caused them, and result.'),
    'llm_router_swap_duration_seconds': ('summary', 'Time swaps took, by backend.'),
    'llm_router_unloads_total': ('counter', 'Backends or models unloaded, by backend, model and reason.'),
    'llm_router_backend_auth_failures_total': ('counter', 'Backends that refused the router\'s key, by backend.'),
    'llm_router_client_auth_failures_total': ('counter', 'Requests refused for a missing or wrong client key.'),
    'llm_router_client_connections_refused_total': ('counter', 'Client connections refused over the connection cap.'),
}


def _label(value):
    """A Prometheus label value, escaped."""
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tokens_at(data, i):
    """(prompt, completion) of the object after the "usage" key at data[i], or None."""
    text = data[i + len(_USAGE):i + len(_USAGE) + 2048].decode('utf-8', 'replace').lstrip()
    if not text.startswith(':'):
        return None                  # a string "usage", not a key
    try:
        usage = _DECODER.raw_decode(text[1:].lstrip())[0]
    except ValueError:               # not JSON, or longer than the window
        return None
    if not isinstance(usage, dict):
        return None                  # "usage": null (a chunk before the last one)
    prompt, completion = _count(usage.get('prompt_tokens', 0)), _count(usage.get('completion_tokens', 0))
    if prompt is None or completion is None or ('prompt_tokens' not in usage and 'completion_tokens' not in usage):
        return None
    return prompt, completion


def usage_tokens(body=None, tail=()):
    """(prompt_tokens, completion_tokens) from the OpenAI usage object of an answer, or None.
    body: a whole answer (searched in its first and last WINDOW bytes: usage comes last in OpenAI's
    answers, before the data in llama-server's embeddings); tail: a stream's last pieces, oldest
    first (searched in their last WINDOW bytes: the usage chunk is the last event before [DONE]).
    The last "usage" key found counts. Bounded work, whatever the answer's size."""
    if body is None:
        body = b''.join([piece[-WINDOW:] for piece in tail])[-WINDOW:]
    i = body.rfind(_USAGE, max(0, len(body) - WINDOW))
    if i < 0 and len(body) > WINDOW:
        i = body.rfind(_USAGE, 0, WINDOW + len(_USAGE))
    return None if i < 0 else _tokens_at(body, i)


class Metrics:
    def __init__(self):
        self.requests = {}        # (model, key name, status) -> count
        self.latency = {}         # model -> [bucket counts..., sum, count]
        self.first_bytes = {}     # model -> [bucket counts..., sum, count]
        self.tokens = {}          # (model, key name) -> [prompt, completion]
        self.swaps = {}           # (backend, model, result) -> count
        self.swap_seconds = {}    # backend -> [sum, count]
        self.unloads = {}         # (backend, model, reason) -> count
        self.backend_auth_failures = {}
        self.client_auth_failures = 0
        self.clients_refused = 0      # connections refused over the client cap

    @staticmethod
    def _histogram(table, model, seconds):
        h = table.get(model)
        if h is None:
            h = table[model] = [0] * (len(_BUCKETS) + 3)
        h[bisect.bisect_left(_BUCKETS, seconds)] += 1     # one bucket here; cumulative in render()
        h[-2] += seconds
        h[-1] += 1

    def observe(self, model, status, seconds, key=''):
        """A proxied request ended: status, seconds since its arrival, the name of its client key."""
        k = (model, key, status)
        self.requests[k] = self.requests.get(k, 0) + 1
        self._histogram(self.latency, model, seconds)

    def first_byte(self, model, seconds):
        """The first byte of a relayed answer's body went to the client, seconds after the request arrived."""
        self._histogram(self.first_bytes, model, seconds)

    def usage(self, model, key, tokens):
        """tokens: (prompt, completion) from usage_tokens(), or None (nothing counted)."""
        if tokens is not None:
            t = self.tokens.get((model, key))
            if t is None:
                t = self.tokens[(model, key)] = [0, 0]
            t[0] += tokens[0]
            t[1] += tokens[1]

    def swap(self, backend, result, seconds, model=''):
        """A swap to backend ended (result: ok, error, drained, overloaded); model: the one that caused it."""
        k = (backend, model, result)
        self.swaps[k] = self.swaps.get(k, 0) + 1
        s = self.swap_seconds.setdefault(backend, [0.0, 0])
        s[0] += seconds
        s[1] += 1

    def unload(self, backend, model, reason):
        """A backend (or its model) was unloaded: names, and why (e.g. idle)."""
        k = (backend, model, reason)
        self.unloads[k] = self.unloads.get(k, 0) + 1

    def render(self):
        out = []

        def family(name):
            kind, text = FAMILIES[name]
            out.append('# HELP %s %s' % (name, text))
            out.append('# TYPE %s %s' % (name, kind))

        def histogram(name, table):
            family(name)
            for m, h in sorted(table.items()):
                m = _label(m)
                below = 0
                for i, b in enumerate(_BUCKETS):
                    below += h[i]
                    out.append('%s_bucket{model="%s",le="%s"} %d' % (name, m, b, below))
                out.append('%s_bucket{model="%s",le="+Inf"} %d' % (name, m, h[-1]))
                out.append('%s_sum{model="%s"} %.6f' % (name, m, h[-2]))
                out.append('%s_count{model="%s"} %d' % (name, m, h[-1]))

        family('llm_router_requests_total')
        for (m, k, s), n in sorted(self.requests.items()):
            out.append('llm_router_requests_total{model="%s",key="%s",status="%s"} %d' % (_label(m), _label(k or '-'), s, n))
        histogram('llm_router_request_duration_seconds', self.latency)
        histogram('llm_router_time_to_first_byte_seconds', self.first_bytes)
        family('llm_router_tokens_total')
        for (m, k), counts in sorted(self.tokens.items()):
            for kind, n in zip(('prompt', 'completion'), counts):
                out.append('llm_router_tokens_total{model="%s",key="%s",type="%s"} %d' % (_label(m), _label(k or '-'), kind, n))
        family('llm_router_swaps_total')
        for (b, m, r), n in sorted(self.swaps.items()):
            out.append('llm_router_swaps_total{backend="%s",model="%s",result="%s"} %d' % (_label(b), _label(m), r, n))
        family('llm_router_swap_duration_seconds')
        for b, (total, n) in sorted(self.swap_seconds.items()):
            out.append('llm_router_swap_duration_seconds_sum{backend="%s"} %.6f' % (_label(b), total))
            out.append('llm_router_swap_duration_seconds_count{backend="%s"} %d' % (_label(b), n))
        family('llm_router_unloads_total')
        for (b, m, r), n in sorted(self.unloads.items()):
            out.append('llm_router_unloads_total{backend="%s",model="%s",reason="%s"} %d' % (_label(b), _label(m), _label(r), n))
        family('llm_router_backend_auth_failures_total')
        for b, n in sorted(self.backend_auth_failures.items()):
            out.append('llm_router_backend_auth_failures_total{backend="%s"} %d' % (_label(b), n))
        family('llm_router_client_auth_failures_total')
        out.append('llm_router_client_auth_failures_total %d' % self.client_auth_failures)
        family('llm_router_client_connections_refused_total')
        out.append('llm_router_client_connections_refused_total %d' % self.clients_refused)
        return '\n'.join(out) + '\n'
