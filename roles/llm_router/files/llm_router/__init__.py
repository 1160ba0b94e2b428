# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpufleet.llm router: one OpenAI-compatible endpoint in front of several inference backends.

Run as ``python -m llm_router --config router.yml [--check | --reload]`` (__main__.py). The
llm_router role copies this package, together with a copy of the collection's
plugins/module_utils/_backend_probe.py, to /opt/llm-router/llm_router/ (docs/router.md).

Read the modules in this order (each fits in one sitting):

1. config.py     the YAML config and the key file -> Config, Backend, Model (or one ConfigError)
2. auth.py       the key a client presents, checked in constant time
3. metrics.py    counters and histograms, Prometheus text format
4. upstream.py   the keep-alive HTTP/1.1 client to the backends (router -> backends)
5. lifecycle.py  the Switchboard: which backend is active, swaps (drain, systemctl stop/start,
                 readiness through _backend_probe), drain and resume for planned maintenance
6. scheduling.py part of the Switchboard: when a swap may close a backend (min_residency), and the
                 systemd start limit a swap clears
7. idle.py       idle unload (ttl: TabbyAPI's model through its admin API, other backends' units
                 stopped) and the preload at start
8. app.py        App, what every handler receives (cfg, metrics, board, idle), the routes, the
                 dispatch, and serve(): listening, signals, the client-timeout sweep, graceful stop
9. proxy.py      the handler that relays a request to its model's backend; the access log
10. endpoints.py the endpoints /v1/models, /health, /metrics
11. admin.py     the admin socket's endpoints (drain, resume, reload) and ``--reload``
12. server.py    the HTTP/1.1 server for clients (clients -> router): Reply, Request, Stream,
                 Connection, limits and client timeouts
13. __main__.py  the command line

app.py imports the handlers and the server; none of them imports app.py (a handler gets the App
as its first argument, a Connection gets it when created), so there is no import cycle.

* Config comes from a YAML file (``--config``); every secret comes from the environment or the
  key file (``key_file``): client keys in ``LLM_ROUTER_CLIENT_API_KEYS`` (comma separated,
  current keys plus grace-window old keys), each backend's key in the variable its ``key_env`` names.
* Request and response bodies pass through byte for byte; answers are relayed as they arrive.
* With ``swap_policy: exclusive`` (default) one backend holds the GPU at a time: a request for a
  model whose backend is not active drains the in-flight requests of the backend(s) it must stop,
  stops them (``systemctl stop``), starts its own (``systemctl start``), loads the model through
  TabbyAPI's admin API when needed, and waits until the backend accepts the router's key. A
  backend a swap made ready serves for ``min_residency`` seconds before a swap may close it.
* Readiness is read by ``_backend_probe`` (a copy in this package), the same code the
  ``gpufleet.llm.wait_for_backend`` module uses.
* Planned maintenance (docs/router.md, "Admin socket"): on a unix socket only (``admin_socket``),
  a backend can be DRAINED (new requests for its models get 503 with Retry-After, in-flight ones
  finish) and RESUMED; ``--reload``, POST /admin/reload or SIGHUP re-read the keys from
  ``key_file`` without dropping a connection.
* Idle unload (``ttl``, ``default_ttl``) and ``preload``: idle.py (docs/router.md, "Idle unload and preload").
"""
