//! The whole pipeline: `gate::decide` with a fixed configuration (embedded keys, routes with
//! scopes and owners, plans with rate limits) on a request derived from the input, decided three
//! times at one fixed instant against one store; for a key the embedded store does not know, the
//! key-service outcomes (unavailable, throttled, fail-open) are built too. Every decision is
//! checked with `common::check_decision`, and no key passes more often than its bucket allows.
//!
//! Input: lines separated by `\n`: `:path`, `:method`, then up to 8 headers `name:value` (a line
//! without `:` is an `authorization` value). E.g. `/v1/items?_apikey=key-alpha-0001\nGET`.

use crate::common;

use keygate::config;
use keygate::gate::{decide, Decision, Gate, Step};

const NOW_US: u64 = 1_800_000_000_000_000; // 2027-01-15

/// Secrets (in clear here; the config holds their SHA-256): key-alpha-0001 (the default plan),
/// key-pro-000002 (plan pro, per account), key-basic-0003 (user alice), key-disabled-04,
/// key-expired-005, key-own-000006 (own limit 1/min, owns aggregators a1 a2),
/// key-unlim-00007 (plan ent, unlimited).
const CONFIG: &str = r#"{
  "realm": "fuzz",
  "key_service": {"cluster": "keys", "on_failure": "open"},
  "credentials": {"api_key_headers": ["x-api-key", "x-alt-key"], "max_bytes": 256},
  "keys": [
    {"id": "alpha", "sha256": "1a28cd6c285157e60243326ab2a472cfeb1b680483e0b87ad0e2c4c106f94976",
     "scopes": ["read"]},
    {"id": "pro", "sha256": "d236b6803fe969e8dd911999ef5d19f168949cfa5090195ae67652bcea7f72c0",
     "plan": "pro", "account": "acme", "scopes": ["read", "write", "admin"]},
    {"id": "basic", "sha256": "2817531bd2722ea0c9ed98f66d746983122d1ed5f34857f37bcae3e3c1aad664",
     "user": "alice", "scopes": ["read"]},
    {"id": "disabled", "sha256": "52e605a6ec71ebfffd06309d9846e851aa36af46958fbbd3fccb57879e31bde9",
     "disabled": true},
    {"id": "expired", "sha256": "9e4a91609ceac40c25ddf811dd5777102a5afbc48dff3513e9bbc8b669541947",
     "expires_at": "2023-11-14T22:13:20Z"},
    {"id": "own", "sha256": "bdcdecd01544843e8909e011c9a52d2ab943dead0fc0d6c215dca56f91bf7c92",
     "scopes": ["read"], "rate_limit": {"requests": 1, "window_s": 60},
     "resources": {"aggregator": ["a1", "a2"]}},
    {"id": "unlim", "sha256": "c0bfb37aab70f80465b91def3bdc1ec69cf4a945c35763e3af2a9ec4b2f101bc",
     "plan": "ent", "scopes": ["read", "admin"], "expires_at": 1900000000}
  ],
  "rate_limit": {
    "plans": {"pro": {"requests": 10, "burst": 2, "per": "account"}, "ent": "unlimited"},
    "default": {"requests": 60, "window_s": 60, "burst": 2},
    "ietf_headers": true
  },
  "routes": [
    {"prefix": "/public", "access": "public"},
    {"exact": "/healthz", "methods": ["GET", "HEAD"], "access": "public"},
    {"prefix": "/closed", "access": "closed"},
    {"prefix": "/admin", "scopes": ["admin"]},
    {"prefix": "/v1/aggregators/", "owner": {"path_segment": 3, "resource": "aggregator"}},
    {"prefix": "/v1/items", "methods": ["POST"], "scopes": ["write"],
     "owner": {"query": "agg", "resource": "aggregator", "status": 403}},
    {"prefix": "/v1/items"}
  ]
}"#;

/// How many of three identical requests at one instant each key may pass (its burst).
fn burst_of(key_id: &str) -> usize {
    match key_id {
        "own" => 1,
        "unlim" => 3,
        _ => 2,
    }
}

thread_local! {
    // `Gate` holds `Rc`s (it lives in one proxy-wasm VM), so one per thread, built once.
    static GATE: Gate = {
        let mut w = Vec::new();
        let cfg = config::parse(CONFIG.as_bytes(), &mut w)
            .unwrap_or_else(|e| panic!("fixed config refused: {e}"));
        assert!(w.is_empty(), "{w:?}");
        Gate::new(cfg)
    };
}

/// One input.
pub fn run(data: &[u8]) {
    GATE.with(|gate| run_with(gate, data))
}

fn run_with(gate: &Gate, data: &[u8]) {
    let parts = common::lines(data, 10);
    let path = parts.first().copied().unwrap_or(b"/");
    let method = parts.get(1).copied().unwrap_or(b"GET");
    let mut owned = vec![
        (":method".to_string(), method.to_vec()),
        (":path".to_string(), path.to_vec()),
    ];
    owned.extend(parts.iter().skip(2).map(|l| common::header(l)));
    let headers = common::view(&owned);

    let store = common::FuzzStore::default();
    let mut allowed = 0;
    let mut key = String::new();
    for _ in 0..3 {
        let d = decide(gate, &headers, &store, NOW_US);
        common::check_decision(&gate.cfg, &headers, &d);
        if let Decision::Allow(a) = &d {
            if a.log.decision == "allowed" {
                allowed += 1;
                key = a.log.key_id().to_string();
            }
        }
    }
    if allowed > 0 {
        assert!(
            allowed <= burst_of(&key),
            "key `{key}` passed {allowed} times in one instant"
        );
    }

    // The key-service outcomes `decide` never reaches: unknown keys defer to the (configured,
    // never called) service, which then times out (fail-open), is unavailable, or the client is
    // throttled. Each decision keeps the same invariants.
    if let Step::Verify(p) = gate.begin(&headers) {
        let digest = keygate::hash::sha256(p.credential.secret.as_bytes());
        if gate
            .embedded_verdict(&p, &digest, NOW_US / 1_000_000)
            .is_none()
        {
            let ms = u64::from(data.last().copied().unwrap_or(0)) * 97;
            for d in [
                gate.unavailable(&p, ms / 100),
                gate.throttled(&p, ms),
                gate.fail_open(p, "timeout"),
            ] {
                common::check_decision(&gate.cfg, &headers, &d);
            }
        }
    }
}
