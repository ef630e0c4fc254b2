//! `config::parse` on arbitrary bytes (use `-dict=tests/fuzz/dict/config.dict`). When a
//! configuration is accepted, its checked invariants are asserted and a `Gate` built from it
//! decides a handful of fixed requests (so route, owner, rate and identity-header settings the
//! fuzzer invents are exercised too), each checked with `common::check_decision`.

use crate::common;

use keygate::config;
use keygate::gate::{decide, Gate};

const NOW_US: u64 = 1_800_000_000_000_000;

fn header_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&c)
        })
}

/// One input.
pub fn run(data: &[u8]) {
    let mut warnings = Vec::new();
    let Ok(cfg) = config::parse(data, &mut warnings) else {
        return;
    };
    let c = &cfg.credentials;
    assert!(c.basic || c.bearer || !c.api_key_headers.is_empty() || c.query_param.is_some());
    assert!((16..=16_384).contains(&c.max_bytes));
    assert!(c
        .api_key_headers
        .iter()
        .all(|h| header_name_ok(h) && h != "authorization"));
    for n in cfg.identity_headers.names() {
        assert!(header_name_ok(n), "identity header `{n}`");
        assert!(n != "authorization" && !c.api_key_headers.iter().any(|h| h == n));
    }
    assert!(!cfg.realm.is_empty() && !cfg.realm.contains('"'));

    // Fixed requests through whatever gate this configuration makes.
    let mut forged: Vec<(String, Vec<u8>)> = cfg
        .identity_headers
        .names()
        .iter()
        .map(|n| (n.to_string(), b"forged".to_vec()))
        .collect();
    forged.push(("x-keygate-fail-open".into(), b"1".to_vec()));
    let h = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        v.extend(forged.iter().cloned());
        v
    };
    let api_header = c.api_key_headers.first().cloned().unwrap_or_default();
    let qp = c.query_param.clone().unwrap_or_default();
    let q_path = format!("/v1/items/a1?x=1&{qp}=fuzz-key&agg=a1");
    let requests = [
        h(&[(":method", b"GET"), (":path", b"/")]),
        h(&[
            (":method", b"GET"),
            (":path", b"/v1/items/a1?agg=a1"),
            ("authorization", b"Bearer fuzz-key"),
        ]),
        h(&[
            (":method", b"POST"),
            (":path", b"/public/x?_apikey=fuzz-key"),
            ("authorization", b"Basic YWxpY2U6ZnV6ei1rZXk="),
        ]),
        h(&[
            (":method", b"GET"),
            (":path", q_path.as_bytes()),
            (api_header.as_str(), b"fuzz-key"),
        ]),
        h(&[
            (":method", b"DELETE"),
            (":path", b"/v1/items/a2"),
            ("authorization", b"Bearer nope"),
            ("x-request-id", b"r-1"),
        ]),
    ];
    let gate = Gate::new(cfg);
    let store = common::FuzzStore::default();
    for req in &requests {
        for _ in 0..2 {
            let req = common::view(req);
            let d = decide(&gate, &req, &store, NOW_US);
            common::check_decision(&gate.cfg, &req, &d);
        }
    }
}
