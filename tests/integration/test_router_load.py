# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router under bounded load on loopback: 200 concurrent clients across model swaps.

The router runs in front of two backend processes without units (tests/doubles/openai_backend.py): a
TabbyAPI double with models a and b (each change of model is a real swap: drain, then
POST /v1/model/load with the admin key) and an SGLang-like double with model s1. Each client sends
a, a, b, b (or s1 four times), so the swaps happen while 200 connections are open. Every request
must get an answer (no dropped connection), success or an error the router documents, served by the
model it asked for; the router's RSS after a second identical round stays within a small margin of
its RSS after the first (warm-up) round.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent / 'router'))

from router_helpers import AUTH, SGLANG_KEY, TABBY_ADMIN_KEY, two_backends  # noqa: E402  pylint: disable=wrong-import-position
from router_helpers import procs  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import

CLIENTS = 200
# Documented in docs/router.md: what a request may get besides success while backends swap.
DOCUMENTED = {502: {'backend_rejected_key', 'backend_error', 'backend_unit_failed'}, 504: {'backend_busy', 'backend_timeout'}}
RSS_MARGIN_KB = 6 * 1024


def rss_kb(pid):
    for line in Path('/proc/%d/status' % pid).read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


def fds(pid):
    return len(list(Path('/proc/%d/fd' % pid).iterdir()))


def settled_fds(pid, seconds=10.0):
    """The router's descriptor count once the closes of the round's connections are processed (on a
    loaded machine the router may read the clients' EOFs a moment after the round ended): the count
    when it has not changed for 0.5 s, or after `seconds`. A leak stays; a late close does not."""
    deadline, last, since = time.monotonic() + seconds, fds(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = fds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


async def client(session, url, plan, results):
    for model, stream in plan:
        body = json.dumps({'model': model, 'messages': [{'role': 'user', 'content': 'hi'}], 'stream': stream})
        try:
            async with session.post(url + '/v1/chat/completions', data=body, headers=AUTH) as r:
                data = await r.read()
                results.append((model, stream, r.status, data))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            results.append((model, stream, None, repr(e).encode()))


async def one_round(url):
    """CLIENTS concurrent clients; a quarter use s1, the rest a, a, b, b (streams on every other client)."""
    results = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                     timeout=timeout) as session:
        plans = []
        for i in range(CLIENTS):
            stream = bool(i % 2)
            plans.append([('s1', stream)] * 4 if i % 4 == 3 else [('a', stream), ('a', stream), ('b', stream), ('b', stream)])
        await asyncio.gather(*(client(session, url, p, results) for p in plans))
    return results


def check_round(results):
    assert len(results) == CLIENTS * 4
    dropped = [r for r in results if r[2] is None]
    assert not dropped, '%d requests got no answer, e.g. %r' % (len(dropped), dropped[0][3][:300])
    counts = {}
    for model, stream, status, data in results:
        counts[status] = counts.get(status, 0) + 1
        if status == 200:
            text = data.decode()
            if stream:
                assert text.rstrip().endswith('data: [DONE]'), text[-200:]
                chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith('data: {')]
                assert chunks and all(c['model'] == model for c in chunks), (model, text[:300])
            else:
                assert json.loads(text)['model'] == model
        else:
            code = json.loads(data)['error']['code']
            assert code in DOCUMENTED.get(status, ()), 'undocumented answer %s %s' % (status, data[:300])
    return counts


def test_200_clients_across_model_swaps(procs):  # noqa: F811  pylint: disable=redefined-outer-name
    double, router = procs
    tabby = double('tabbyapi', admin_key=TABBY_ADMIN_KEY, models='a,b', delay=0.01, load_delay=0.05)
    sg = double('openai', api_keys=[SGLANG_KEY], models='s1', delay=0.01)
    r = router(two_backends(tabby, sg), env=None)
    # the fixture's router logs at DEBUG: one line per request; fine at this count
    started = time.monotonic()
    warm = asyncio.run(one_round(r.url))
    warm_took = time.monotonic() - started
    counts_warm = check_round(warm)
    rss_warm, fds_warm = rss_kb(r.pid), settled_fds(r.pid)
    loads_warm = len(tabby.stats()['loads'])

    started = time.monotonic()
    second = asyncio.run(one_round(r.url))
    second_took = time.monotonic() - started
    counts_second = check_round(second)
    rss_second, fds_second = rss_kb(r.pid), settled_fds(r.pid)
    loads = tabby.stats()['loads']

    print('round 1: %.1f s %s RSS %d kB fds %d; round 2: %.1f s %s RSS %d kB fds %d; loads %d + %d'
          % (warm_took, counts_warm, rss_warm, fds_warm, second_took, counts_second, rss_second, fds_second,
             loads_warm, len(loads) - loads_warm))
    assert counts_warm.get(200) == CLIENTS * 4 and counts_second.get(200) == CLIENTS * 4
    # swaps really happened under load in both rounds, and they alternated a <-> b
    assert loads_warm >= 2 and len(loads) - loads_warm >= 1
    assert all(x != y for x, y in zip(loads, loads[1:]))
    assert rss_second - rss_warm < RSS_MARGIN_KB, 'RSS grew by %d kB' % (rss_second - rss_warm)
    assert fds_second <= fds_warm + 10, 'file descriptors grew from %d to %d' % (fds_warm, fds_second)
    # the router is still healthy and idle
    health = httpx.get(r.url + '/health', headers=AUTH, timeout=10).json()
    assert health['swapping_to'] is None
    assert all(b['in_flight'] == 0 for b in health['backends'].values())
    assert warm_took < 120 and second_took < 120
    log = r.log()
    assert 'Traceback' not in log
