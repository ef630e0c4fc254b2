//! The key service across callbacks: calls shared by waiters, late answers, the feed.

use super::fake::{self, refused, valid, Sim, ROOT};
use super::{feed_ready, remote, two_workers};
use crate::hash::{sha256, to_hex};
use crate::worker::Action;

#[test]
fn a_revocation_racing_a_late_answer_wins() {
    // worker 1 asks the key service; while the answer is on its way, worker 2 polls the feed and
    // marks the key revoked; the valid answer that arrives afterwards must not let the request
    // in, nor be cached
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    assert_eq!(w1.get(7, "/a", "secret-1"), Action::Pause);
    let verify = w1.last_call();
    assert_eq!(verify.header(":path"), Some("/v1/keys/verify"));
    w1.advance(1000);
    w2.tick(ROOT);
    let poll = w2.last_call();
    assert!(
        poll.header(":path").unwrap().ends_with("since=0"),
        "{poll:?}"
    );
    let feed = format!(
        r#"{{"cursor":1,"revoked":[{{"key_hash":"{}"}}]}}"#,
        to_hex(&sha256(b"secret-1"))
    );
    w2.answer(poll.token, fake::http(200, &feed));
    w1.advance(5);
    w1.answer(verify.token, valid("k1", "free"));
    assert_eq!(w1.status(7), Some(401));
    assert_eq!(w1.slug(7).as_deref(), Some("credential-revoked"));
    assert_eq!(w1.resumed(7), 0);
    // and nothing valid was cached: the next request (another worker) is refused from the cache
    let mut w3 = Sim::in_process(w1.process.clone(), &cfg);
    assert_eq!(w3.get(8, "/a", "secret-1"), Action::Pause);
    assert_eq!(w3.status(8), Some(401), "{:?}", w3.calls());
    assert!(
        w3.calls().is_empty(),
        "answered from the cache's revoked mark"
    );
}

#[test]
fn a_failed_dispatch_settles_every_waiter() {
    // a call that is overdue is not joined; when the call that replaces it cannot be dispatched,
    // the requests that waited on the overdue one fail with the new one, none is left hanging
    let mut sim = Sim::new(&remote(""));
    feed_ready(&mut sim);
    assert_eq!(sim.get(7, "/a", "secret-1"), Action::Pause);
    assert_eq!(sim.get(8, "/a", "secret-1"), Action::Pause);
    assert_eq!(
        sim.calls().len(),
        2,
        "one poll, one verify shared by 7 and 8"
    );
    sim.advance(2001); // past timeout_ms + 1 s: overdue
    sim.rec.borrow_mut().refuse_dispatch = 1;
    assert_eq!(sim.get(9, "/a", "secret-1"), Action::Pause);
    for ctx in [7, 8, 9] {
        assert_eq!(sim.status(ctx), Some(503), "stream {ctx}");
        assert_eq!(
            sim.slug(ctx).as_deref(),
            Some("key-service-unavailable"),
            "{ctx}"
        );
    }
    assert_eq!(sim.resumed(7) + sim.resumed(8), 0);
    // the overdue call's answer, if it still comes, finds nobody waiting
    let first = sim.calls()[1].token;
    sim.answer(first, valid("k1", "free"));
    assert_eq!(sim.stream(7).replies, 1);
    assert_eq!(sim.resumed(7), 0);
}

#[test]
fn the_throttle_refunds_an_attempt_that_was_a_valid_key() {
    // each miss counts against the client's failed-authentication budget when its call is
    // dispatched (so concurrent misses cannot overshoot it); a valid answer gives it back
    let cfg = remote("").replace(
        r#""auth_throttle":false"#,
        r#""auth_throttle":{"failures":2,"window_s":60}"#,
    );
    let mut sim = Sim::new(&cfg);
    feed_ready(&mut sim);
    sim.rec.borrow_mut().client_address = b"10.0.0.9:4242".to_vec();
    for (ctx, key) in [(7, "valid-a"), (8, "valid-b"), (9, "valid-c")] {
        assert_eq!(sim.get(ctx, "/a", key), Action::Pause);
        assert_eq!(
            sim.status(ctx),
            None,
            "{key}: the valid keys before were refunded"
        );
        let c = sim.last_call();
        assert!(c.body.windows(key.len()).any(|w| w == key.as_bytes()));
        sim.answer(c.token, valid(key, "free"));
        assert_eq!(sim.resumed(ctx), 1, "{key} let through");
        assert_eq!(
            sim.upstream_header(ctx, "x-keygate-key-id").as_deref(),
            Some(key)
        );
        assert_eq!(sim.status(ctx), None);
    }
    // two bad keys use the budget; the third attempt is throttled without a call
    for (ctx, key) in [(10, "bad-a"), (11, "bad-b")] {
        sim.get(ctx, "/a", key);
        let c = sim.last_call();
        sim.answer(c.token, refused("UNKNOWN"));
        assert_eq!(sim.status(ctx), Some(401));
    }
    let calls = sim.calls().len();
    sim.get(12, "/a", "bad-c");
    assert_eq!(sim.status(12), Some(429));
    assert_eq!(sim.slug(12).as_deref(), Some("auth-throttled"));
    assert_eq!(sim.calls().len(), calls);
}

#[test]
fn a_refusal_is_remembered_for_the_negative_ttl_at_most_the_services_hint() {
    let mut sim = Sim::new(&remote(""));
    feed_ready(&mut sim);
    sim.get(7, "/a", "bad-1");
    let c = sim.last_call();
    sim.answer(
        c.token,
        fake::http(200, r#"{"valid":false,"code":"DISABLED","cache_ttl_s":2}"#),
    );
    assert_eq!(sim.slug(7).as_deref(), Some("credential-disabled"));
    let calls = sim.calls().len();
    sim.advance(1999);
    sim.get(8, "/a", "bad-1");
    assert_eq!(sim.slug(8).as_deref(), Some("credential-disabled"));
    assert_eq!(sim.calls().len(), calls, "answered from the negative cache");
    sim.advance(1);
    assert_eq!(sim.get(9, "/a", "bad-1"), Action::Pause);
    assert_eq!(sim.calls().len(), calls + 1, "the hint's 2 s are over");
}

#[test]
fn the_feed_pages_at_once_and_then_waits_poll_ms() {
    let mut sim = Sim::new(&remote(""));
    assert_eq!(sim.tick_period(ROOT), 100, "fast until the cursor is known");
    sim.tick(ROOT);
    let c = sim.last_call();
    sim.answer(
        c.token,
        fake::http(200, r#"{"cursor":4,"revoked":[],"more":true}"#),
    );
    let next = sim.last_call();
    assert_ne!(next.token, c.token, "the next page is asked at once");
    assert!(next.header(":path").unwrap().ends_with("since=4"));
    sim.answer(next.token, fake::http(200, r#"{"cursor":9,"revoked":[]}"#));
    sim.tick(ROOT);
    assert_eq!(sim.tick_period(ROOT), 1000, "steady: min(poll_ms, 1 s)");
    let calls = sim.calls().len();
    sim.advance(999);
    sim.tick(ROOT);
    assert_eq!(sim.calls().len(), calls, "no worker polls before poll_ms");
    sim.advance(1);
    sim.tick(ROOT);
    assert!(sim
        .last_call()
        .header(":path")
        .unwrap()
        .ends_with("since=9"));
}

#[test]
fn an_emptied_cursor_is_no_cursor_verdicts_wait_for_the_feed() {
    // another module on the vm_id "removed" the cursor (an empty value): a verdict is not cached
    // until a poll has written a cursor again (an empty value reads as present since the host
    // returns it with its token)
    use crate::store::SharedStore;
    let mut sim = Sim::new(&remote(""));
    let key = "keygate.v1:rev:cursor";
    sim.process.store.set(key, b"", 0);
    for ctx in [1, 2] {
        assert_eq!(sim.get(ctx, "/a", "k-1"), Action::Pause);
        let c = sim.last_call();
        assert_eq!(
            c.header(":path"),
            Some("/v1/keys/verify"),
            "not cached: asked again"
        );
        sim.answer(c.token, valid("k-1", "free"));
        assert_eq!(sim.resumed(ctx), 1);
    }
}
