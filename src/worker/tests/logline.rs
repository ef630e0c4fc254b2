//! The request's path and id in the access-log state (`crate::logline`): the credential the
//! request presents never in them, and each request's own, also when it is decided in a later
//! callback (a key-service answer, a held body).

use super::fake::{valid, Sim};
use super::{embedded, feed_ready, remote};
use crate::worker::Action;

fn state(sim: &Sim, ctx: u32) -> String {
    sim.stream(ctx).log_state.unwrap_or_default()
}

#[test]
fn a_key_in_the_path_or_request_id_is_replaced_and_the_rest_published_as_sent() {
    let mut sim = Sim::new(&embedded(""));
    let h = [
        (":method", "GET"),
        (":path", "/emb/secret-1/x?q=secret-1"),
        ("x-api-key", "secret-1"),
        ("x-request-id", "rid-secret%2D1"),
    ];
    assert_eq!(sim.headers(1, &h, false), Action::Continue);
    assert_eq!(
        state(&sim, 1),
        "decision=allowed key_id=k1 account=acme plan=p path=/emb/[REDACTED]/x request_id=rid-[REDACTED]"
    );
    // without the key in them: as sent (a space, refused by keygate, cannot add a field)
    let h = [
        (":method", "GET"),
        (":path", "/a b/ key_id=forged"),
        ("x-api-key", "secret-1"),
        ("x-request-id", "r-1"),
    ];
    sim.headers(2, &h, false);
    assert_eq!(
        state(&sim, 2),
        "decision=request-ambiguous key_id=- account=- plan=- path=/a%20b/%20key_id=forged request_id=r-1"
    );
}

#[test]
fn a_request_refused_or_public_has_every_presented_credential_replaced() {
    let mut sim = Sim::new(&embedded(
        r#","routes":[{"prefix":"/pub","access":"public"},{"prefix":"/shut","access":"closed"}]"#,
    ));
    for (ctx, path) in [(1, "/pub/secret-1"), (2, "/shut/secret-1")] {
        let h = [
            (":method", "GET"),
            (":path", path),
            ("authorization", "Bearer secret-1"),
        ];
        sim.headers(ctx, &h, false);
        let s = state(&sim, ctx);
        assert!(s.contains("/[REDACTED] request_id=-"), "{s}");
        assert!(!s.contains("secret-1"), "{s}");
    }
    // an unknown key is replaced too (it was presented)
    sim.get(3, "/x/nope-key-9", "nope-key-9");
    let s = state(&sim, 3);
    assert!(
        s.starts_with("decision=credential-invalid") && s.contains("path=/x/[REDACTED]"),
        "{s}"
    );
}

#[test]
fn a_request_decided_later_gets_its_own_path() {
    let mut sim = Sim::new(&remote(""));
    feed_ready(&mut sim);
    assert_eq!(sim.get(7, "/seven/secret-1", "secret-1"), Action::Pause);
    let call = sim.last_call();
    // another request is decided meanwhile (refused: no key)
    sim.headers(8, &[(":method", "GET"), (":path", "/eight")], false);
    assert!(state(&sim, 8).contains("path=/eight"));
    sim.answer(call.token, valid("k7", "free"));
    assert_eq!(sim.resumed(7), 1);
    assert_eq!(
        state(&sim, 7),
        "decision=allowed key_id=k7 account=acme plan=free path=/seven/[REDACTED] request_id=-"
    );
}

#[test]
fn a_held_body_keeps_the_path_to_its_last_decision() {
    let mut sim = Sim::new(&embedded(
        r#","routes":[{"prefix":"/api/event","owner":{"query":"_id","resource":"aggregator","status":404}}]"#,
    ));
    let post = |sim: &mut Sim, ctx: u32| {
        sim.headers(
            ctx,
            &[
                (":method", "POST"),
                (":path", "/api/event/secret-1?_id=agg-1"),
                ("x-api-key", "secret-1"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            true,
        )
    };
    assert_eq!(post(&mut sim, 3), Action::Continue);
    assert_eq!(sim.body(3, b"_id=victim", true), Action::Pause);
    let s = state(&sim, 3);
    assert!(s.starts_with("decision=resource-forbidden"), "{s}");
    assert!(
        s.ends_with(" path=/api/event/[REDACTED] request_id=-"),
        "{s}"
    );
    assert_eq!(post(&mut sim, 4), Action::Continue);
    assert_eq!(sim.body(4, b"_id=agg-1", true), Action::Continue);
    assert!(state(&sim, 4).ends_with(" path=/api/event/[REDACTED] request_id=-"));
}

#[test]
fn without_the_access_log_state_nothing_is_published() {
    let mut sim = Sim::new(&embedded(r#","access_log_state":false"#));
    sim.get(1, "/secret-1", "secret-1");
    assert_eq!(sim.stream(1).log_state, None);
}
