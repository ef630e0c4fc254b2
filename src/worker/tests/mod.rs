//! Scenario tests: the worker driven natively over `FakeHost`, callback by callback, for the
//! rules that span callbacks (a verdict that arrives late, a lease answered after its waiters
//! waited, a body held across a reconfiguration). Each names the rule it guards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod after_body;
mod bodies;
mod fake;
mod fleet;
mod keyservice;
mod logline;
mod memo;
mod slots;

use crate::hash::{sha256, to_hex};
use fake::Sim;

/// A plugin with a key service (`ks`), a feed, plan `free` (100 a minute), no throttle, plus
/// `extra` members.
fn remote(extra: &str) -> String {
    format!(
        r#"{{"key_service":{{"cluster":"ks","timeout_ms":1000,"revocation_poll_ms":1000}},
            "rate_limit":{{"plans":{{"free":{{"requests":100,"window_s":60}}}}}},
            "auth_throttle":false{extra}}}"#
    )
}

/// A plugin with embedded key `secret-1` (plan `p`, resource `agg-1`), plus `extra` members.
fn embedded(extra: &str) -> String {
    format!(
        r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p",
            "resources":{{"aggregator":["agg-1"]}}}}],"auth_throttle":false{extra}}}"#,
        to_hex(&sha256(b"secret-1"))
    )
}

/// The feed's first poll answered (cursor 0, nothing revoked): verdicts may be cached from now.
fn feed_ready(sim: &mut Sim) {
    sim.tick(fake::ROOT);
    let c = sim.last_call();
    assert!(c.header(":path").unwrap().contains("since=-1"), "{c:?}");
    sim.answer(c.token, fake::http(200, r#"{"cursor":0,"revoked":[]}"#));
}

/// Two workers of one process configured with `cfg`, the first with its feed polled once.
fn two_workers(cfg: &str) -> (Sim, Sim) {
    let mut w1 = Sim::new(cfg);
    feed_ready(&mut w1);
    let w2 = Sim::in_process(w1.process.clone(), cfg);
    (w1, w2)
}
