# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metrics: counters and latency histograms, rendered in the Prometheus text format (no dependency)."""

import bisect

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _label(value):
    """A Prometheus label value, escaped."""
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


class Metrics:
    def __init__(self):
        self.requests = {}        # (model, status) -> count
        self.latency = {}         # model -> [bucket counts..., sum, count]
        self.swaps = {}           # (backend, result) -> count
        self.swap_seconds = {}    # backend -> [sum, count]
        self.backend_auth_failures = {}
        self.client_auth_failures = 0
        self.clients_refused = 0      # connections refused over the client cap
        self.unloads = {}             # (backend, model, reason) -> count (idle.py; reason: ttl)

    def observe(self, model, status, seconds):
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(model)
        if h is None:
            h = self.latency[model] = [0] * (len(_BUCKETS) + 3)
        h[bisect.bisect_left(_BUCKETS, seconds)] += 1     # one bucket here; cumulative in render()
        h[-2] += seconds
        h[-1] += 1

    def swap(self, backend, result, seconds):
        self.swaps[(backend, result)] = self.swaps.get((backend, result), 0) + 1
        s = self.swap_seconds.setdefault(backend, [0.0, 0])
        s[0] += seconds
        s[1] += 1

    def unload(self, backend, model, reason):
        key = (backend, model, reason)
        self.unloads[key] = self.unloads.get(key, 0) + 1

    def render(self):
        out = ['# TYPE llm_router_requests_total counter']
        for (m, s), n in sorted(self.requests.items()):
            out.append('llm_router_requests_total{model="%s",status="%s"} %d' % (_label(m), s, n))
        out.append('# TYPE llm_router_request_duration_seconds histogram')
        for m, h in sorted(self.latency.items()):
            below = 0
            for i, b in enumerate(_BUCKETS):
                below += h[i]
                out.append('llm_router_request_duration_seconds_bucket{model="%s",le="%s"} %d' % (_label(m), b, below))
            out.append('llm_router_request_duration_seconds_bucket{model="%s",le="+Inf"} %d' % (_label(m), h[-1]))
            out.append('llm_router_request_duration_seconds_sum{model="%s"} %.6f' % (_label(m), h[-2]))
            out.append('llm_router_request_duration_seconds_count{model="%s"} %d' % (_label(m), h[-1]))
        out.append('# TYPE llm_router_swaps_total counter')
        for (b, r), n in sorted(self.swaps.items()):
            out.append('llm_router_swaps_total{backend="%s",result="%s"} %d' % (_label(b), r, n))
        out.append('# TYPE llm_router_swap_duration_seconds summary')
        for b, (total, n) in sorted(self.swap_seconds.items()):
            out.append('llm_router_swap_duration_seconds_sum{backend="%s"} %.6f' % (_label(b), total))
            out.append('llm_router_swap_duration_seconds_count{backend="%s"} %d' % (_label(b), n))
        out.append('# TYPE llm_router_backend_auth_failures_total counter')
        for b, n in sorted(self.backend_auth_failures.items()):
            out.append('llm_router_backend_auth_failures_total{backend="%s"} %d' % (_label(b), n))
        out.append('# TYPE llm_router_client_auth_failures_total counter')
        out.append('llm_router_client_auth_failures_total %d' % self.client_auth_failures)
        out.append('# TYPE llm_router_client_connections_refused_total counter')
        out.append('llm_router_client_connections_refused_total %d' % self.clients_refused)
        out.append('# TYPE llm_router_unloads_total counter')
        for (b, m, r), n in sorted(self.unloads.items()):
            out.append('llm_router_unloads_total{backend="%s",model="%s",reason="%s"} %d' % (_label(b), _label(m), _label(r), n))
        return '\n'.join(out) + '\n'
