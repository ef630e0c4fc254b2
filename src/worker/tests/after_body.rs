//! A request whose body a check reads has its limit counted once the body passed: refused from
//! its body, it spends nothing, in either tier; the limit's answer (headers, a 429) comes then,
//! and a fleet engine's answer is awaited with the body paused.

use super::embedded;
use super::fake::{hits, rls, Sim, ROOT};
use crate::worker::Action;

const FORM: &str = "application/x-www-form-urlencoded";

/// Plan `p` at `requests` an hour, an owner route, and `extra` members.
fn config(requests: u64, extra: &str) -> String {
    embedded(&format!(
        r#","rate_limit":{{"plans":{{"p":{{"requests":{requests},"window_s":3600}}}}}},
           "routes":[{{"prefix":"/api/event","owner":{{"query":"_id","resource":"aggregator","status":404}}}}]{extra}"#
    ))
}

fn fleet(mode: &str) -> String {
    config(
        1000,
        &format!(r#","fleet":{{"cluster":"rls","timeout_ms":200,"default":"{mode}"}}"#),
    )
}

fn post(sim: &mut Sim, ctx: u32) -> Action {
    sim.headers(
        ctx,
        &[
            (":method", "POST"),
            (":path", "/api/event?_id=agg-1"),
            ("x-api-key", "secret-1"),
            ("content-type", FORM),
        ],
        true,
    )
}

fn remaining(sim: &mut Sim, ctx: u32) -> Option<String> {
    sim.response(ctx);
    sim.response_header(ctx, "x-ratelimit-remaining")
}

#[test]
fn local_tier_a_denial_from_the_body_spends_no_token() {
    let mut sim = Sim::new(&config(3, ""));
    for ctx in 1..=3 {
        assert_eq!(post(&mut sim, 10 + ctx), Action::Continue);
        assert_eq!(sim.body(10 + ctx, b"_id=victim", true), Action::Pause);
        assert_eq!(sim.status(10 + ctx), Some(404));
    }
    assert_eq!(
        sim.get(20, "/api/event?_id=agg-1", "secret-1"),
        Action::Continue
    );
    assert_eq!(remaining(&mut sim, 20).as_deref(), Some("2"));
    // let through: identity with the headers, the rate-limit headers from the limit at the body
    assert_eq!(post(&mut sim, 21), Action::Continue);
    assert_eq!(
        sim.upstream_header(21, "x-keygate-key-id").as_deref(),
        Some("k1")
    );
    assert_eq!(sim.body(21, b"_id=agg-1", true), Action::Continue);
    assert_eq!(remaining(&mut sim, 21).as_deref(), Some("1"));
    post(&mut sim, 22);
    assert_eq!(sim.body(22, b"name=x", true), Action::Continue);
    // the 429 comes at the body, and the stream is ended
    post(&mut sim, 23);
    assert_eq!(sim.body(23, b"_id=agg-1", true), Action::Pause);
    assert_eq!(sim.status(23), Some(429));
    assert_eq!(
        sim.reply_header(23, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(sim.body(23, b"more", true), Action::Pause);
    assert!(sim.stream(23).reset);
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.requests.resource_forbidden"), 3);
    assert_eq!(sim.metric("keygate.requests.allowed"), 3);
    assert_eq!(sim.metric("keygate.requests.rate_limited"), 1);
    assert!(sim
        .stream(23)
        .log_state
        .unwrap()
        .starts_with("decision=rate-limited"));
}

#[test]
fn per_request_fleet_the_engine_is_asked_when_the_body_passed() {
    let mut sim = Sim::new(&fleet("request"));
    assert_eq!(post(&mut sim, 7), Action::Continue);
    assert!(sim.calls().is_empty(), "no engine call on the headers");
    assert_eq!(sim.body(7, b"_id=victim", true), Action::Pause);
    assert_eq!(sim.status(7), Some(404));
    assert!(
        sim.calls().is_empty(),
        "refused from its body: the engine never counted it"
    );
    // passed: the body stays paused until the engine answers
    post(&mut sim, 8);
    assert_eq!(sim.body(8, b"_id=agg-1", true), Action::Pause);
    let c = sim.last_call();
    assert_eq!(hits(&c), 1);
    assert_eq!(sim.resumed(8), 0);
    sim.answer(c.token, rls(false, Some((30, 29, 60))));
    assert_eq!(sim.resumed(8), 1);
    sim.response(8);
    assert_eq!(
        sim.response_header(8, "x-ratelimit-limit").as_deref(),
        Some("30")
    );
    assert_eq!(
        sim.response_header(8, "x-ratelimit-remaining").as_deref(),
        Some("29")
    );
    // the engine's refusal is the 429
    post(&mut sim, 9);
    sim.body(9, b"_id=agg-1", true);
    let c = sim.last_call();
    sim.answer(c.token, rls(true, Some((30, 0, 60))));
    assert_eq!(sim.status(9), Some(429));
    assert_eq!(sim.resumed(9), 0);
    // a body that ended in trailers waits the same way, and goes on at the answer itself
    sim.advance(60_000);
    post(&mut sim, 10);
    assert_eq!(sim.body(10, b"_id=agg-1", false), Action::Pause);
    assert_eq!(sim.trailers(10, &[("x-trace", "1")]), Action::Pause);
    let c = sim.last_call();
    sim.answer(c.token, rls(false, Some((30, 28, 60))));
    assert_eq!(sim.resumed(10), 1);
    // the upstream answering first while the engine is asked ends the request, and the late
    // answer finds nobody
    post(&mut sim, 11);
    sim.body(11, b"_id=agg-1", true);
    let c = sim.last_call();
    assert_eq!(sim.response(11), Action::Pause);
    assert_eq!(sim.status(11), Some(502));
    sim.answer(c.token, rls(false, Some((30, 27, 60))));
    assert_eq!((sim.stream(11).replies, sim.resumed(11)), (1, 0));
}

#[test]
fn leased_fleet_a_denial_from_the_body_takes_no_token_from_the_lease() {
    let mut sim = Sim::new(&fleet("leased"));
    post(&mut sim, 7);
    assert_eq!(sim.body(7, b"_id=victim", true), Action::Pause);
    assert_eq!(sim.status(7), Some(404));
    assert!(sim.calls().is_empty());
    post(&mut sim, 8);
    assert_eq!(sim.body(8, b"_id=agg-1", true), Action::Pause);
    let c = sim.last_call();
    assert_eq!(hits(&c), 100, "10% of the plan's 1000");
    sim.answer(c.token, rls(false, Some((1000, 900, 60))));
    assert_eq!(sim.resumed(8), 1);
    // a body refused now leaves the lease as it was: the next one passed spends the next token
    post(&mut sim, 9);
    sim.body(9, b"_id=victim", true);
    assert_eq!(sim.status(9), Some(404));
    post(&mut sim, 10);
    assert_eq!(
        sim.body(10, b"_id=agg-1", true),
        Action::Continue,
        "from the lease"
    );
    assert_eq!(remaining(&mut sim, 10).as_deref(), Some("998"));
    assert_eq!(sim.calls().len(), 1);
}
