//! Helpers shared by the fuzz targets (included with `#[path]`, so each target stays one binary).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use keygate::store::{SetOutcome, SharedStore};

/// Splits `data` into lines at `\n` (a byte no header value can hold once Envoy has parsed it),
/// keeping at most `max` lines; the last one takes the rest, `\n`s included.
pub fn lines(data: &[u8], max: usize) -> Vec<&[u8]> {
    data.splitn(max, |&b| b == b'\n').collect()
}

/// `name:value` → (lower-case name, raw value); the name ends at the first `:` after its first
/// byte, so `:path:/x` is the pseudo-header `:path`. A line without a name is an
/// `authorization` header.
pub fn header(line: &[u8]) -> (String, Vec<u8>) {
    match line.iter().skip(1).position(|&b| b == b':') {
        Some(i) => {
            let name = String::from_utf8_lossy(&line[..i + 1]).to_ascii_lowercase();
            (name, line[i + 2..].to_vec())
        }
        None => ("authorization".to_string(), line.to_vec()),
    }
}

/// The borrowed form keygate's API takes (`&[(&str, &[u8])]`, as the host hands them over).
pub fn view(h: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    h.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect()
}

/// Envoy shared data with its CAS rules (proxy-wasm-cpp-host `SharedData`): `cas == 0` writes
/// unconditionally, a non-zero `cas` must match, a missing key is inserted whatever `cas` says.
/// `keygate::store::memory::MemoryStore` is `#[cfg(test)]`, hence this copy.
#[derive(Default)]
pub struct FuzzStore {
    pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl SharedStore for FuzzStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        let mut map = self.map.borrow_mut();
        match map.get_mut(key) {
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
                SetOutcome::Written
            }
            Some(entry) if cas != 0 && cas != entry.1 => SetOutcome::CasMismatch,
            Some(entry) => {
                *entry = (value.to_vec(), next);
                SetOutcome::Written
            }
        }
    }
}

/// Reference percent-encoder: every byte as `%XX` (so decoding must give the bytes back).
pub fn encode_all(b: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len() * 3);
    for &c in b {
        out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

use keygate::config::Config;
use keygate::credential;
use keygate::gate::{Decision, FAIL_OPEN_HEADER};
use keygate::query;

/// Invariants every decision must keep, whatever the request:
/// - a denial is a well-formed RFC 9457 body whose `status`/`type` match the reply, 401s carry a
///   challenge, and no header keygate emits holds a control character (no header injection);
/// - an allowed request never reaches the upstream with a client-sent identity header (or the
///   fail-open marker) left in place, nor, when `hide_from_upstream` is on, with the credential's
///   query parameter or an API-key header still there.
pub fn check_decision(cfg: &Config, headers: &[(&str, &[u8])], d: &Decision) {
    fn printable<N: AsRef<str>>(h: &[(N, String)]) {
        for (n, v) in h {
            let n = n.as_ref();
            assert!(
                !n.is_empty() && !v.chars().any(char::is_control),
                "control character in emitted header {n}: {v:?}"
            );
        }
    }
    let path: &[u8] = headers
        .iter()
        .rev()
        .find(|(n, _)| *n == ":path")
        .map_or(b"/", |(_, v)| *v);
    match d {
        Decision::Deny(reply, log) => {
            assert!(
                [400, 401, 403, 404, 429, 503].contains(&reply.status),
                "status {}",
                reply.status
            );
            assert_eq!(log.decision, reply.kind.slug());
            let body: serde_json::Value =
                serde_json::from_str(&reply.body).expect("problem body is JSON");
            assert_eq!(body["status"].as_u64(), Some(u64::from(reply.status)));
            assert_eq!(
                body["type"].as_str(),
                Some(format!("{}{}", cfg.problem_base, reply.kind.slug()).as_str())
            );
            let instance = body["instance"].as_str().unwrap_or("");
            assert!(!instance.contains('?'), "the query leaked into `instance`");
            if reply.status == 401 {
                assert!(
                    reply.header("www-authenticate").is_some(),
                    "401 without challenge"
                );
            }
            printable(&reply.headers);
        }
        Decision::Allow(a) => {
            printable(&a.set);
            if let Some(r) = &a.rate {
                printable(&r.pairs());
            }
            let overwritten = |n: &str| a.set.iter().any(|(s, _)| s == n);
            let removed = |n: &str| a.remove.iter().any(|r| r == n);
            let mut forgeable: Vec<&str> = cfg.identity_headers.names().to_vec();
            forgeable.push(FAIL_OPEN_HEADER);
            for &(n, _) in headers {
                if forgeable.contains(&n) {
                    assert!(
                        removed(n) || overwritten(n),
                        "client-sent identity header `{n}` reaches the upstream ({})",
                        a.log.decision.as_str()
                    );
                }
            }
            if a.log.decision == "allowed" {
                // the host sends the identity's headers; an allowed request must carry one
                let id = a
                    .identity
                    .as_deref()
                    .expect("an allowed request carries its identity");
                assert!(!id.key_id.is_empty());
                assert_eq!(a.log.key_id(), id.key_id);
            }
            if cfg.hide_credentials {
                let c = &cfg.credentials;
                let eff: &[u8] = a.path.as_deref().unwrap_or(path);
                if let (Some(p), (_, Some(q))) = (&c.query_param, query::split_path(eff)) {
                    assert!(
                        query::params(q).all(|x| !query::name_is(x.name, p)),
                        "`{p}` reaches the upstream in {:?}",
                        String::from_utf8_lossy(eff)
                    );
                }
                for &(n, v) in headers {
                    if c.api_key_headers.iter().any(|h| h == n) {
                        assert!(removed(n), "API-key header `{n}` reaches the upstream");
                    }
                    if n == "authorization" {
                        // Whatever keygate itself reads as a Basic/Bearer credential is hidden.
                        let alone = [(n, v)];
                        let ours = credential::extract(c, &alone, b"/")
                            .map_or(true, |e| e.carriers.authorization);
                        if ours {
                            assert!(
                                removed(n),
                                "Authorization {:?} reaches the upstream ({})",
                                String::from_utf8_lossy(v),
                                a.log.decision.as_str()
                            );
                        }
                    }
                }
            }
        }
    }
}
