//! The fleet tier across callbacks: engine calls, their answers and failures, leases.

use super::embedded;
use super::fake::{grpc_failure, hits, http, rls, Sim, ROOT};
use crate::worker::Action;

/// Plan `p` at `requests` a minute, counted by the fleet in `mode` with `extra` fleet members.
fn fleet(requests: u64, mode: &str, extra: &str) -> String {
    embedded(&format!(
        r#","rate_limit":{{"plans":{{"p":{{"requests":{requests},"window_s":60}}}}}},
           "fleet":{{"cluster":"rls","timeout_ms":200,"default":"{mode}"{extra}}}"#
    ))
}

#[test]
fn a_refused_lease_is_asked_again_for_exactly_what_remains() {
    // engines grant a lease all or nothing: asked for 10 with 3 left, they refuse it; keygate
    // asks once more for exactly the 3, instead of answering 429 while tokens remain
    let mut sim = Sim::new(&fleet(100, "leased", ""));
    assert_eq!(sim.get(7, "/a", "secret-1"), Action::Pause);
    let first = sim.last_call();
    assert_eq!(first.cluster, "rls");
    assert_eq!(hits(&first), 10, "10% of the plan's 100");
    sim.answer(first.token, rls(true, Some((100, 3, 30))));
    let again = sim.last_call();
    assert_ne!(again.token, first.token);
    assert_eq!(hits(&again), 3);
    assert_eq!(sim.status(7), None, "no 429 while tokens remain");
    sim.answer(again.token, rls(false, Some((100, 0, 30))));
    assert_eq!(sim.resumed(7), 1);
    // the other two tokens are this replica's: spent without a call
    for ctx in [8, 9] {
        assert_eq!(sim.get(ctx, "/a", "secret-1"), Action::Continue);
    }
    assert_eq!(sim.calls().len(), 2);
    // then the engine is asked again, and its refusal is a 429 now
    assert_eq!(sim.get(10, "/a", "secret-1"), Action::Pause);
    let third = sim.last_call();
    sim.answer(third.token, rls(true, Some((100, 0, 30))));
    assert_eq!(sim.status(10), Some(429));
    assert_eq!(sim.reply_header(10, "retry-after").as_deref(), Some("30"));
}

#[test]
fn a_timeout_is_told_apart_from_an_unavailable_engine() {
    // Envoy answers both with gRPC UNAVAILABLE: a failure at 90% of the call's timeout or later
    // is a timeout, one well before it an engine that is not there
    let mut sim = Sim::new(&fleet(100, "request", ""));
    for (ctx, after_ms) in [(7, 50), (8, 179), (9, 180), (10, 250)] {
        assert_eq!(sim.get(ctx, "/a", "secret-1"), Action::Pause);
        let c = sim.last_call();
        assert_eq!(c.timeout_ms, 200);
        sim.advance(after_ms);
        sim.answer(c.token, grpc_failure(14));
        assert_eq!(sim.resumed(ctx), 1, "fell back to the local tier");
    }
    sim.get(11, "/a", "secret-1");
    let c = sim.last_call();
    sim.answer(c.token, http(504, ""));
    sim.get(12, "/a", "secret-1");
    let c = sim.last_call();
    sim.answer(c.token, grpc_failure(4));
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.fleet.failure.unavailable"), 2);
    assert_eq!(sim.metric("keygate.fleet.failure.timeout"), 4);
    assert_eq!(sim.metric("keygate.fleet.fallback_local"), 6);
}

#[test]
fn an_engine_failure_takes_on_failure_local_or_closed() {
    // `local`: this Envoy's own bucket for the plan (2 a minute here), never a free pass
    let mut sim = Sim::new(&fleet(2, "request", r#","on_failure":"local""#));
    for (ctx, want) in [(7, Some("1")), (8, Some("0"))] {
        sim.get(ctx, "/a", "secret-1");
        let c = sim.last_call();
        sim.answer(c.token, http(503, ""));
        assert_eq!(sim.resumed(ctx), 1);
        sim.response(ctx);
        assert_eq!(
            sim.response_header(ctx, "x-ratelimit-remaining").as_deref(),
            want
        );
    }
    sim.get(9, "/a", "secret-1");
    let c = sim.last_call();
    sim.answer(c.token, http(503, ""));
    assert_eq!(sim.status(9), Some(429));
    // a call the host refuses to dispatch is answered on the request's own stack
    sim.rec.borrow_mut().refuse_dispatch = 1;
    assert_eq!(sim.get(10, "/a", "secret-1"), Action::Pause);
    assert_eq!(sim.status(10), Some(429));
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.fleet.failure.status"), 3);
    assert_eq!(sim.metric("keygate.fleet.failure.dispatch"), 1);

    // `closed`: 503 rate-limit-unavailable
    let mut sim = Sim::new(&fleet(
        2,
        "request",
        r#","on_failure":"closed","retry_after_s":7"#,
    ));
    sim.get(7, "/a", "secret-1");
    let c = sim.last_call();
    sim.answer(c.token, grpc_failure(14));
    assert_eq!(sim.status(7), Some(503));
    assert_eq!(sim.slug(7).as_deref(), Some("rate-limit-unavailable"));
    assert_eq!(sim.reply_header(7, "retry-after").as_deref(), Some("7"));
}

#[test]
fn an_over_limit_is_remembered_until_the_engines_reset() {
    let mut sim = Sim::new(&fleet(100, "request", ""));
    sim.get(7, "/a", "secret-1");
    let c = sim.last_call();
    sim.answer(c.token, rls(true, Some((100, 0, 5))));
    assert_eq!(sim.status(7), Some(429));
    sim.advance(4999);
    assert_eq!(sim.get(8, "/a", "secret-1"), Action::Pause);
    assert_eq!(sim.status(8), Some(429));
    assert_eq!(sim.reply_header(8, "retry-after").as_deref(), Some("1"));
    assert_eq!(sim.calls().len(), 1, "remembered: no call");
    sim.advance(1);
    sim.get(9, "/a", "secret-1");
    assert_eq!(sim.calls().len(), 2);
}

#[test]
fn lease_waiters_out_of_time_take_on_failure_and_the_rest_ask_again() {
    // requests queued on a lease call keep their own deadline (fleet.timeout_ms after they
    // arrived); a lease too small for them all leaves the rest to ask again within their time
    let mut sim = Sim::new(&fleet(
        100,
        "leased",
        r#","on_failure":"closed","lease":{"max":1}"#,
    ));
    sim.get(7, "/a", "secret-1");
    let first = sim.last_call();
    assert_eq!(hits(&first), 1);
    sim.advance(150);
    sim.get(8, "/a", "secret-1");
    sim.get(9, "/a", "secret-1");
    assert_eq!(sim.calls().len(), 1, "one lease call per owner per worker");
    sim.advance(40);
    // one token for three waiters: 7 is served, 8 and 9 ask again with 160 ms left
    sim.answer(first.token, rls(false, Some((100, 50, 30))));
    assert_eq!(sim.resumed(7), 1);
    let again = sim.last_call();
    assert_ne!(again.token, first.token);
    assert_eq!(again.timeout_ms, 160);
    assert_eq!(hits(&again), 1);
    sim.advance(170);
    sim.answer(again.token, http(504, ""));
    for ctx in [8, 9] {
        assert_eq!(sim.status(ctx), Some(503), "{ctx}");
    }
}
