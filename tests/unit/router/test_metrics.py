# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Counters and histograms in the Prometheus text format (llm_router/metrics.py)."""

from llm_router import metrics


def test_metrics_render_prometheus_text():
    m = metrics.Metrics()
    m.observe('qwen', 200, 0.003)
    m.observe('qwen', 200, 0.2)
    m.observe('a"b', 502, 1.5)
    m.swap('tabby', 'ok', 12.5)
    m.backend_auth_failures['sg'] = 2
    text = m.render()
    assert 'llm_router_requests_total{model="qwen",status="200"} 2' in text
    assert 'llm_router_requests_total{model="a\\"b",status="502"} 1' in text
    assert 'llm_router_request_duration_seconds_bucket{model="qwen",le="0.005"} 1' in text
    assert 'llm_router_request_duration_seconds_bucket{model="qwen",le="0.25"} 2' in text
    assert 'llm_router_request_duration_seconds_bucket{model="qwen",le="+Inf"} 2' in text
    assert 'llm_router_request_duration_seconds_count{model="qwen"} 2' in text
    assert 'llm_router_swaps_total{backend="tabby",result="ok"} 1' in text
    assert 'llm_router_swap_duration_seconds_sum{backend="tabby"} 12.500000' in text
    assert 'llm_router_backend_auth_failures_total{backend="sg"} 2' in text
    for line in text.splitlines():
        assert line.startswith('#') or line.startswith('llm_router_')
