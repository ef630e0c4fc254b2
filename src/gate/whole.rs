//! The whole decision in one call, for a store-only gate (the embedded keys, no key service):
//! phase one, the embedded verdict, the checks, a body's check, then the limit, in the order the
//! worker runs them across callbacks. The tests and fuzz targets drive the gate through it.

use super::*;

/// Convenience for a store-only gate: phase one, the embedded verdict, phase two.
pub fn decide(
    gate: &Gate,
    headers: &[(&str, &[u8])],
    store: &dyn SharedStore,
    now_us: u64,
) -> Decision {
    decide_with_body(gate, headers, b"", store, now_us)
}

/// `decide` for a request with this body: the owner check on it runs when the route reads it.
pub fn decide_with_body(
    gate: &Gate,
    headers: &[(&str, &[u8])],
    body: &[u8],
    store: &dyn SharedStore,
    now_us: u64,
) -> Decision {
    let now_ns = now_us.saturating_mul(1000);
    let (d, later) = match gate.begin(headers) {
        Step::Done(d) => (d, None),
        Step::Verify(p) => {
            let digest = crate::hash::sha256(p.credential.secret.as_bytes());
            let v = gate
                .embedded_verdict(&p, &digest, now_us / 1_000_000)
                .unwrap_or(Verdict::Refused(Refusal::Unknown));
            let mut a = match gate.admit(p, v) {
                Ok(a) => a,
                Err(d) => return d,
            };
            match gate.before_body(&mut a) {
                Some(d) => (d, Some(a)),
                None => return gate.limit_local(a, store, now_ns),
            }
        }
    };
    if let Decision::Allow(Allow {
        body: Some(c),
        identity,
        ..
    }) = &d
    {
        if let Some(deny) = gate.check_body(c, identity.as_ref(), body) {
            return deny;
        }
    }
    let Some(a) = later else { return d };
    // the body passed: its limit counts now; the upstream gets what the first decision set, with
    // the rate-limit headers of this one
    match (d, gate.limit_local(a, store, now_ns)) {
        (Decision::Allow(mut first), Decision::Allow(limited)) => {
            first.rate = limited.rate;
            first.body = None;
            first.log = limited.log;
            Decision::Allow(first)
        }
        (_, limited) => limited,
    }
}
