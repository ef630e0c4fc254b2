//! A red team on the worker memo across callbacks and workers: a revocation marked by one
//! worker reaches a verdict another memoized (fresh, past its freshness, while the service
//! fails, across a reconfiguration), and clocks that go back neither let a late valid answer
//! beat a revocation nor stop the feed.

use super::fake::{self, valid, Sim, ROOT, START};
use super::{feed_ready, remote, two_workers};
use crate::hash::{sha256, to_hex};
use crate::worker::host::Time;
use crate::worker::Action;

fn revoking(cursor: u64, secret: &str) -> fake::Answer {
    fake::http(
        200,
        &format!(
            r#"{{"cursor":{cursor},"revoked":[{{"key_hash":"{}"}}]}}"#,
            to_hex(&sha256(secret.as_bytes()))
        ),
    )
}

/// `sim` polls the feed now and is answered with `answer`.
fn poll(sim: &mut Sim, answer: fake::Answer) {
    let before = sim.calls().len();
    sim.tick(ROOT);
    assert_eq!(sim.calls().len(), before + 1, "a poll: {:?}", sim.calls());
    let c = sim.last_call();
    assert!(c.header(":path").unwrap().contains("since="), "{c:?}");
    sim.answer(c.token, answer);
}

/// `sim` lets `secret` through on stream `ctx`, asking the service if it must.
fn admitted(sim: &mut Sim, ctx: u32, secret: &str) {
    let calls = sim.calls().len();
    sim.get(ctx, "/a", secret);
    if sim.calls().len() > calls {
        let c = sim.last_call();
        sim.answer(c.token, valid("k1", "free"));
    }
    assert_eq!(sim.status(ctx), None, "{:?}", sim.slug(ctx));
    assert_eq!(sim.resumed(ctx) + u32::from(sim.calls().len() == calls), 1);
}

fn refused_revoked(sim: &mut Sim, ctx: u32, secret: &str) {
    let calls = sim.calls().len();
    assert_eq!(sim.get(ctx, "/a", secret), Action::Pause);
    assert_eq!(sim.status(ctx), Some(401), "{:?}", sim.calls());
    assert_eq!(sim.slug(ctx).as_deref(), Some("credential-revoked"));
    assert_eq!(sim.calls().len(), calls, "from the mark, no call");
}

#[test]
fn a_revocation_reaches_another_workers_memo_fresh_past_freshness_and_while_the_service_fails() {
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    admitted(&mut w2, 7, "secret-1");
    admitted(&mut w2, 8, "secret-1");
    admitted(&mut w2, 9, "secret-2");
    w2.advance(1000);
    let calls = w2.calls().len();
    admitted(&mut w2, 10, "secret-1");
    assert_eq!(w2.calls().len(), calls, "memoized");
    // w1 polls: secret-1 revoked; w2 refuses it within shared_recheck_ms (250)
    poll(&mut w1, revoking(1, "secret-1"));
    w2.advance(250);
    refused_revoked(&mut w2, 11, "secret-1");
    // secret-2 past its freshness (300 s) and revoked while the service fails: the stale verdict
    // w2 memoized is not served, the mark is read
    w2.advance(301_000);
    poll(&mut w1, revoking(2, "secret-2"));
    w2.rec.borrow_mut().refuse_dispatch = 5;
    refused_revoked(&mut w2, 12, "secret-2");
}

#[test]
fn a_reconfigured_worker_reads_the_marks_written_meanwhile() {
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    admitted(&mut w2, 7, "secret-1");
    admitted(&mut w2, 8, "secret-1");
    w2.advance(1000);
    poll(&mut w1, revoking(1, "secret-1"));
    // LDS: w2's plugin configured again (a new memo) right after the mark
    assert!(w2.configure(
        ROOT,
        &cfg.replace("\"auth_throttle\":false", "\"auth_throttle\":false ")
    ));
    refused_revoked(&mut w2, 9, "secret-1");
}

#[test]
fn a_valid_answer_to_a_call_started_before_the_clock_went_back_never_beats_a_revocation() {
    // the wall clock steps back 500 ms while w1's call is on its way; w2 marks the key revoked
    // meanwhile: the mark's time is before the call's start by the clock, not in fact. The valid
    // answer must neither let the request in nor be cached over the mark
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    w1.advance(2000);
    assert_eq!(w1.get(7, "/a", "secret-1"), Action::Pause);
    let verify = w1.last_call();
    assert_eq!(verify.header(":path"), Some("/v1/keys/verify"));
    w1.process.now.set(START.plus_ms(1500));
    poll(&mut w2, revoking(1, "secret-1"));
    w1.advance(5);
    w1.answer(verify.token, valid("k1", "free"));
    assert_eq!(w1.resumed(7), 0, "let through");
    assert_eq!(w1.status(7), Some(401));
    let mut w3 = Sim::in_process(w1.process.clone(), &cfg);
    refused_revoked(&mut w3, 8, "secret-1");
}

#[test]
fn the_feed_is_polled_after_the_clock_goes_back_an_hour() {
    // the lease was released until `poll_ms` after the last poll, by the clock of then; the
    // clock steps back an hour: the feed must still be polled within `poll_ms`, or a revocation
    // waits the hour
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    admitted(&mut w2, 7, "secret-1");
    w1.process.now.set(Time::from_ms(START.ms() - 3_600_000));
    w1.advance(1000);
    poll(&mut w1, revoking(1, "secret-1"));
    w2.advance(250);
    refused_revoked(&mut w2, 8, "secret-1");
}

#[test]
fn a_clock_step_back_shorter_than_the_call_never_lets_a_valid_answer_beat_a_revocation() {
    // the call lasts 600 ms; 100 ms into it the clock steps back 500 ms, and w2 marks the key
    // revoked: by the clock the mark is 300 ms older than the call's start, and the answer comes
    // after it (the step is not seen as one). The answer may let its own request in (the key was
    // revoked while it was on its way: within "one call"), but it must not be cached over the
    // mark: every worker would serve the key for the positive TTL
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    w1.advance(2000);
    assert_eq!(w1.get(7, "/a", "secret-1"), Action::Pause);
    let verify = w1.last_call();
    w1.process.now.set(START.plus_ms(2000 + 100 - 500));
    poll(&mut w2, revoking(1, "secret-1"));
    w1.advance(500);
    w1.answer(verify.token, valid("k1", "free"));
    let mut w3 = Sim::in_process(w1.process.clone(), &cfg);
    refused_revoked(&mut w3, 8, "secret-1");
}

/// The worker that asked the service keeps the answer it wrote: a key whose entry other keys
/// evict from a full set is still served without a call while fresh, and its revocation, marked
/// by another worker, still reaches it through the log.
#[test]
fn the_worker_that_asked_keeps_its_answer_through_evictions_and_a_revocation_reaches_it() {
    // one set of 4 verdict ways: every key collides
    let cfg = remote(r#","slots":{"verdicts":4,"states":64}"#);
    let (mut w1, mut w2) = two_workers(&cfg);
    let calls = w1.calls().len();
    admitted(&mut w1, 7, "secret-1");
    assert_eq!(w1.calls().len(), calls + 1, "asked once");
    // five more keys through the one set: secret-1's entry is evicted from shared data
    for (i, s) in ["s2", "s3", "s4", "s5", "s6"].iter().enumerate() {
        admitted(&mut w1, 10 + i as u32, s);
    }
    let calls = w1.calls().len();
    w1.advance(1000);
    admitted(&mut w1, 20, "secret-1");
    assert_eq!(
        w1.calls().len(),
        calls,
        "served from the worker's memo, no call"
    );
    // another worker has not read it: it asks (the entry is gone from shared data)
    let calls2 = w2.calls().len();
    admitted(&mut w2, 21, "secret-1");
    assert_eq!(w2.calls().len(), calls2 + 1);
    // revoked, marked by w2's feed: w1 forgets it at its next look at the log
    w2.advance(1000);
    poll(&mut w2, revoking(1, "secret-1"));
    w1.advance(300);
    refused_revoked(&mut w1, 22, "secret-1");
}

/// Red team on `remember`: the answer to a call that a revocation overtook (marked while it was
/// on its way) is not kept: the same worker, asked again before its next look at the log, reads
/// the mark, never a remembered valid verdict.
#[test]
fn a_valid_answer_overtaken_by_a_revocation_is_not_remembered_by_the_worker_that_asked() {
    let cfg = remote("");
    let (mut w1, mut w2) = two_workers(&cfg);
    // w1 has looked at the log (a memo lookup)
    assert_eq!(w1.get(7, "/a", "secret-1"), Action::Pause);
    let verify = w1.last_call();
    w2.advance(1000);
    poll(&mut w2, revoking(1, "secret-1"));
    // w1 looks at the log (a lookup of another key) after the mark, then the answer comes
    w1.advance(5);
    admitted(&mut w1, 6, "other");
    w1.answer(verify.token, valid("k1", "free"));
    assert_eq!(w1.status(7), Some(401));
    // within shared_recheck_ms of w1's last look: no log read, the memo is asked first
    w1.advance(5);
    refused_revoked(&mut w1, 8, "secret-1");
    // past the negative TTL (30 s) the memo is asked first, and the log has nothing new
    w1.advance(31_000);
    refused_revoked(&mut w1, 9, "secret-1");
}

/// A call started before a revocation whose mark a mass revocation evicted (the floor): the
/// answer is unsure, never remembered: asked again at once, the worker calls again.
#[test]
fn an_unsure_answer_is_not_remembered() {
    let cfg = remote(r#","slots":{"verdicts":4,"states":64}"#);
    let (mut w1, mut w2) = two_workers(&cfg);
    assert_eq!(w1.get(7, "/a", "secret-1"), Action::Pause);
    let verify = w1.last_call();
    // one page revoking secret-1 and 8 others through the one set: secret-1's mark is evicted
    let mut items = vec![format!(
        r#"{{"key_hash":"{}"}}"#,
        to_hex(&sha256(b"secret-1"))
    )];
    for i in 0..8 {
        items.push(format!(
            r#"{{"key_hash":"{}"}}"#,
            to_hex(&sha256(format!("r{i}").as_bytes()))
        ));
    }
    w2.advance(1000);
    poll(
        &mut w2,
        fake::http(
            200,
            &format!(r#"{{"cursor":1,"revoked":[{}]}}"#, items.join(",")),
        ),
    );
    w1.advance(5);
    admitted(&mut w1, 6, "other");
    w1.answer(verify.token, valid("k1", "free"));
    assert_eq!(w1.status(7), Some(503), "{:?}", w1.slug(7));
    w1.advance(5);
    let calls = w1.calls().len();
    assert_eq!(w1.get(8, "/a", "secret-1"), Action::Pause);
    assert_eq!(
        w1.calls().len(),
        calls + 1,
        "asked again, nothing remembered"
    );
    assert_eq!(w1.resumed(8), 0);
}

/// `shared_recheck_ms: 0` keeps no memo: a key whose entry was evicted is asked again.
#[test]
fn recheck_zero_remembers_no_answer() {
    let cfg = remote(r#","slots":{"verdicts":4,"states":64}"#).replace(
        r#""revocation_poll_ms":1000}"#,
        r#""revocation_poll_ms":1000,"shared_recheck_ms":0}"#,
    );
    assert!(cfg.contains("shared_recheck_ms"));
    let mut w1 = Sim::new(&cfg);
    feed_ready(&mut w1);
    admitted(&mut w1, 7, "secret-1");
    for (i, s) in ["s2", "s3", "s4", "s5", "s6"].iter().enumerate() {
        admitted(&mut w1, 10 + i as u32, s);
    }
    let calls = w1.calls().len();
    admitted(&mut w1, 20, "secret-1");
    assert_eq!(w1.calls().len(), calls + 1, "no memo: asked again");
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// The answer remembered for Basic user alice is never served to bob (a miss: bob is asked
/// for), even with the shared entry evicted.
#[test]
fn an_answer_remembered_for_one_basic_user_is_not_served_to_another() {
    let cfg = remote(r#","slots":{"verdicts":4,"states":64}"#);
    let mut w1 = Sim::new(&cfg);
    feed_ready(&mut w1);
    let get_as = |w: &mut Sim, ctx: u32, user: &str| {
        let auth = basic(user, "secret-1");
        w.headers(
            ctx,
            &[
                (":method", "GET"),
                (":path", "/a"),
                ("authorization", &auth),
            ],
            false,
        )
    };
    let calls = w1.calls().len();
    get_as(&mut w1, 7, "alice");
    assert_eq!(w1.calls().len(), calls + 1);
    let c = w1.last_call();
    w1.answer(c.token, valid("k1", "free"));
    assert_eq!(
        w1.resumed(7),
        1,
        "{:?} {:?} {:?}",
        w1.status(7),
        w1.slug(7),
        c
    );
    // evict the shared entry
    for (i, s) in ["s2", "s3", "s4", "s5", "s6"].iter().enumerate() {
        admitted(&mut w1, 10 + i as u32, s);
    }
    w1.advance(10);
    let calls = w1.calls().len();
    assert_eq!(get_as(&mut w1, 20, "alice"), Action::Continue);
    assert_eq!(w1.calls().len(), calls, "alice: from the memo");
    assert_eq!(get_as(&mut w1, 21, "bob"), Action::Pause);
    assert_eq!(
        w1.calls().len(),
        calls + 1,
        "bob: asked for, not alice's verdict"
    );
    assert_eq!((w1.resumed(21), w1.status(21)), (0, None));
    // an x-api-key (no user) is not alice either
    assert_eq!(w1.get(22, "/a", "secret-1"), Action::Pause);
    assert_eq!(w1.calls().len(), calls + 2);
    assert_eq!((w1.resumed(22), w1.status(22)), (0, None));
    // keygate.cache.memo_hit: alice's hit only (bob's and the plain key's lookups were misses)
    let before = w1.metric("keygate.cache.memo_hit");
    w1.tick(ROOT);
    assert_eq!(w1.metric("keygate.cache.memo_hit") - before, 1);
}
