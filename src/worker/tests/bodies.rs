//! Held bodies across callbacks: reconfigurations, trailers, the table's bound, timeouts.

use super::fake::{valid, Sim, ROOT};
use super::{embedded, feed_ready, remote};
use crate::worker::Action;

const OWNER_ROUTE: &str = r#","routes":[{"prefix":"/api/event",
    "owner":{"query":"_id","resource":"aggregator","status":404}}]"#;

const FORM: &str = "application/x-www-form-urlencoded";

/// `POST /api/event?_id=agg-1` with a form body to follow.
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

#[test]
fn a_body_held_across_a_reconfiguration_is_checked_by_the_plugin_that_held_it() {
    // the new configuration has no owner route: had the body gone to it, it would have gone on
    // unchecked
    let mut sim = Sim::new(&embedded(OWNER_ROUTE));
    assert_eq!(post(&mut sim, 7), Action::Continue);
    assert!(sim.configure(2, &embedded("")));
    assert_eq!(sim.body(7, b"_id=victim", true), Action::Pause);
    assert_eq!(sim.status(7), Some(404));
    // new streams go to the new plugin
    assert_eq!(post(&mut sim, 8), Action::Continue);
    assert_eq!(sim.body(8, b"_id=victim", true), Action::Continue);
    // a chunk that still comes for the ended stream is refused, whichever plugin it reaches
    assert_eq!(sim.body(7, b"more", true), Action::Pause);
    assert!(sim.stream(7).reset);
    // the retired plugin goes once it holds nothing
    sim.tick(2);
    assert!(sim.vm.worker(ROOT).is_none());
}

#[test]
fn trailers_that_came_during_a_verdict_let_the_body_on_from_the_next_tick() {
    // Envoy hands over the body and the trailers it buffered during the key-service call inside
    // its own resumption; continuing from there skips the body for the filters after keygate
    let mut sim = Sim::new(&remote(OWNER_ROUTE));
    feed_ready(&mut sim);
    sim.tick(ROOT);
    let period = sim.tick_period(ROOT);
    assert_eq!(period, 1000);
    assert_eq!(post(&mut sim, 7), Action::Pause);
    let c = sim.last_call();
    sim.answer(c.token, valid("k1", "free"));
    assert_eq!(sim.resumed(7), 1);
    assert_eq!(sim.body(7, b"name=x", false), Action::Pause);
    assert_eq!(sim.trailers(7, &[("x-trace", "1")]), Action::Pause);
    assert_eq!(sim.resumed(7), 1, "not from inside the resumption");
    assert_eq!(sim.tick_period(ROOT), 1);
    sim.tick(ROOT);
    assert_eq!(sim.resumed(7), 2);
    assert_eq!(sim.tick_period(ROOT), period);
    assert_eq!(sim.status(7), None);

    // without a pause before it, the body goes on at the trailers themselves
    let mut sim = Sim::new(&embedded(OWNER_ROUTE));
    assert_eq!(post(&mut sim, 7), Action::Continue);
    assert_eq!(sim.body(7, b"name=x", false), Action::Pause);
    assert_eq!(sim.trailers(7, &[("x-trace", "1")]), Action::Continue);

    // trailers that would change how the body reads refuse it
    assert_eq!(post(&mut sim, 8), Action::Continue);
    sim.body(8, b"name=x", false);
    assert_eq!(sim.trailers(8, &[("cookie", "_id=victim")]), Action::Pause);
    assert_eq!(sim.slug(8).as_deref(), Some("request-ambiguous"));
}

#[test]
fn the_held_table_is_bounded_and_never_forgets_a_live_stream() {
    let mut sim = Sim::new(&embedded(&format!(
        r#"{OWNER_ROUTE},"bodies":{{"max_held":2,"timeout_ms":10000}}"#
    )));
    assert_eq!(post(&mut sim, 7), Action::Continue);
    assert_eq!(post(&mut sim, 8), Action::Continue);
    // full: the third is refused, retry shortly
    assert_eq!(post(&mut sim, 9), Action::Pause);
    assert_eq!(sim.status(9), Some(503));
    assert_eq!(sim.slug(9).as_deref(), Some("body-unchecked"));
    assert_eq!(sim.reply_header(9, "retry-after").as_deref(), Some("1"));
    // a stream that went away leaves room, found by the next sweep (at most every 100 ms)
    sim.gone(7);
    assert_eq!(post(&mut sim, 10), Action::Pause, "swept too recently");
    sim.advance(100);
    assert_eq!(post(&mut sim, 11), Action::Continue);
    // the live one held all along is still checked
    assert_eq!(sim.body(8, b"_id=victim", true), Action::Pause);
    assert_eq!(sim.status(8), Some(404));
    assert_eq!(sim.body(11, b"_id=agg-1", true), Action::Continue);
}

#[test]
fn a_body_late_or_overtaken_by_the_upstream_ends_its_request() {
    let mut sim = Sim::new(&embedded(&format!(
        r#"{OWNER_ROUTE},"bodies":{{"timeout_ms":3000}}"#
    )));
    assert_eq!(post(&mut sim, 7), Action::Continue);
    sim.body(7, b"_id=ag", false);
    sim.advance(2999);
    sim.tick(ROOT);
    assert_eq!(sim.status(7), None);
    sim.advance(1);
    sim.tick(ROOT);
    assert_eq!(sim.status(7), Some(408));
    assert_eq!(sim.slug(7).as_deref(), Some("body-unchecked"));
    // the upstream answered on the headers alone: its answer does not reach the client
    assert_eq!(post(&mut sim, 8), Action::Continue);
    assert_eq!(sim.response(8), Action::Pause);
    assert_eq!(sim.status(8), Some(502));
    assert_eq!(sim.body(8, b"_id=agg-1", true), Action::Pause);
    assert!(sim.stream(8).reset);
}

#[test]
fn a_public_form_post_is_held_and_read_for_a_method_override() {
    // Rack, Laravel, Symfony, Spring and Express turn a form POST with `_method=DELETE` into a
    // DELETE: under a public POST rule it would dodge the rule for DELETE
    let mut sim = Sim::new(&embedded(
        r#","routes":[{"prefix":"/c","methods":["POST"],"access":"public"},{"prefix":"/c","scopes":["write"]}]"#,
    ));
    let form = |sim: &mut Sim, ctx| {
        sim.headers(
            ctx,
            &[
                (":method", "POST"),
                (":path", "/c/42"),
                ("content-type", FORM),
            ],
            true,
        )
    };
    assert_eq!(form(&mut sim, 7), Action::Continue);
    assert_eq!(sim.body(7, b"a=1&_method", false), Action::Pause);
    assert_eq!(sim.body(7, b"=DELETE", true), Action::Pause);
    assert_eq!(sim.status(7), Some(400));
    assert_eq!(sim.slug(7).as_deref(), Some("request-ambiguous"));
    assert_eq!(form(&mut sim, 8), Action::Continue);
    assert_eq!(sim.body(8, b"text=hi", true), Action::Continue);
    assert_eq!(sim.status(8), None);
    // the DELETE itself needs a key
    let delete = [(":method", "DELETE"), (":path", "/c/42")];
    assert_eq!(sim.headers(9, &delete, false), Action::Pause);
    assert_eq!(sim.status(9), Some(401));
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.requests.public"), 1);
    assert_eq!(sim.metric("keygate.requests.request_ambiguous"), 1);
}
