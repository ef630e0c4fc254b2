//! The fixed-slot tables across callbacks: shared data stays within the configured sets however
//! many keys pass, a revocation mark survives a flood of new verdicts while a late answer may
//! still come, an answer older than a mark that had to go is never served, and owners that
//! collide in one set of counts are refused rather than forgiven.

use super::fake::{self, valid, Sim, ROOT};
use super::{feed_ready, remote, two_workers};
use crate::hash::{sha256, to_hex};
use crate::slots;
use crate::worker::Action;

/// `remote`, with a verdict table of one set (4 ways) and counts of `states` slots.
fn one_verdict_set(states: u64) -> String {
    remote(&format!(r#","slots":{{"verdicts":4,"states":{states}}}"#))
}

/// A valid key asked for and let through (a miss: one verify call, answered valid).
fn admit(sim: &mut Sim, ctx: u32, key: &str) {
    assert_eq!(sim.get(ctx, "/a", key), Action::Pause, "{key}");
    let c = sim.last_call();
    assert_eq!(c.header(":path"), Some("/v1/keys/verify"), "{key}");
    sim.answer(c.token, valid(key, "free"));
    assert_eq!(sim.resumed(ctx), 1, "{key} let through");
}

/// The feed's next poll (from `sim`), answered with `revoked` secrets at cursor `cursor`.
fn revoke(sim: &mut Sim, cursor: u32, revoked: &[&str]) {
    sim.tick(ROOT);
    let poll = sim.last_call();
    assert!(poll.header(":path").unwrap().contains("since="), "{poll:?}");
    let hashes: Vec<String> = revoked
        .iter()
        .map(|s| format!(r#"{{"key_hash":"{}"}}"#, to_hex(&sha256(s.as_bytes()))))
        .collect();
    let feed = format!(r#"{{"cursor":{cursor},"revoked":[{}]}}"#, hashes.join(","));
    sim.answer(poll.token, fake::http(200, &feed));
}

/// The shared-data values of the verdict table (`{prefix}:v{set}`) and their entries.
fn verdict_sets(sim: &mut Sim) -> Vec<(String, usize)> {
    let stem = format!(
        "{}:v",
        sim.vm.worker(ROOT).unwrap().gate().cfg.shared_prefix
    );
    let map = sim.process.store.map.borrow();
    let mut sets: Vec<(String, usize)> = map
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(&stem)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|(k, (v, _))| (k.clone(), slots::entries(Some(v)).count()))
        .collect();
    sets.sort();
    sets
}

#[test]
fn many_keys_through_one_set_keep_shared_data_bounded_and_a_held_mark_refused() {
    // rule: a verdict table never holds more than its sets x ways, whatever the number of keys;
    // a revocation mark is kept while an answer older than it may still come (timeout + 10 s),
    // so a flood of new verdicts evicts each other, never the mark
    let cfg = one_verdict_set(4096);
    let mut sim = Sim::new(&cfg);
    feed_ready(&mut sim);
    admit(&mut sim, 1, "secret-r");
    sim.advance(1000);
    revoke(&mut sim, 1, &["secret-r"]);
    // another worker (no memo of its own) sees the mark in shared data
    let mut other = Sim::in_process(sim.process.clone(), &cfg);
    for i in 0..40u32 {
        admit(&mut sim, 100 + i, &format!("key-{i}"));
        if i % 8 == 7 {
            let ctx = 1000 + i;
            let calls = other.calls().len();
            assert_eq!(other.get(ctx, "/a", "secret-r"), Action::Pause);
            assert_eq!(other.status(ctx), Some(401), "after {} new keys", i + 1);
            assert_eq!(other.slug(ctx).as_deref(), Some("credential-revoked"));
            assert_eq!(
                other.calls().len(),
                calls,
                "answered from the mark, no call"
            );
        }
    }
    let sets = verdict_sets(&mut sim);
    assert_eq!(sets.len(), 1, "one set configured: {sets:?}");
    assert!(sets[0].1 <= 4, "at most its 4 ways: {sets:?}");
    // 40 new verdicts into the 3 ways the mark leaves: 3 placed, 37 evicted; counted on a tick
    sim.advance(1000);
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.slots.verdicts.evicted"), 37);
    assert_eq!(sim.metric("keygate.slots.verdicts.full"), 0);
    // the most recent key is still cached: no call
    let calls = sim.calls().len();
    assert_eq!(sim.get(200, "/a", "key-39"), Action::Continue);
    assert_eq!(sim.calls().len(), calls);
}

#[test]
fn an_answer_older_than_an_evicted_held_mark_is_never_served() {
    // rule: when more keys are revoked at once than a set has ways, the oldest held mark goes
    // after the floor rises to its time; a valid answer to a call that started before the floor
    // is not used (503, retryable) and not cached, whichever key it is for
    let cfg = one_verdict_set(4096);
    let (mut w1, mut w2) = two_workers(&cfg);
    assert_eq!(w1.get(7, "/a", "secret-0"), Action::Pause);
    let verify = w1.last_call();
    w1.advance(1000);
    // five marks into four ways, all held: one is evicted, the floor rises
    revoke(
        &mut w2,
        1,
        &["secret-0", "rev-1", "rev-2", "rev-3", "rev-4"],
    );
    w1.advance(5);
    w1.answer(verify.token, valid("k0", "free"));
    assert_eq!(w1.status(7), Some(503));
    assert_eq!(w1.slug(7).as_deref(), Some("key-service-unavailable"));
    assert_eq!(w1.resumed(7), 0, "never let through");
    assert_eq!(w1.metric("keygate.slots.verdicts.unsure"), 1);
    // a call that starts after the floor is answered as the service says (here: refused)
    assert_eq!(w1.get(8, "/a", "secret-0"), Action::Pause);
    let again = w1.last_call();
    assert_ne!(again.token, verify.token, "nothing was cached: a new call");
    w1.answer(again.token, fake::refused("REVOKED"));
    assert_eq!(w1.status(8), Some(401));
    // a new key is served, but not cached while every way holds a held mark (counted full)
    admit(&mut w1, 9, "fresh-key");
    w1.tick(ROOT);
    assert_eq!(w1.metric("keygate.slots.verdicts.full"), 1);
    // once the marks are past their hold (timeout + 10 s), it takes a way as usual
    w1.advance(11_000);
    admit(&mut w1, 10, "fresh-key");
    let calls = w1.calls().len();
    assert_eq!(w1.get(11, "/a", "fresh-key"), Action::Continue);
    assert_eq!(w1.calls().len(), calls, "cached: no call");
}

/// Nine embedded keys `s1`..`s9` (ids `k1`..`k9`) on plan `p`: 2 requests a minute, counted per
/// key, in a count table of one set (8 ways).
fn colliding_owners() -> String {
    let keys: Vec<String> = (1..=9)
        .map(|i| {
            format!(
                r#"{{"id":"k{i}","sha256":"{}","account":"a{i}","plan":"p"}}"#,
                to_hex(&sha256(format!("s{i}").as_bytes()))
            )
        })
        .collect();
    format!(
        r#"{{"keys":[{}],"auth_throttle":false,"slots":{{"states":8}},
            "rate_limit":{{"plans":{{"p":{{"requests":2,"window_s":60}}}}}}}}"#,
        keys.join(",")
    )
}

#[test]
fn colliding_owners_are_refused_never_forgiven() {
    // rule: a count is reused by another owner only once it holds nothing (a full bucket);
    // when every way of the set still counts, the new owner is refused (429 with the wait),
    // and no owner's count is dropped to make room
    let mut sim = Sim::new(&colliding_owners());
    for i in 1..=8u32 {
        assert_eq!(sim.get(i, "/a", &format!("s{i}")), Action::Continue, "s{i}");
    }
    assert_eq!(sim.get(9, "/a", "s9"), Action::Pause);
    assert_eq!(sim.status(9), Some(429));
    assert_eq!(sim.slug(9).as_deref(), Some("rate-limited"));
    // a spent token comes back in 30 s: the first way holds nothing from then
    assert_eq!(sim.reply_header(9, "retry-after").as_deref(), Some("30"));
    // every other owner keeps its count: one more each, then refused by its own limit
    for i in 1..=8u32 {
        assert_eq!(sim.get(10 + i, "/a", &format!("s{i}")), Action::Continue);
        assert_eq!(sim.get(20 + i, "/a", &format!("s{i}")), Action::Pause);
        assert_eq!(sim.status(20 + i), Some(429), "s{i} over its own 2");
    }
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.slots.states.full"), 1);
    assert_eq!(sim.metric("keygate.slots.states.reused"), 0);
    // a minute on, every bucket is full again: s9 takes a way that holds nothing
    sim.advance(60_000);
    assert_eq!(sim.get(30, "/a", "s9"), Action::Continue);
    sim.tick(ROOT);
    assert_eq!(sim.metric("keygate.slots.states.reused"), 1);
}

#[test]
fn a_revocation_whose_mark_could_not_be_written_is_applied_again_not_skipped() {
    // rule: the feed's cursor moves past a revocation only once its mark is in shared data. A
    // mark that loses every compare-and-swap (a busy set) was dropped while the cursor moved
    // on: every other worker kept serving the revoked key from its cached verdict until the TTL
    let cfg = remote("");
    let mut sim = Sim::new(&cfg);
    feed_ready(&mut sim);
    admit(&mut sim, 1, "secret-r");
    let mut other = Sim::in_process(sim.process.clone(), &cfg);
    assert_eq!(other.get(2, "/a", "secret-r"), Action::Continue, "cached");
    sim.advance(1000);
    sim.tick(ROOT);
    let poll = sim.last_call();
    let feed = format!(
        r#"{{"cursor":1,"revoked":[{{"key_hash":"{}"}}]}}"#,
        to_hex(&sha256(b"secret-r"))
    );
    // each of the mark's 8 attempts mismatches (another worker writing the set each time)
    sim.process.store.conflicts.set(8);
    sim.answer(poll.token, fake::http(200, &feed));
    assert_eq!(sim.process.store.conflicts.get(), 0);
    // the next poll asks from the same cursor again, and the mark is written this time
    sim.advance(1000);
    sim.tick(ROOT);
    let poll = sim.last_call();
    assert!(
        poll.header(":path").unwrap().contains("since=0"),
        "the cursor did not move past an unapplied revocation: {poll:?}"
    );
    sim.answer(poll.token, fake::http(200, &feed));
    assert_eq!(other.get(3, "/a", "secret-r"), Action::Pause);
    assert_eq!(other.status(3), Some(401));
    assert_eq!(other.slug(3).as_deref(), Some("credential-revoked"));
}
