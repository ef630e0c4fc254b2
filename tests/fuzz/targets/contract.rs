//! `contract::{parse_verify, parse_revocations}`: key-service answers with arbitrary status and
//! body. Properties: a `Valid` verdict always has a key id, subject and plan within bounds and
//! free of control characters; it survives `identity_json` and the cache's encode/decode
//! unchanged; non-2xx and missing statuses are failures, never verdicts.
//!
//! Input: byte 0 picks the status (0: none; 1..=199: 200; 200..=229: 200 + (b - 200); else a
//! status from byte 1), the rest is the body.

use keygate::cache;
use keygate::contract::{identity_json, parse_revocations, parse_verify, ServiceFailure};
use keygate::verdict::Verdict;

fn status(data: &[u8]) -> (Option<u32>, &[u8]) {
    match data {
        [] => (Some(200), data),
        [0, rest @ ..] => (None, rest),
        [b @ 1..=199, rest @ ..] => {
            let _ = b;
            (Some(200), rest)
        }
        [b @ 200..=229, rest @ ..] => (Some(200 + u32::from(*b - 200)), rest),
        [_, s, rest @ ..] => (Some(u32::from(*s) * 3), rest),
        [_] => (Some(500), &[]),
    }
}

fn plain(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// One input.
pub fn run(data: &[u8]) {
    let (st, body) = status(data);
    let ok_status = st.is_some_and(|s| (200..300).contains(&s));

    match parse_verify(st, body) {
        Ok(a) => {
            assert!(ok_status, "a verdict from status {st:?}");
            if let Verdict::Valid(id) = &a.verdict {
                assert!(!id.key_id.is_empty() && plain(&id.key_id, 128), "{id:?}");
                assert!(!id.subject.is_empty() && plain(&id.subject, 256), "{id:?}");
                assert!(!id.plan.is_empty() && plain(&id.plan, 128), "{id:?}");
                assert!(plain(&id.account, 256), "{id:?}");
                assert!(id.scopes.len() <= 128 && id.scopes.iter().all(|s| plain(s, 256)));
                assert!(id.resources.len() <= 32);
                if let Some(l) = id.rate_limit {
                    assert!((1..=1_000_000_000).contains(&l.requests));
                    assert!((1..=31_536_000).contains(&l.window_s));
                    assert!((1..=1_000_000_000).contains(&l.burst));
                }
                // The cache stores the identity in the service's own shape: it must round-trip.
                let again = parse_verify(Some(200), identity_json(id).to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("identity_json did not re-parse: {e:?} {id:?}"));
                assert_eq!(again.verdict, a.verdict);
                let e = cache::Entry {
                    fresh_until_ms: 1,
                    stale_until_ms: 2,
                    verdict: a.verdict.clone(),
                    binding: cache::Binding::of(Some("u"), a.user_bound),
                    revoked_at_ms: 0,
                };
                assert_eq!(cache::decode(&cache::encode(&e)), Some(e));
            }
        }
        Err(f) => match st {
            None => assert_eq!(f, ServiceFailure::NoResponse),
            Some(s) if !ok_status => assert_eq!(f, ServiceFailure::Status(s)),
            Some(_) => assert_eq!(f, ServiceFailure::BadBody),
        },
    }

    match parse_revocations(st, body) {
        Ok(r) => {
            assert!(ok_status);
            let _ = (r.cursor, r.more, r.revoked.len());
        }
        Err(f) => {
            if ok_status {
                assert_eq!(f, ServiceFailure::BadBody);
            }
        }
    }
}
