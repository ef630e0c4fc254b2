#!/usr/bin/env python3
"""Side-by-side throughput/latency/CPU benchmark of keygate against Envoy's own filters.

    python3 tests/bench/bench.py [--rounds 3] [--seconds 5] [--connections 32] [--quick]

Method
------
* One Envoy process (``--concurrency 1``, pinned to CPU 0 with ``taskset``) serves every variant,
  each on its own listener (port chosen by Envoy, read back from the admin API), so all variants
  share one binary, one config and one warm process.
* The "upstream" of every variant is a ``direct_response`` route (200, ``ok\\n``) in that
  listener's own route table: the HTTP connection manager, the filter chain and the router run
  as usual, but no second hop is made. The upstream therefore costs the same for every variant
  and nothing outside CPU 0, and the ratios isolate the cost of the filters. (Ratios against a
  proxied upstream would be closer to 1, because the baseline would then do more work.)
* Variants: ``router`` (HCM + router, the baseline), ``native`` (``api_key_auth`` +
  ``local_ratelimit`` with x-ratelimit headers: the nearest native equivalent of keygate),
  ``ext_authz`` (HTTP ext_authz to a second Envoy answering 200 with ``direct_response``, pinned to
  CPU 1 next to wrk; its CPU is not counted), ``noop_wasm`` (a Rust proxy-wasm 0.2.5 filter that
  implements nothing: ``tests/bench/noop-filter``), ``floor_keygate`` (a module making exactly the
  host calls of keygate's cached ``X-API-Key`` path with constant data and no logic: the floor
  under ``kg_header``), ``floor_reference`` (the "reference filter" of issue #6: all headers
  once, one shared-data get and CAS set, three response headers; both ``tests/bench/floor-filter``)
  and the keygate scenarios of
  ``KEYGATE_SCENARIOS`` (all the same ``keygate.wasm``, one listener each; scenarios with the same
  configuration share one VM, each other configuration gets a VM of its own).
* The ``kg_remote_*`` scenarios verify keys with the key service
  (``envoy/keyservice``, Rust + SQLite, built with ``cargo build --release -p keyservice``; its
  call counters are read from its ``/metrics``), started on a free loopback port and pinned
  to CPU 1 like the authorizer (its CPU is not counted) when a selected scenario needs it. The
  verify calls it answers during each timed run and keygate's key-service failure counters are
  recorded, so a "cache hit" scenario that calls the service, or 503s counted as expected
  non-2xx, show up in the table.
* Load: ``wrk -t1 -c<connections> --latency`` pinned to CPU 1, keep-alive connections. Each run
  is a short warm-up (discarded) and then a timed run of ``--seconds``. Variants are interleaved
  (A B C ... A B C) over ``--rounds`` rounds, so slow drift of the machine hits every variant,
  and within a round ``router`` runs again after every ``BRACKET`` (3) variants
  (R A B C R D E F R ...): each variant is compared with the two router runs around it, seconds
  away rather than a round's minutes (this machine's speed wanders by ±10% over minutes).
* Per run: requests/s, p50 and p99 latency (wrk's latency distribution), non-2xx/3xx and socket
  errors, and Envoy CPU time per request: utime+stime of the Envoy process (all threads) from
  ``/proc/<pid>/stat`` before and after the timed run, divided by the requests wrk completed.
  (The kernel charges the loopback TCP softirq work to the task it interrupts, so this includes
  most of Envoy's share of the network stack.) ``/proc/stat`` is read too, to check that CPU 0
  was saturated (else the run was client-bound) and that nothing else ran on it. Such a
  "disturbed" run is measured again after the rounds (``--retries``, bounded), the less
  disturbed attempt is kept, and variants with disturbed runs left are flagged in the table.
* Summary: per variant, the median over rounds of rps, p50, p99 and CPU/request, and the median
  of the per-round ratios to the mean of the router runs bracketing it (the router row: the
  median of its runs in the round).
* Before the timed rounds every variant is checked once with urllib (status, and the rate-limit
  headers where they are expected); a misconfigured variant aborts the run.

Outputs a markdown table on stdout and the raw per-round results in ``tests/bench/last-run.json``.
The generated Envoy configs and logs are left in ``tests/bench/.run/`` for inspection.
All traffic goes to 127.0.0.1. Every process started here is stopped on exit, error or Ctrl-C.

Adding a keygate scenario: append a dict to ``KEYGATE_SCENARIOS`` (see the comment there); a
scenario may bring its own keygate configuration, extra Envoy clusters, keys to create in the
key service, and a wrk Lua script when one fixed request is not enough.
"""
from __future__ import annotations

import argparse
import base64
import copy
import fcntl
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "tests" / "bench"
RUN_DIR = BENCH_DIR / ".run"
RESULTS_JSON = BENCH_DIR / "last-run.json"
KEYGATE_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate.wasm"
NOOP_MANIFEST = BENCH_DIR / "noop-filter" / "Cargo.toml"
NOOP_WASM = BENCH_DIR / "noop-filter" / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
FLOOR_MANIFEST = BENCH_DIR / "floor-filter" / "Cargo.toml"
FLOOR_WASM = BENCH_DIR / "floor-filter" / "target" / "wasm32-wasip1" / "release" / "floor_filter.wasm"
# the key service (envoy/keyservice); its call counters are at /metrics
KEYSERVICE_BIN = ROOT / "target" / "release" / "keyservice"
RANDOM_KEY_LUA = BENCH_DIR / "random-key.lua"
# Envoy loads copies, so a rebuild during the run cannot change what is measured.
# keygate's excerpt filter (envoy/excerpt): body excerpts for the request history
EXCERPT_WASM = ROOT / "target" / "excerpt" / "wasm32-wasip1" / "release" / "keygate_excerpt.wasm"
STAGED = {KEYGATE_WASM: RUN_DIR / "keygate.wasm", NOOP_WASM: RUN_DIR / "noop_filter.wasm",
          FLOOR_WASM: RUN_DIR / "floor_filter.wasm", EXCERPT_WASM: RUN_DIR / "keygate_excerpt.wasm"}

ENVOY_CPU = "0"  # the Envoy under test
BRACKET = 3  # variants between two router runs in a round
CLIENT_CPU = "1"  # wrk, the ext_authz authorizer and the key service

# --------------------------------------------------------------------------------------------
# Keys, keygate configuration and scenarios
# --------------------------------------------------------------------------------------------

BENCH_KEY = "bench-key-0001"  # plan "big": allowed, the bucket and headers are exercised
BASIC_KEY = "bench-key-basic"  # the same, as user alice's Basic password (a key with a `user` is that only)
LIMITED_KEY = "bench-key-limited"  # plan "tiny": 1 request a day, then always 429
UNKNOWN_KEY = "bench-key-unknown"  # not in the store: 401
REMOTE_KEY = "kg_bench_remote_0001"  # created in the key service at start (plan "big")
REMOTE_UNKNOWN_KEY = "kg_bench_remote_unknown"  # not in the key service: NOT_FOUND, 401


def sha256_hex(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


KEYGATE_CONFIG = {
    "keys": [
        {"id": "bench", "sha256": sha256_hex(BENCH_KEY), "account": "acme", "plan": "big"},
        {"id": "basic", "sha256": sha256_hex(BASIC_KEY), "user": "alice", "account": "acme", "plan": "big"},
        {"id": "slow", "sha256": sha256_hex(LIMITED_KEY), "account": "acme", "plan": "tiny"},
    ],
    "rate_limit": {
        "plans": {
            "big": {"requests": 1_000_000_000, "window_s": 1},
            "tiny": {"requests": 1, "window_s": 86_400},
        }
    },
}

RATELIMIT_HEADERS = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]

# Operator options that drop per-request host calls (envoy/config-reference.md).
MIN_CONFIG = {
    **KEYGATE_CONFIG,
    "identity_headers": {"subject": False, "account": False, "plan": False, "scopes": False},
    "access_log_state": False,
}
LEAN_CONFIG = {**MIN_CONFIG, "rate_limit": {**KEYGATE_CONFIG["rate_limit"], "headers": False}}

# Rolling windows (plans with "algorithm": "rolling_window"): N = 1,000 per second, under its
# limit at the sequential rate of instructions.py (Envoy under callgrind serves a few hundred a
# second), and N = 100 per day, over it after 100 requests (the 429 path).
ROLLING_KEY, ROLLING_LIMITED_KEY = "bench-key-rolling", "bench-key-rolling-limited"
ROLLING_CONFIG = {
    "keys": [
        {"id": "rolling", "sha256": sha256_hex(ROLLING_KEY), "account": "acme", "plan": "roll1000"},
        {"id": "rolling-limited", "sha256": sha256_hex(ROLLING_LIMITED_KEY), "account": "acme", "plan": "roll100"},
    ],
    "rate_limit": {"plans": {
        "roll1000": {"requests": 1000, "window_s": 1, "algorithm": "rolling_window"},
        "roll100": {"requests": 100, "window_s": 86_400, "algorithm": "rolling_window"},
    }},
}

KEYSERVICE_CLUSTER = "keyservice"  # the Envoy cluster of the key service (its port is known at start)

# No embedded keys: every key is verified by the key service, then cached. Default TTLs (the
# service's own cache_ttl_s, 60 s valid / 10 s refused, shortens them).
REMOTE_CONFIG = {
    "key_service": {"cluster": KEYSERVICE_CLUSTER, "revocation_poll_ms": 1000},
    "rate_limit": KEYGATE_CONFIG["rate_limit"],
}
# Refused keys at full speed: the failed-auth throttle would answer 429 after 100 failures.
REMOTE_CONFIG_NO_THROTTLE = {**REMOTE_CONFIG, "auth_throttle": False}

# Fleet-wide limits (issue #15) on the test rate-limit engine (tests/rls-engine: Envoy's rate-limit
# service API over the `limitador` crate), run on the client CPU. Its limit is never reached here.
RLS_ENGINE = ROOT / "target" / "rls-engine" / "release" / "rls-engine"
RLS_CLUSTER = "ratelimit"
RLS_LIMITS = """
- namespace: keygate
  max_value: 2000000000
  seconds: 3600
  conditions: ["descriptors[0].plan == 'big'"]
  variables: ["descriptors[0].key_id"]
- namespace: native
  max_value: 2000000000
  seconds: 3600
  conditions: ["descriptors[0].key_id == 'bench'"]
  variables: ["descriptors[0].key_id"]
"""
FLEET_LEASED_CONFIG = {**KEYGATE_CONFIG, "fleet": {"cluster": RLS_CLUSTER, "plans": {"big": "leased"},
                                                   "lease": {"max": 100, "percent": 10}}}
FLEET_REQUEST_CONFIG = {**KEYGATE_CONFIG, "fleet": {"cluster": RLS_CLUSTER, "plans": {"big": "request"}}}

# The key service's record of REMOTE_KEY (body of its POST /admin/keys).
REMOTE_KEY_RECORD = {"key": REMOTE_KEY, "id": "bench_remote", "kind": "business", "account": "acme",
                     "plan": "big", "user": None, "scopes": ["read"], "expires_at": None, "ratelimit": None,
                     "resources": {}}


def random_key_headers() -> dict:
    """What random-key.lua sends: a key nobody has, so every request is a cache miss."""
    return {"X-API-Key": f"kg_rand_{secrets.randbelow(10**18)}"}


# Request history (envoy/docs/history.md): Envoy's OpenTelemetry access logger sending OTLP/HTTP
# to the key service, with the attributes the shipped configs set; and, for comparison, a plain
# file access log of the same fields.
HISTORY_ATTRIBUTES = [
    ("http.request.method", "%REQ(:METHOD)%"),
    ("url.path", "%PATH(NQ)%"),
    ("http.response.status_code", "%RESPONSE_CODE%"),
    ("keygate.duration_ms", "%DURATION%"),
    ("keygate.upstream_ms", "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%"),
    ("http.request.body.size", "%BYTES_RECEIVED%"),
    ("http.response.body.size", "%BYTES_SENT%"),
    ("keygate.request_id", "%REQ(X-REQUEST-ID)%"),
    ("keygate", "%FILTER_STATE(wasm.keygate:PLAIN)%"),
]
BODIES_ATTRIBUTE = ("keygate.bodies", "%FILTER_STATE(wasm.keygate_bodies:PLAIN)%")
SHIPPED_BUFFER = 64 << 10  # the shipped loggers' buffer_size_bytes
# What the shipped configs send: the same fields as one body line, keygate's state first (one
# formatter instead of one per attribute)
HISTORY_LINE = ("%FILTER_STATE(wasm.keygate:PLAIN)% method=%REQ(:METHOD)% status=%RESPONSE_CODE% "
                "duration_ms=%DURATION% upstream_ms=%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)% "
                "bytes_in=%BYTES_RECEIVED% bytes_out=%BYTES_SENT%")
# The excerpt filter as Astalty's profile configures it (the first 4 KiB of each body, redacted),
# and the body the bodies variants POST (a JSON record of ~1 KiB with a field it redacts).
EXCERPT_CONFIG = {"max_bytes": 4096, "credentials": {"api_key_headers": ["X-API-Key"], "query_param": "_apikey"},
                  "redact_fields": ["date_of_birth", "medicare_number", "phone"]}
BODY_JSON = json.dumps({"first_name": "Ada", "last_name": "Lovelace", "phone": "0400 000 000",
                        "notes": "x" * 900, "tags": ["a", "b", "c"]}).encode()


def otel_access_log(attributes: list[tuple[str, str]], body: str | None = None, buffer: int | None = None,
                    flush_s: int | None = None) -> list[dict]:
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "http_service": {"http_uri": {"uri": "http://keyservice/v1/logs", "cluster": KEYSERVICE_CLUSTER,
                                      "timeout": "1s"}},
    }
    if attributes:
        cfg["attributes"] = {"values": [{"key": k, "value": {"string_value": v}} for k, v in attributes]}
    if body:
        cfg["body"] = {"string_value": body}
    if buffer:
        cfg["buffer_size_bytes"] = buffer
    if flush_s:
        cfg["buffer_flush_interval"] = f"{flush_s}s"
    return [{"name": "envoy.access_loggers.open_telemetry", "typed_config": cfg}]


def file_access_log() -> list[dict]:
    fmt = " ".join(f"{k}={v}" for k, v in HISTORY_ATTRIBUTES) + "\n"
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(RUN_DIR / "access.log"),
            "log_format": {"text_format_source": {"inline_string": fmt}},
        },
    }]


# One dict per keygate scenario, each served on its own listener. Fields:
#   name      variant name (table row)
#   headers   request headers sent by wrk and by the sanity check
#   path      request path (with query string), default "/bench"
#   expect    HTTP status every request should get once `prime` requests were sent (default 200)
#   prime     requests sent before the sanity check to reach the steady state (default 0)
#   expect_headers  response headers the sanity check requires (lower-case names)
#   config    keygate configuration for this listener (default KEYGATE_CONFIG); each distinct
#             configuration gets its own VM (vm_id `keygate` for the default, `keygate-<hash>`
#             else; each VM has its own shared data). Not one VM with several plugins: keygate
#             then finds a stream's plugin by `plugin_name` (a host call per request), and with
#             the same name every listener of the VM would get the last configured plugin.
#   clusters  extra static Envoy clusters this scenario needs
#   keyservice  key records (POST /admin/keys bodies) this scenario needs in the key service;
#             [] or more: the key service runs and the cluster KEYSERVICE_CLUSTER points at it.
#             Envoy must be up ~1 s before priming: keygate caches no verdict until its first
#             revocation-feed poll has answered.
#   keyservice_calls  verify calls each request should cause once primed (0: a cache hit, 1: a
#             miss); the sanity check counts them at the key service
#   sanity_headers  a function returning the sanity check's headers for each request (default
#             `headers`), for scenarios whose Lua script varies them
#   lua       path of a wrk Lua script (e.g. to vary keys per request); optional
#   saturates False when something other than Envoy bounds the throughput (then an idle CPU 0
#             does not mark the run as disturbed); default True
#   note      free text for the table
KEYGATE_SCENARIOS: list[dict] = [
    {"name": "kg_header", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS},
    {"name": "kg_bearer", "headers": {"Authorization": f"Bearer {BENCH_KEY}"},
     "expect_headers": RATELIMIT_HEADERS},
    {"name": "kg_basic", "headers": {"Authorization": basic("alice", BASIC_KEY)},
     "expect_headers": RATELIMIT_HEADERS},
    {"name": "kg_query", "path": f"/bench?_apikey={BENCH_KEY}", "expect_headers": RATELIMIT_HEADERS},
    # The same request, keygate configured lean: the key-id identity header only, no rate-limit
    # headers on allowed responses, no access-log filter state (each is a host call or three).
    {"name": "kg_lean", "headers": {"X-API-Key": BENCH_KEY}, "config": LEAN_CONFIG,
     "note": "key-id header only, no rate headers on 200, no log state"},
    # Issue #6's hot path at its least: one identity header, the rate-limit headers, stripping.
    {"name": "kg_min", "headers": {"X-API-Key": BENCH_KEY}, "config": MIN_CONFIG,
     "expect_headers": RATELIMIT_HEADERS, "note": "key-id header only, no log state"},
    {"name": "kg_429", "headers": {"X-API-Key": LIMITED_KEY}, "expect": 429, "prime": 1,
     "note": "429 expected"},
    # The failed-auth throttle off: with it (100 failures/min per client), all but the first 100
    # requests would measure the 429 `auth-throttled` path instead of the 401.
    {"name": "kg_unknown", "headers": {"X-API-Key": UNKNOWN_KEY}, "expect": 401, "note": "401 expected",
     "config": {**KEYGATE_CONFIG, "auth_throttle": False}},
    # Fleet-wide limits on the rate-limit engine: leased (a call per 100 requests) and per request.
    {"name": "kg_fleet_leased", "headers": {"X-API-Key": BENCH_KEY}, "config": FLEET_LEASED_CONFIG,
     "rls": True, "expect_headers": RATELIMIT_HEADERS, "note": "fleet limit, leased (100 tokens a lease)"},
    {"name": "kg_fleet_request", "headers": {"X-API-Key": BENCH_KEY}, "config": FLEET_REQUEST_CONFIG,
     "rls": True, "expect_headers": RATELIMIT_HEADERS, "note": "fleet limit, one engine call a request"},
    # Remote key service. A valid key, after the first request a shared-data cache hit.
    {"name": "kg_remote_cached", "headers": {"X-API-Key": REMOTE_KEY}, "config": REMOTE_CONFIG,
     "keyservice": [REMOTE_KEY_RECORD], "keyservice_calls": 0, "prime": 1,
     "expect_headers": RATELIMIT_HEADERS, "note": "key service, cached valid verdict"},
    # An unknown key, after the first request a per-worker negative-cache hit.
    {"name": "kg_remote_unknown", "headers": {"X-API-Key": REMOTE_UNKNOWN_KEY}, "config": REMOTE_CONFIG_NO_THROTTLE,
     "keyservice": [], "keyservice_calls": 0, "prime": 1, "expect": 401,
     "note": "401 expected; key service, cached refusal"},
    # Request history, for instructions.py (history off is kg_header itself: keygate is the same):
    # a plain file access log of the history's fields, and Envoy's OpenTelemetry logger to the
    # key service (metadata only).
    {"name": "kg_file_log", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "file", "instructions_only": True,
     "note": "kg_header + a file access log of the history's fields"},
    {"name": "kg_history", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel", "keyservice": [], "instructions_only": True,
     "note": "kg_header + the OpenTelemetry access logger to the key service (history, metadata; "
             "one body line, as shipped)"},
    # the same fields as nine attributes (a formatter each), and the shipped line with a 1 MiB
    # buffer flushed every 5 s (fewer, larger exports)
    {"name": "kg_history_attrs", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel_attrs", "keyservice": [], "instructions_only": True},
    {"name": "kg_history_big", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel_big", "keyservice": [], "instructions_only": True},
    # Envoy's default 16 KiB buffer (flushed every second; the shipped configs set 64 KiB), and the
    # line without its request id
    {"name": "kg_history_16k", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel_16k", "keyservice": [], "instructions_only": True},
    {"name": "kg_history_noid", "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel_noid", "keyservice": [], "instructions_only": True},
    # History with bodies, on a route with a body: a ~1 KiB JSON POST to an upstream (the authorizer
    # Envoy, answering "ok"); kg_post is the same request with history off, router_upstream_post
    # without keygate.
    {"name": "kg_post", "headers": {"X-API-Key": BENCH_KEY, "Content-Type": "application/json"},
     "method": "POST", "body": BODY_JSON, "upstream": "authz", "expect_headers": RATELIMIT_HEADERS,
     "instructions_only": True, "note": "kg_header's key, a JSON POST to an upstream; history off"},
    {"name": "kg_history_bodies", "headers": {"X-API-Key": BENCH_KEY, "Content-Type": "application/json"},
     "method": "POST", "body": BODY_JSON, "upstream": "authz", "expect_headers": RATELIMIT_HEADERS,
     "access_log": "otel_bodies", "excerpt": True, "keyservice": [], "instructions_only": True,
     "note": "kg_post + the excerpt filter + the OpenTelemetry logger with the bodies attribute"},
    # Rolling windows, for instructions.py only (wrk's rate would exceed 1,000 a second): the
    # allowed path at N = 1,000 (a 4,012-byte value rewritten per request), the 429 at N = 100.
    {"name": "kg_rolling_1000", "headers": {"X-API-Key": ROLLING_KEY}, "config": ROLLING_CONFIG,
     "expect_headers": RATELIMIT_HEADERS, "instructions_only": True,
     "note": "rolling window, N = 1,000 per second, under its limit"},
    {"name": "kg_rolling_429", "headers": {"X-API-Key": ROLLING_LIMITED_KEY}, "config": ROLLING_CONFIG,
     "expect": 429, "prime": 100, "instructions_only": True,
     "note": "429 expected; rolling window, N = 100 per day, full"},
    # A new random key on every request: every request is a miss that calls the key service.
    {"name": "kg_remote_first", "lua": RANDOM_KEY_LUA, "sanity_headers": random_key_headers,
     "config": REMOTE_CONFIG_NO_THROTTLE, "keyservice": [], "keyservice_calls": 1, "expect": 401,
     "saturates": False,
     "note": "401 expected; every request a miss calling the Python key service (CPU 1, with wrk), "
             "which bounds rps; CPU 0 is not saturated, so CPU/req is only roughly comparable"},
]

# --------------------------------------------------------------------------------------------
# Envoy configuration
# --------------------------------------------------------------------------------------------

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def wasm_filter(name: str, vm_id: str, wasm: Path, configuration: str) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": configuration},
                "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(wasm)}}},
            },
        },
    }


NATIVE_FILTERS = [
    {
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": BENCH_KEY, "client": "bench"}, {"key": LIMITED_KEY, "client": "slow"}],
            "key_sources": [{"header": "x-api-key"}],
        },
    },
    {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native_rl",
            # Large enough never to trip during a run: the bucket is consulted on every request.
            "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000,
                             "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "native_rl_enabled",
                               "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "native_rl_enforced",
                                "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        },
    },
]

NATIVE_RLS_FILTER = {
    "name": "envoy.filters.http.ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "native",
        "failure_mode_deny": False,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}, "timeout": "1s"}},
    },
}
# The route's descriptor for it: the key id keygate set upstream.
NATIVE_RLS_ACTIONS = [{"actions": [{"request_headers": {"header_name": "x-keygate-key-id",
                                                        "descriptor_key": "key_id"}}]}]

EXT_AUTHZ_FILTERS = [
    {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "http_service": {
                "server_uri": {"uri": "http://127.0.0.1", "cluster": "authz", "timeout": "2s"},
            },
        },
    },
]


def variants() -> list[dict]:
    """The benchmarked variants in run order; `router` first (every ratio is relative to it)."""
    out = [
        {"name": "router", "filters": []},
        {"name": "native", "filters": NATIVE_FILTERS, "headers": {"X-API-Key": BENCH_KEY},
         "expect_headers": RATELIMIT_HEADERS},
        {"name": "ext_authz", "filters": EXT_AUTHZ_FILTERS},
        {"name": "noop_wasm", "filters": [wasm_filter("noop", "noop", STAGED[NOOP_WASM], "")]},
        # the history's loggers alone, for the breakdown (instructions.py): Envoy's OpenTelemetry
        # logger to the key service, and a plain file access log of the same fields, no keygate
        {"name": "router_otel", "filters": [], "access_log": "otel", "keyservice": [], "instructions_only": True,
         "note": "router + the OpenTelemetry access logger (history, metadata, as shipped)"},
        {"name": "router_otel_attrs", "filters": [], "access_log": "otel_attrs", "keyservice": [],
         "instructions_only": True, "note": "router + the OpenTelemetry access logger, nine attributes"},
        {"name": "router_file_log", "filters": [], "access_log": "file", "instructions_only": True,
         "note": "router + a file access log of the history's fields"},
        # keygate's host calls for a cached X-API-Key request, constant data, no logic: the floor
        # under kg_header (tests/bench/floor-filter)
        {"name": "floor_keygate", "filters": [wasm_filter("floor", "floor-keygate", STAGED[FLOOR_WASM], "keygate")],
         "headers": {"X-API-Key": BENCH_KEY}, "expect_headers": RATELIMIT_HEADERS,
         "note": "keygate's host calls only"},
        # the issue's reference filter: headers once, one shared get + CAS set, 3 response headers
        {"name": "floor_reference", "filters": [wasm_filter("floor", "floor-reference", STAGED[FLOOR_WASM],
                                                            "reference")],
         "expect_headers": RATELIMIT_HEADERS, "note": "issue #6's reference filter"},
    ]
    # Envoy's own ratelimit filter after keygate (the no-code alternative of issue #15) to the same
    # engine. It does nothing on a direct_response route, so these two route to the authorizer
    # Envoy (which answers 200): compare them with each other, not with the direct-response rows.
    out.append({"name": "router_upstream", "filters": [], "upstream": "authz",
                "note": "router to an upstream Envoy: the baseline of native_rls"})
    out.append({"name": "router_upstream_post", "filters": [], "upstream": "authz", "method": "POST",
                "body": BODY_JSON, "headers": {"Content-Type": "application/json"}, "instructions_only": True,
                "note": "kg_post's request without keygate: the baseline of the bodies variants"})
    out.append({"name": "native_rls", "upstream": "authz", "rls": True, "headers": {"X-API-Key": BENCH_KEY},
                "filters": [wasm_filter("keygate", "keygate", STAGED[KEYGATE_WASM],
                                        json.dumps(KEYGATE_CONFIG, separators=(",", ":"))), NATIVE_RLS_FILTER],
                "note": "keygate (local) + Envoy's ratelimit filter to the engine, to an upstream Envoy"})
    default_cfg = json.dumps(KEYGATE_CONFIG, separators=(",", ":"))
    for s in KEYGATE_SCENARIOS:
        v = copy.deepcopy(s)
        cfg = json.dumps(v.pop("config", KEYGATE_CONFIG), separators=(",", ":"))
        vm_id = "keygate" if cfg == default_cfg else f"keygate-{sha256_hex(cfg)[:8]}"
        v["filters"] = [wasm_filter("keygate", vm_id, STAGED[KEYGATE_WASM], cfg)]
        if v.pop("excerpt", False):  # before keygate, as where bodies are recorded
            v["filters"].insert(0, wasm_filter("excerpt", "keygate-excerpt", STAGED[EXCERPT_WASM],
                                               json.dumps(EXCERPT_CONFIG, separators=(",", ":"))))
        out.append(v)
    for v in out:
        log = v.get("access_log")
        if log == "file":
            v["access_log"] = file_access_log()
        elif log == "otel":  # as shipped
            v["access_log"] = otel_access_log([], body=HISTORY_LINE, buffer=SHIPPED_BUFFER)
        elif log == "otel_16k":
            v["access_log"] = otel_access_log([], body=HISTORY_LINE)
        elif log == "otel_bodies":
            v["access_log"] = otel_access_log([BODIES_ATTRIBUTE], body=HISTORY_LINE, buffer=SHIPPED_BUFFER)
        elif log == "otel_attrs":
            v["access_log"] = otel_access_log(HISTORY_ATTRIBUTES, buffer=SHIPPED_BUFFER)
        elif log == "otel_big":
            v["access_log"] = otel_access_log([], body=HISTORY_LINE, buffer=1 << 20, flush_s=5)
        elif log == "otel_noid":
            v["access_log"] = otel_access_log([], body=HISTORY_LINE.replace(" request_id=%REQ(X-REQUEST-ID)%", ""),
                                              buffer=SHIPPED_BUFFER)
    for v in out:
        v.setdefault("headers", {})
        v.setdefault("path", "/bench")
        v.setdefault("expect", 200)
        v.setdefault("prime", 0)
        v.setdefault("expect_headers", [])
        v.setdefault("clusters", [])
        v.setdefault("keyservice", None)
        v.setdefault("keyservice_calls", None)
        v.setdefault("sanity_headers", None)
        v.setdefault("instructions_only", False)
        v.setdefault("lua", None)
        v.setdefault("saturates", True)
        v.setdefault("note", "")
        v.setdefault("rls", False)
        v.setdefault("upstream", None)
        v.setdefault("access_log", None)
        v.setdefault("method", "GET")
        v.setdefault("body", None)
    return out


def static_cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def listener(name: str, http_filters: list[dict], status: int = 200, upstream: str | None = None,
             access_log: list[dict] | None = None) -> dict:
    """A listener on an Envoy-chosen loopback port whose only route is a direct response (or, with
    `upstream`, a route to that cluster carrying the native ratelimit filter's descriptor), with
    the HTTP connection manager's `access_log` if given."""
    route = ({"match": {"prefix": "/"}, "route": {"cluster": upstream, "rate_limits": NATIVE_RLS_ACTIONS}}
             if upstream else
             {"match": {"prefix": "/"}, "direct_response": {"status": status, "body": {"inline_string": "ok\n"}}})
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [route],
                }]},
                "http_filters": http_filters + [ROUTER],
                **({"access_log": access_log} if access_log else {}),
            },
        }]}],
    }


def envoy_config(listeners: list[dict], clusters: list[dict]) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Procs:
    """Every process we start, each in its own process group; `stop_all` ends them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


class BenchError(Exception):
    pass


def envoy_command() -> list[str]:
    r = subprocess.run([str(ROOT / "envoy" / "find-envoy.sh")], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise BenchError(f"envoy/find-envoy.sh failed: {r.stderr.strip()} (set ENVOY_BIN?)")
    return shlex.split(r.stdout.strip())


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Envoy:
    """One Envoy process, pinned to `cpu`, with an admin port and listeners on chosen ports."""

    def __init__(self, procs: Procs, name: str, config: dict, cpu: str, wrap: list[str] | None = None,
                 envoy: list[str] | None = None) -> None:
        self.name = name
        self.cfg_path = RUN_DIR / f"{name}.json"
        self.log_path = RUN_DIR / f"{name}.log"
        self.admin_path = RUN_DIR / f"{name}.admin"
        self.cfg_path.write_text(json.dumps(config, indent=1))
        self.admin_path.unlink(missing_ok=True)
        cmd = ["taskset", "-c", cpu, *(wrap or []), *(envoy or envoy_command()), "-c", str(self.cfg_path), "--concurrency", "1",
               "--disable-hot-restart", "--admin-address-path", str(self.admin_path)]
        self.log = open(self.log_path, "wb")
        self.proc = procs.start(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.admin = ""
        self.ports: dict[str, int] = {}

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} Envoy exited ({self.proc.returncode}):\n{self.log_tail()}")
            if not self.admin and self.admin_path.exists():
                self.admin = self.admin_path.read_text().strip()
            if self.admin:
                try:
                    if http_get(f"http://{self.admin}/ready").strip() == b"LIVE":
                        self._read_ports()
                        return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} Envoy not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def _read_ports(self) -> None:
        data = json.loads(http_get(f"http://{self.admin}/listeners?format=json"))
        for ls in data.get("listener_statuses", []):
            self.ports[ls["name"]] = int(ls["local_address"]["socket_address"]["port_value"])

    def cpu_ticks(self) -> int:
        """utime + stime of the whole process (all threads), in clock ticks."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            # fields after the parenthesised comm; utime and stime are fields 14 and 15.
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])

    def check_pid(self) -> None:
        """`taskset` and a Python `envoy` wrapper both exec: the pid must now be Envoy itself."""
        comm = Path(f"/proc/{self.proc.pid}/comm").read_text().strip()
        if comm != "envoy":
            raise BenchError(f"pid {self.proc.pid} is `{comm}`, not envoy: the CPU readings would be wrong")

    def memory(self) -> dict:
        return json.loads(http_get(f"http://{self.admin}/memory"))

    def keygate_counters(self) -> dict[str, int]:
        """keygate's counters (`wasmcustom.keygate.*`, summed over workers and VMs)."""
        q = urllib.parse.urlencode({"filter": r"^wasmcustom\.keygate\.", "format": "json"})
        data = json.loads(http_get(f"http://{self.admin}/stats?{q}"))
        return {st["name"]: int(st["value"]) for st in data.get("stats", [])
                if "name" in st and isinstance(st.get("value"), int)}

    def version(self) -> str:
        try:
            info = json.loads(http_get(f"http://{self.admin}/server_info"))
            return info.get("version", "?")
        except (OSError, ValueError):
            return "?"

    def log_tail(self, n: int = 30) -> str:
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


class KeyService:
    """The key service (envoy/keyservice, SQLite; call counters at /metrics) on a free loopback
    port, pinned to `cpu`, with the /admin endpoints enabled (a token made for this run)."""

    def __init__(self, procs: Procs, cpu: str) -> None:
        self.db = RUN_DIR / "keyservice.sqlite"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        self.log_path = RUN_DIR / "keyservice.log"
        self.token = secrets.token_hex(16)
        self.log = open(self.log_path, "wb")
        if not KEYSERVICE_BIN.exists():
            raise BenchError(f"{KEYSERVICE_BIN} is missing: cargo build --release -p keyservice")
        cmd = ["taskset", "-c", cpu, str(KEYSERVICE_BIN), "--db", str(self.db), "serve",
               "--host", "127.0.0.1", "--port", "0"]
        self.proc = procs.start(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                env={**os.environ, "KEYSERVICE_ADMIN_TOKEN": self.token})
        self.port = 0

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"key service exited ({self.proc.returncode}):\n{self.log_tail()}")
            if not self.port:
                m = re.search(r"keyservice listening on http://127\.0\.0\.1:(\d+)",
                              self.log_path.read_text(errors="replace"))
                self.port = int(m.group(1)) if m else 0
            if self.port:
                try:
                    self.stats()
                    return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.05)
        raise BenchError(f"key service not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"x-admin-token": self.token, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise BenchError(f"key service: {method} {path} gave {e.code}: {e.read()[:500]!r}") from None
        return json.loads(raw) if raw else {}

    def add_key(self, record: dict) -> None:
        self.admin("POST", "/admin/keys", record)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        def counter(name: str) -> int:
            m = re.search(rf"^{name} (\d+)$", text, re.M)
            return int(m.group(1)) if m else 0
        return {"verify_calls": counter("keyservice_verify_calls_total"),
                "revocation_calls": counter("keyservice_revocation_calls_total")}

    def verify_calls(self) -> int:
        return int(self.stats()["verify_calls"])

    def wait_for_feed(self, since: float, timeout: float = 10.0) -> None:
        """keygate caches no verdict until its first revocation-feed poll has answered (it polls
        every 100 ms until then): wait until the service has answered a poll and Envoy has been
        up for 1 s (several polls), so that priming caches the verdict."""
        deadline = time.monotonic() + timeout
        while int(self.stats()["revocation_calls"]) == 0:
            if time.monotonic() > deadline:
                raise BenchError(f"keygate did not poll the key service's revocation feed within {timeout:.0f}s "
                                 f"(cluster `{KEYSERVICE_CLUSTER}` -> 127.0.0.1:{self.port}); see "
                                 f"{self.log_path} and the Envoy log")
            time.sleep(0.05)
        time.sleep(max(0.0, since + 1.0 - time.monotonic()))

    def log_tail(self, n: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


# --------------------------------------------------------------------------------------------
# Sanity check, wrk, parsing
# --------------------------------------------------------------------------------------------


def fetch(port: int, path: str, headers: dict, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def sanity_check(v: dict, port: int, ks: KeyService | None = None) -> None:
    def request_headers() -> dict:
        return v["sanity_headers"]() if v["sanity_headers"] else v["headers"]

    for _ in range(v["prime"]):
        fetch(port, v["path"], request_headers(), v["method"], v["body"])
    count_calls = ks is not None and v["keyservice_calls"] is not None
    n = 3 if count_calls else 1  # a few requests, to see the steady state's calls per request
    calls0 = ks.verify_calls() if count_calls else 0
    for _ in range(n):
        status, headers = fetch(port, v["path"], request_headers(), v["method"], v["body"])
        if status != v["expect"]:
            raise BenchError(f"variant {v['name']} is misconfigured: GET {v['path']} on :{port} gave {status}, "
                             f"expected {v['expect']} (headers: {headers})")
        missing = [h for h in v["expect_headers"] if h not in headers]
        if missing:
            raise BenchError(f"variant {v['name']}: response lacks {missing} (headers: {headers})")
    if count_calls:
        calls = ks.verify_calls() - calls0
        if calls != n * v["keyservice_calls"]:
            raise BenchError(f"variant {v['name']}: {n} requests made {calls} key-service verify calls, expected "
                             f"{n * v['keyservice_calls']} ({'a cache hit' if not v['keyservice_calls'] else 'a miss'}"
                             f" each)")


UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def to_us(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_wrk(out: str) -> dict:
    def grab(pattern: str, default: tuple) -> tuple:
        m = re.search(pattern, out, re.M)
        return m.groups() if m else default

    requests, = grab(r"^\s*(\d+) requests in", ("0",))
    rps, = grab(r"^Requests/sec:\s*([\d.]+)", ("0",))
    p50, = grab(r"^\s*50%\s+(\S+)", ("0us",))
    p99, = grab(r"^\s*99%\s+(\S+)", ("0us",))
    non2xx, = grab(r"^\s*Non-2xx or 3xx responses:\s*(\d+)", ("0",))
    sock = grab(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", ("0",) * 4)
    return {"requests": int(requests), "rps": float(rps), "p50_us": to_us(p50), "p99_us": to_us(p99),
            "non2xx": int(non2xx), "socket_errors": sum(int(x) for x in sock)}


def wrk(procs: Procs, v: dict, port: int, seconds: int, connections: int) -> str:
    """One wrk run (wrk 4 takes whole seconds only); returns its report."""
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
           "--timeout", "5s"]
    for k, val in v["headers"].items():
        cmd += ["-H", f"{k}: {val}"]
    if v.get("lua"):
        cmd += ["-s", str(v["lua"])]
    cmd.append(f"http://127.0.0.1:{port}{v['path']}")
    p = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=seconds + 30)
    finally:
        procs.stop(p)
    if p.returncode != 0:
        raise BenchError(f"wrk failed for {v['name']} ({p.returncode}): {(err or out).strip()[:2000]}")
    return out


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU tick counters from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                name, *vals = line.split()
                out[name] = [int(x) for x in vals[:8]]
    return out


def cpu_usage(before: list[int], after: list[int], envoy_ticks: int = 0) -> dict:
    """Shares of one CPU over a run, in percent. `other` is busy time not charged to Envoy (the
    kernel charges irq/softirq ticks to the task they interrupt, so Envoy's own time includes most
    of the loopback network stack)."""
    d = [a - b for a, b in zip(after, before)]
    user, nice, system, idle, iowait, irq, softirq, steal = d
    total = sum(d) or 1
    return {"busy_pct": 100 * (total - idle - iowait) / total,
            "softirq_pct": 100 * (irq + softirq) / total,
            "steal_pct": 100 * steal / total,
            "other_pct": 100 * max(0, total - idle - iowait - steal - envoy_ticks) / total}


def disturbance(r: dict) -> str | None:
    """Why a run's numbers are suspect, or None: something else ran on Envoy's CPU, or that CPU
    was not saturated (the client was starved, e.g. by other work on its CPU)."""
    e = r["envoy_cpu"]
    if e["other_pct"] > 5:
        return f"other processes took {e['other_pct']:.0f}% of CPU {ENVOY_CPU}"
    if e["busy_pct"] < 90 and r.get("saturates", True):
        return f"CPU {ENVOY_CPU} only {e['busy_pct']:.0f}% busy (client-bound?)"
    return None


def busy_now(seconds: float = 1.0) -> dict[str, float]:
    """How busy each CPU is over `seconds` (while we send no load): others' load makes noise."""
    t0 = cpu_times()
    time.sleep(seconds)
    t1 = cpu_times()
    return {cpu: cpu_usage(t0[cpu], t1[cpu])["busy_pct"] for cpu in t0}


def wait_for_quiet(limit_s: float, busy_pct: float = 10.0) -> bool:
    """Waits up to `limit_s` for every CPU to be under `busy_pct`; True if it got quiet."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if max(busy_now(0.5).values()) < busy_pct:
            return True
    return False


def measure(procs: Procs, envoy: Envoy, v: dict, port: int, seconds: int, warmup: int,
            connections: int, ks: KeyService | None = None) -> dict:
    if warmup > 0:
        wrk(procs, v, port, warmup, connections)
    remote = ks is not None and v["keyservice"] is not None
    if remote:
        calls0, counters0 = ks.verify_calls(), envoy.keygate_counters()
    stat0, before = cpu_times(), envoy.cpu_ticks()
    out = wrk(procs, v, port, seconds, connections)
    stat1, after = cpu_times(), envoy.cpu_ticks()
    r = parse_wrk(out)
    r["saturates"] = v["saturates"]
    if remote:
        # Read after the CPU counters, so these admin calls are not charged to the run. A few calls
        # of requests wrk abandoned at the end of the previous run may be counted here.
        r["keyservice_calls"] = ks.verify_calls() - calls0
        counters1 = envoy.keygate_counters()
        r["keygate_counters"] = {k: n - counters0.get(k, 0) for k, n in counters1.items()
                                 if n != counters0.get(k, 0)}
    if r["requests"] == 0:
        raise BenchError(f"no request completed for {v['name']}:\n{out}")
    tick_us = 1_000_000 / os.sysconf("SC_CLK_TCK")
    r["cpu_us"] = (after - before) * tick_us
    r["cpu_us_per_req"] = r["cpu_us"] / r["requests"]
    envoy_cpu, client_cpu = f"cpu{ENVOY_CPU}", f"cpu{CLIENT_CPU}"
    r["envoy_cpu"] = cpu_usage(stat0[envoy_cpu], stat1[envoy_cpu], after - before)
    r["client_cpu"] = cpu_usage(stat0[client_cpu], stat1[client_cpu])
    r["wrk_output"] = out
    return r


# --------------------------------------------------------------------------------------------
# Build, report
# --------------------------------------------------------------------------------------------


def build(skip: bool) -> None:
    steps = [(m.parent.name, ["cargo", "build", "--release", "--target", "wasm32-wasip1", "--manifest-path",
                              str(m)]) for m in (NOOP_MANIFEST, FLOOR_MANIFEST)]
    steps.append(("excerpt", ["cargo", "excerpt"]))
    if not skip:
        steps.insert(0, ("keygate", ["envoy/build-wasm.sh"]))
    for name, cmd in steps:
        print(f"building {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"building {name} failed:\n{r.stderr[-3000:]}")
    for p in (KEYGATE_WASM, NOOP_WASM, FLOOR_WASM, EXCERPT_WASM):
        if not p.exists():
            raise BenchError(f"{p} is missing (run envoy/build-wasm.sh in {ROOT})")


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def summarize(vs: list[dict], rounds: list[dict]) -> list[dict]:
    rows = []
    for v in vs:
        n = v["name"]
        runs = [r[n] for r in rounds]
        refs = [r[n].get("router_ref", r["router"]) for r in rounds]
        rps_ratio = [r[n]["rps"] / ref["rps"] for r, ref in zip(rounds, refs) if ref["rps"]]
        cpu_ratio = [r[n]["cpu_us_per_req"] / ref["cpu_us_per_req"] for r, ref in zip(rounds, refs)
                     if ref["cpu_us_per_req"]]
        non2xx = sum(x["non2xx"] for x in runs)
        requests = sum(x["requests"] for x in runs)
        sock = sum(x["socket_errors"] for x in runs)
        problems = []
        if v["expect"] < 400 and non2xx:
            problems.append(f"{non2xx} unexpected non-2xx")
        if v["expect"] >= 400 and non2xx != requests:
            problems.append(f"{requests - non2xx} unexpected 2xx")
        if sock:
            problems.append(f"{sock} socket errors")
        info = []
        remote = [x for x in runs if "keyservice_calls" in x]
        calls_per_req = None
        if remote:
            calls_per_req = sum(x["keyservice_calls"] for x in remote) / max(1, sum(x["requests"] for x in remote))
            info.append(f"key-service calls/req {calls_per_req:.2f}")
            # A failing key service gives 503s, which would pass as the expected non-2xx.
            failed = sum(n for x in remote for k, n in x["keygate_counters"].items()
                         if ".keyservice.failure." in k or k.endswith(".requests.key_service_unavailable"))
            if failed:
                problems.append(f"{failed} key-service failures or 503s (see keygate_counters)")
        # Not failures, but they make the numbers suspect.
        disturbed = [d for d in map(disturbance, runs) if d]
        warnings = [f"{len(disturbed)}/{len(runs)} runs disturbed ({disturbed[0]})"] if disturbed else []
        rows.append({
            "name": n,
            "rps": median([x["rps"] for x in runs]),
            "ratio": median(rps_ratio),
            "p50_us": median([x["p50_us"] for x in runs]),
            "p99_us": median([x["p99_us"] for x in runs]),
            "cpu_us_per_req": median([x["cpu_us_per_req"] for x in runs]),
            "cpu_ratio": median(cpu_ratio),
            "non2xx": non2xx,
            "requests": requests,
            "keyservice_calls_per_req": calls_per_req,
            "note": "; ".join([v["note"]] * bool(v["note"]) + info + problems + warnings),
            "problems": problems,
            "warnings": warnings,
        })
    return rows


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def table(rows: list[dict]) -> str:
    head = ["variant", "rps (median)", "× router", "p50", "p99", "CPU µs/req", "CPU × router", "non-2xx/3xx",
            "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["name"], f"{r['rps']:,.0f}", f"{r['ratio']:.2f}", fmt_us(r["p50_us"]), fmt_us(r["p99_us"]),
            f"{r['cpu_us_per_req']:.1f}", f"{r['cpu_ratio']:.2f}", f"{r['non2xx']:,} / {r['requests']:,}",
            r["note"],
        ]) + " |")
    return "\n".join(lines)


def shared_data_sizes() -> str:
    """Bytes keygate keeps in shared data per token bucket and per cached verdict, from the
    formats in src/state_key.rs, src/limiter.rs and src/cache.rs (default `shared_prefix`, the
    bench's keys)."""
    prefix = "keygate.v1"
    bucket_key = f"{prefix}:l:3:big:k:bench"
    verdict_key = f"{prefix}:v:" + "0" * 64
    rec = REMOTE_KEY_RECORD
    identity = {"valid": True, "key_id": rec["id"], "subject": rec["user"] or rec["id"], "account": rec["account"],
                "plan": rec["plan"], "scopes": rec["scopes"], "expires_at": rec["expires_at"],
                "ratelimit": rec["ratelimit"], "resources": rec["resources"]}
    verdict_value = 3 + 8 + 8 + 1 + len(json.dumps(identity, separators=(",", ":"), sort_keys=True))
    return (f"per token bucket {len(bucket_key)} B key (`{bucket_key}`) + 32 B value; per cached verdict "
            f"{len(verdict_key)} B key + {verdict_value} B value (20 B header + the identity JSON of "
            f"the remote bench key; it grows with scopes and resources)")


def shared_data_estimate(log_text: str) -> str | None:
    """The last line in which keygate reports a shared-data size, if it prints one."""
    hits = [ln for ln in log_text.splitlines()
            if "keygate" in ln and re.search(r"shared", ln, re.I) and re.search(r"bytes", ln, re.I)]
    return hits[-1].split("]")[-1].replace("wasm log", "", 1).strip() if hits else None


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def mib(n) -> str:
    return f"{int(n) / 1048576:.1f} MiB"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants (3)")
    ap.add_argument("--seconds", type=int, default=5, help="timed wrk run per variant and round, whole s (5)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded wrk run before each timed run, s; 0: none (1)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, 1 s warm-up")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-measure a disturbed run up to this many times; at most a quarter of the "
                         "runs in all (1; 0: off)")
    ap.add_argument("--only", default="", help="comma-separated variant names (router is always kept)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the existing keygate.wasm instead of running `cargo wasm` first")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup = 1, 2, 1
    if a.rounds < 1 or a.seconds < 1 or a.warmup < 0 or a.connections < 1:
        ap.error("--rounds, --seconds and --connections must be positive")
    return a


def lock_run_dir():
    """One benchmark at a time: two would skew each other. The lock lasts as long as the file."""
    RUN_DIR.mkdir(exist_ok=True)
    lock = open(RUN_DIR / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BenchError("another bench.py is running (tests/bench/.run/lock); two runs would skew each other")
    return lock


def stage_wasm() -> dict:
    """Copies the modules to where Envoy loads them; returns the size and digest of each."""
    info = {}
    for src, dst in STAGED.items():
        data = src.read_bytes()
        dst.write_bytes(data)
        info[src.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "built": str(src)}
    return info


def start_backends(procs: Procs, vs: list[dict]) -> tuple[list[dict], KeyService | None]:
    """What the variants' Envoy calls, started on the client CPU: the ext_authz authorizer (a
    second Envoy answering 200) and, when a scenario verifies keys remotely, the key service with
    the scenarios' keys. Returns the Envoy clusters for them (and the scenarios' own) and the key
    service."""
    authz = Envoy(procs, "authz", envoy_config([listener("authz", [])], []), CLIENT_CPU)
    authz.wait_ready()
    clusters = [static_cluster("authz", authz.ports["authz"])]
    ks = None
    if any(v["keyservice"] is not None for v in vs):
        ks = KeyService(procs, CLIENT_CPU)
        ks.wait_ready()
        created = set()
        for v in vs:
            for rec in v["keyservice"] or []:
                if rec["id"] not in created:
                    ks.add_key(rec)
                    created.add(rec["id"])
        clusters.append(static_cluster(KEYSERVICE_CLUSTER, ks.port))
    if any(v["rls"] for v in vs):
        if not RLS_ENGINE.exists():
            raise BenchError(f"{RLS_ENGINE} is missing: tests/rls-engine/build.sh")
        RUN_DIR.mkdir(exist_ok=True)
        limits = RUN_DIR / "rls-limits.yaml"
        limits.write_text(RLS_LIMITS)
        port = free_port()
        procs.start(["taskset", "-c", CLIENT_CPU, str(RLS_ENGINE), "--limits", str(limits),
                     "--addr", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        c = static_cluster(RLS_CLUSTER, port)
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
        clusters.append(c)
    for v in vs:
        clusters += [c for c in v["clusters"] if c["name"] not in {x["name"] for x in clusters}]
    return clusters, ks


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port}")


def benchmark(args: argparse.Namespace, vs: list[dict]) -> dict:
    """Starts both Envoys, checks every variant, runs the rounds and the retries; stops everything."""
    procs = Procs()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background by a shell, which leaves SIGINT ignored.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        clusters, ks = start_backends(procs, vs)
        envoy = Envoy(procs, "envoy", envoy_config([listener(v["name"], v["filters"], upstream=v["upstream"], access_log=v["access_log"]) for v in vs], clusters),
                      ENVOY_CPU)
        envoy.wait_ready()
        ready_at = time.monotonic()
        envoy.check_pid()
        if ks:
            ks.wait_for_feed(ready_at)

        for v in vs:
            sanity_check(v, envoy.ports[v["name"]], ks)
        print("sanity check passed: " + ", ".join(f"{v['name']}={v['expect']}" for v in vs), file=sys.stderr)

        def run(v: dict, label: str) -> dict:
            r = measure(procs, envoy, v, envoy.ports[v["name"]], args.seconds, args.warmup, args.connections, ks)
            d = disturbance(r)
            print(f"{label} {v['name']:<17} {r['rps']:>9,.0f} rps  p50 {fmt_us(r['p50_us']):>9}  "
                  f"p99 {fmt_us(r['p99_us']):>9}  cpu {r['cpu_us_per_req']:.1f} µs/req  non-2xx {r['non2xx']}"
                  + (f"  key-service calls {r['keyservice_calls']}" if "keyservice_calls" in r else "")
                  + (f"  [disturbed: {d}]" if d else ""), file=sys.stderr, flush=True)
            return r

        rounds: list[dict] = []
        router, others = vs[0], vs[1:]
        for i in range(args.rounds):
            label = f"round {i + 1}/{args.rounds}"
            # router, then BRACKET variants, router again, ...: each variant's ratio is taken
            # against the mean of the router runs just before and after it (drift of the machine
            # over a round's minutes then cancels), and the router row shows their median
            rnd: dict = {}
            before = run(router, label)
            router_runs = [before]
            for start in range(0, len(others), BRACKET):
                chunk = [(v, run(v, label)) for v in others[start:start + BRACKET]]
                after = run(router, label)
                router_runs.append(after)
                for v, r in chunk:
                    r["router_ref"] = {"rps": (before["rps"] + after["rps"]) / 2,
                                       "cpu_us_per_req": (before["cpu_us_per_req"] + after["cpu_us_per_req"]) / 2}
                    rnd[v["name"]] = r
                before = after
            mid = sorted(router_runs, key=lambda r: r["rps"])[len(router_runs) // 2]
            rnd[router["name"]] = dict(mid, router_runs=[{"rps": r["rps"], "cpu_us_per_req": r["cpu_us_per_req"]}
                                                         for r in router_runs])
            rounds.append({v["name"]: rnd[v["name"]] for v in vs})

        # Disturbed runs are measured again at the end, when the other load may be gone (after
        # waiting up to 2 x --seconds for quiet CPUs): each up to --retries times, a quarter of the
        # runs in all (bounded time). The less disturbed attempt is kept; the others are recorded
        # under "discarded".
        budget = retry_budget(args, vs)
        for i, rnd in enumerate(rounds):
            for v in vs:
                for _ in range(args.retries):
                    if budget == 0 or not disturbance(rnd[v["name"]]):
                        break
                    budget -= 1
                    wait_for_quiet(2 * args.seconds)
                    old, new = rnd[v["name"]], run(v, f"retry {i + 1}/{args.rounds}")
                    if "router_ref" in old:
                        new["router_ref"] = old["router_ref"]
                    worse, better = sorted([old, new], key=lambda x: (
                        x["envoy_cpu"]["other_pct"] + max(0.0, 90 - x["envoy_cpu"]["busy_pct"])), reverse=True)
                    better["discarded"] = better.pop("discarded", []) + worse.pop("discarded", []) + [worse]
                    rnd[v["name"]] = better

        return {"rounds": rounds, "memory": envoy.memory(), "envoy_version": envoy.version(),
                "shared_data_estimate": shared_data_estimate(envoy.log_path.read_text(errors="replace"))}
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def retry_budget(args: argparse.Namespace, vs: list[dict]) -> int:
    return max(2, len(vs) * args.rounds // 4) if args.retries else 0


def report(args: argparse.Namespace, rows: list[dict], res: dict, wasm: dict) -> None:
    """The markdown table and the notes under it, on stdout."""
    runs = [r for rnd in res["rounds"] for r in rnd.values()]
    busy = [r["envoy_cpu"]["busy_pct"] for r in runs]
    memory = res["memory"]
    print(f"## keygate benchmark: {args.rounds} round(s) x {args.seconds} s, wrk -t1 -c{args.connections}, "
          f"Envoy --concurrency 1 on CPU {ENVOY_CPU}, wrk on CPU {CLIENT_CPU}\n")
    print(table(rows))
    print()
    print("Upstream: a direct_response route (200 `ok`) in every variant's listener; ratios are medians of "
          "per-round ratios to the mean of the two `router` runs around each variant's run.")
    print(f"- wasm sizes: keygate.wasm {wasm['keygate.wasm']['bytes']:,} B, "
          f"noop_filter.wasm {wasm['noop_filter.wasm']['bytes']:,} B, "
          f"floor_filter.wasm {wasm['floor_filter.wasm']['bytes']:,} B")
    print(f"- Envoy memory after the run: allocated {mib(memory.get('allocated', 0))}, "
          f"heap_size {mib(memory.get('heap_size', 0))}")
    print(f"- keygate shared data (Envoy adds its own per-entry overhead: a hash-map node and two strings): "
          f"{shared_data_sizes()}")
    if res["shared_data_estimate"]:
        print(f"- keygate shared data: {res['shared_data_estimate']}")
    print(f"- CPU {ENVOY_CPU} (Envoy) during the timed runs: busy {min(busy):.0f}-{max(busy):.0f}%, of which "
          f"irq/softirq (loopback TCP) {median([r['envoy_cpu']['softirq_pct'] for r in runs]):.0f}% (median); "
          f"other processes up to {max(r['envoy_cpu']['other_pct'] for r in runs):.0f}%; "
          f"CPU {CLIENT_CPU} (wrk, authorizer, key service) busy up to {max(r['client_cpu']['busy_pct'] for r in runs):.0f}%")
    print(f"- Envoy {res['envoy_version']}; {tool_version(['wrk', '--version'])}")
    print(f"- raw results: {RESULTS_JSON.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not shutil.which("taskset"):
        print("taskset not found: apt-get install -y util-linux", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; Envoy and wrk will share a core", file=sys.stderr)

    vs = [v for v in variants() if not v["instructions_only"]]
    if args.only:
        keep = {"router", *args.only.split(",")}
        unknown = keep - {v["name"] for v in vs}
        if unknown:
            print(f"unknown variant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        vs = [v for v in vs if v["name"] in keep]

    lock = lock_run_dir()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    build(skip=args.no_build)
    wasm = stage_wasm()
    busy_before = busy_now()
    if max(busy_before.values()) > 10:
        print("warning: the machine is not idle before the run ("
              + ", ".join(f"{c} {b:.0f}% busy" for c, b in busy_before.items())
              + "); expect noisy numbers", file=sys.stderr)
    per_run = args.seconds + args.warmup + 0.3
    runs_per_round = len(vs) + -(-(len(vs) - 1) // BRACKET)
    print(f"{len(vs)} variants x {args.rounds} rounds x ({args.warmup}+{args.seconds}) s, "
          f"{args.connections} connections: about {(args.rounds * runs_per_round * per_run + 10) / 60:.1f} min "
          f"(+{retry_budget(args, vs) * (per_run + 2 * args.seconds) / 60:.1f} at most if runs are retried)", file=sys.stderr, flush=True)

    res = benchmark(args, vs)
    rows = summarize(vs, res["rounds"])
    report(args, rows, res, wasm)
    RESULTS_JSON.write_text(json.dumps({
        "started": started,
        "args": vars(args),
        "method": {"envoy_cpu": ENVOY_CPU, "client_cpu": CLIENT_CPU, "concurrency": 1,
                   "upstream": "direct_response 200 in each listener", "clk_tck": os.sysconf("SC_CLK_TCK")},
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "busy_before_pct": busy_before},
        "envoy_version": res["envoy_version"],
        "wasm": wasm,
        "memory": res["memory"],
        "shared_data_estimate": res["shared_data_estimate"],
        "variants": [{**{k: v[k] for k in ("name", "path", "headers", "expect", "prime", "keyservice_calls", "note")},
                      "lua": str(v["lua"]) if v["lua"] else None} for v in vs],
        "summary": rows,
        "rounds": res["rounds"],
    }, indent=1))
    lock.close()

    problems = [f"{r['name']}: {p}" for r in rows for p in r["problems"]]
    if problems:
        print("\nproblems:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted; all processes stopped", file=sys.stderr)
        sys.exit(130)
