//! The verdict cache's tests: encoding, the memo, revocation marks, and a sweep of everything the
//! gate writes to shared data for secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

/// A valid verdict stored by a call that started and ended at `now`.
fn store_at(
    st: &dyn SharedStore,
    key: &Slot<'_>,
    identity: &Rc<Identity>,
    binding: Binding,
    ttl_hint_s: Option<u64>,
    p: &CachePolicy,
    now: u64,
) -> Stored {
    let offer = Offer {
        identity,
        binding,
        ttl_hint_s,
        started_ms: now,
    };
    store_valid(st, key, offer, p, now)
}
use crate::hash::credential_id;
use crate::store::memory::MemoryStore;

/// The verdict table these tests use (one per call, all alike: the same seed and geometry).
fn table() -> &'static Table {
    Box::leak(Box::new(Table::new(
        "kg",
        'v',
        slots::Geometry::of(1024, slots::VERDICT_WAYS),
        (7, 9),
    )))
}

/// The slot of `id` in [`table`] (`_prefix`: as the tests name it).
fn entry_key(_prefix: &str, id: &Digest32) -> Slot<'static> {
    super::entry_key(table(), id)
}

fn ident(expires_at: Option<u64>) -> Rc<Identity> {
    Rc::new(Identity {
        key_id: "k".into(),
        subject: "s".into(),
        account: "a".into(),
        plan: "p".into(),
        scopes: vec!["read".into()],
        expires_at,
        rate_limit: None,
        resources: vec![("agg".into(), vec!["x".into()])],
    })
}

const NOW: u64 = 1_800_000_000_000;

#[test]
fn fresh_then_stale_then_miss() {
    let st = MemoryStore::default();
    let p = CachePolicy {
        positive_ttl_ms: 1000,
        stale_ms: 5000,
        ..Default::default()
    };
    let id = credential_id(None, "secret");
    let key = entry_key("kg", &id);
    assert!(!key.spot.key.contains("secret"));
    store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
    let mut m = Memo::default();
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 999, 0),
        Lookup::Fresh(Verdict::Valid(_))
    ));
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 1000, 0),
        Lookup::Stale(Verdict::Valid(_))
    ));
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 6000, 0),
        Lookup::Miss
    );
}

#[test]
fn hint_and_key_expiry_shorten_the_ttl() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let id = credential_id(None, "s");
    let key = entry_key("kg", &id);
    store_at(&st, &key, &ident(None), Binding::NoUser, Some(2), &p, NOW);
    let mut m = Memo::default();
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 2000, 0),
        Lookup::Stale(_)
    ));
    // the key expires in 1.5 s: fresh never outlives it, and stale never serves past it
    store_at(
        &st,
        &key,
        &ident(Some(NOW / 1000 + 1)),
        Binding::NoUser,
        None,
        &p,
        NOW + 500,
    );
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 900, 0),
        Lookup::Fresh(Verdict::Valid(_))
    ));
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 1000, 0),
        Lookup::Miss
    );
}

#[test]
fn revocation_marks_the_secret_for_every_user_and_invalidates_memos() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let id = credential_id(None, "s");
    let key = entry_key("kg", &id);
    let bound = Binding::User("alice".into());
    store_at(&st, &key, &ident(None), bound, None, &p, NOW);
    let mut m = Memo::default();
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, Some("alice"), NOW, 0),
        Lookup::Fresh(Verdict::Valid(_))
    ));
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, Some("mallory"), NOW, 0),
        Lookup::Miss
    );
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW, 0),
        Lookup::Miss
    );
    assert_eq!(mark_revoked(&st, &key, &p, NOW), Some(true));
    for user in [Some("alice"), Some("bob"), None] {
        assert_eq!(
            m.lookup(&st, key.table, key.spot.tag, user, NOW + 1, 0),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
    }
    // a mark for a secret nothing cached yet is written too (an answer may be on its way)
    let other = entry_key("kg", &credential_id(None, "t"));
    assert_eq!(mark_revoked(&st, &other, &p, NOW), Some(false));
    let set = st.map.borrow()[&other.spot.key].0.clone();
    assert!(slots::find(Some(&set), other.spot.tag).is_some());
}

#[test]
fn an_answer_older_than_a_revocation_never_wins() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let id = credential_id(None, "s");
    let key = entry_key("kg", &id);
    let valid = |started: u64, now: u64| {
        store_valid(
            &st,
            &key,
            Offer {
                identity: &ident(None),
                binding: Binding::NoUser,
                ttl_hint_s: None,
                started_ms: started,
            },
            &p,
            now,
        )
    };
    // the call started at NOW, the revocation was learned at NOW + 100, the answer came at
    // NOW + 300: it loses, and the mark stays
    mark_revoked(&st, &key, &p, NOW + 100);
    assert_eq!(valid(NOW, NOW + 300), Stored::Revoked);
    assert_eq!(valid(NOW + 100, NOW + 300), Stored::Revoked);
    let mut m = Memo::default();
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 301, 0),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    // a call started after the revocation was known brings a newer verdict, once no step
    // back of the clock during a call (at most `hold_ms`) can have put it after the mark
    assert_eq!(valid(NOW + 101, NOW + 400), Stored::Revoked);
    let later = NOW + 101 + p.hold_ms;
    assert_eq!(valid(later, later + 300), Stored::Written);
    assert!(matches!(
        m.lookup(&st, key.table, key.spot.tag, None, later + 301, 0),
        Lookup::Fresh(Verdict::Valid(_))
    ));
}

/// A mark lives at least as long as it is held: with the longest key-service timeout (60 s,
/// held 70 s) and the shortest TTLs (1 s fresh, no stale), an answer to a call that started
/// before the revocation and came 65 s after it (a callback late, a worker's clock behind: what
/// the hold's margin is for) still loses, rather than finding the mark expired and caching
/// "valid" over it.
#[test]
fn a_mark_outlives_its_hold_whatever_the_ttls() {
    let st = MemoryStore::default();
    let p = CachePolicy {
        positive_ttl_ms: 1000,
        stale_ms: 0,
        hold_ms: 60_000 + HOLD_MARGIN_MS,
        ..CachePolicy::default()
    };
    let id = credential_id(None, "s");
    let key = entry_key("kg", &id);
    mark_revoked(&st, &key, &p, NOW);
    let late = Offer {
        identity: &ident(None),
        binding: Binding::NoUser,
        ttl_hint_s: None,
        started_ms: NOW - 1,
    };
    assert_eq!(
        store_valid(&st, &key, late, &p, NOW + 65_000),
        Stored::Revoked
    );
}

proptest::proptest! {
    /// Whatever Basic users clients send and whatever the service binds, one secret has
    /// one shared-data entry.
    #[test]
    fn one_entry_per_secret_whatever_the_users(users in proptest::collection::vec(
        (proptest::option::of("[a-z]{1,8}"), proptest::bool::ANY), 1..40)) {
        let st = MemoryStore::default();
        let p = CachePolicy::default();
        let key = entry_key("kg", &credential_id(None, "s"));
        for (i, (user, bound)) in users.iter().enumerate() {
            let b = Binding::of(user.as_deref(), *bound);
            let t = NOW + i as u64;
            store_at(&st, &key, &ident(None), b, None, &p, t);
        }
        proptest::prop_assert_eq!(st.map.borrow().len(), 1);
        let set = st.map.borrow()[&key.spot.key].0.clone();
        proptest::prop_assert_eq!(slots::entries(Some(&set)).count(), 1);
    }
}

#[test]
fn recent_reads_are_trusted_for_recheck_ms_only() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let id = credential_id(None, "s");
    let key = entry_key("kg", &id);
    store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
    let mut m = Memo::default();
    let fresh = |l: Lookup| matches!(l, Lookup::Fresh(Verdict::Valid(_)));
    assert!(fresh(m.lookup(
        &st,
        key.table,
        key.spot.tag,
        None,
        NOW,
        250
    )));
    let reads = st.gets.get();
    assert!(fresh(m.lookup(
        &st,
        key.table,
        key.spot.tag,
        None,
        NOW + 249,
        250
    )));
    assert_eq!(st.gets.get(), reads, "a recent read is not repeated");
    // another worker revokes: seen once the window has passed
    assert_eq!(mark_revoked(&st, &key, &p, NOW + 100), Some(true));
    assert!(fresh(m.lookup(
        &st,
        key.table,
        key.spot.tag,
        None,
        NOW + 200,
        250
    )));
    assert_eq!(
        m.lookup(&st, key.table, key.spot.tag, None, NOW + 250, 250),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    // the worker that revokes forgets at once; a clock going back never extends trust (a valid
    // verdict over a mark comes from a call started `hold_ms` after it)
    let l = NOW + 101 + p.hold_ms;
    let l2 = l + 101 + p.hold_ms;
    store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, l);
    m.forget(key.spot.tag); // as the host does after writing an entry
    assert!(fresh(m.lookup(&st, key.table, key.spot.tag, None, l, 250)));
    assert_eq!(mark_revoked(&st, &key, &p, l + 1), Some(true));
    m.forget(key.spot.tag);
    assert!(!fresh(m.lookup(
        &st,
        key.table,
        key.spot.tag,
        None,
        l + 2,
        250
    )));
    store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, l2);
    m.forget(key.spot.tag);
    assert!(fresh(m.lookup(&st, key.table, key.spot.tag, None, l2, 250)));
    assert_eq!(mark_revoked(&st, &key, &p, l2 + 1), Some(true));
    assert!(!fresh(m.lookup(
        &st,
        key.table,
        key.spot.tag,
        None,
        NOW + 10,
        250
    )));
}

#[test]
fn entries_round_trip_and_garbage_is_a_miss() {
    let e = Entry {
        fresh_until_ms: 5,
        stale_until_ms: 9,
        verdict: Verdict::Valid(ident(Some(7))),
        binding: Binding::User("al:ice".into()),
        revoked_at_ms: 0,
    };
    assert_eq!(decode(&encode(&e)), Some(e));
    let e = Entry {
        fresh_until_ms: 5,
        stale_until_ms: 9,
        verdict: Verdict::Refused(Refusal::Revoked),
        binding: Binding::NoUser,
        revoked_at_ms: 77,
    };
    assert_eq!(decode(&encode(&e)), Some(e));
    assert_eq!(decode(b"KG1short"), None);
    assert_eq!(decode(b"junk junk junk junk junk"), None);
}

#[test]
fn valid_entries_are_binary_and_round_trip_whole() {
    let id = Rc::new(Identity {
        key_id: "k1".into(),
        subject: "al\u{e9}ce".into(),
        account: String::new(),
        plan: "pro".into(),
        scopes: vec!["read".into(), "write:all".into()],
        expires_at: Some(1_900_000_000),
        rate_limit: Some(crate::ratelimit::Limit {
            requests: 5,
            window_s: 60,
            burst: 7,
        }),
        resources: vec![
            ("z".into(), vec![]),
            ("agg".into(), vec!["a1".into(), "a2".into()]),
        ],
    });
    for binding in [
        Binding::NoUser,
        Binding::AnyUser,
        Binding::User("bob".into()),
    ] {
        let e = Entry {
            fresh_until_ms: 5,
            stale_until_ms: 9,
            verdict: Verdict::Valid(id.clone()),
            binding,
            revoked_at_ms: 0,
        };
        let b = encode(&e);
        assert_ne!(b[HEADER] & BINARY, 0, "binary form");
        assert!(!b.windows(6).any(|w| w == b"key_id"), "no JSON");
        assert_eq!(decode(&b), Some(e.clone()));
        // every cut and every trailing byte is not an entry (never a shorter identity)
        for cut in HEADER..b.len() {
            assert_eq!(decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }
}

#[test]
fn json_entries_written_before_still_decode() {
    let id = ident(Some(7));
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(&9u64.to_le_bytes());
    b.push(0);
    b.push(0);
    b.extend_from_slice(crate::contract::identity_json(&id).to_string().as_bytes());
    let e = decode(&b).unwrap();
    assert_eq!(e.verdict, Verdict::Valid(id));
    assert_eq!(e.binding, Binding::NoUser);
    assert_eq!(e.fresh_until_ms, 5);
}

#[test]
fn negative_cache_is_bounded() {
    let mut n = NegativeCache::new(100);
    for i in 0..10_000u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        n.insert(id, Refusal::Unknown, NOW + 1000, NOW);
        assert!(n.len() <= 100);
    }
    let mut last = [0u8; 32];
    last[..4].copy_from_slice(&9999u32.to_le_bytes());
    assert_eq!(n.get(&last, NOW), Some(Refusal::Unknown));
    assert_eq!(n.get(&last, NOW + 1000), None);
}
#[test]
fn the_feed_revokes_a_secret_for_every_worker_and_each_of_its_credentials() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    // a secret's verdict is found by its digest, the name the feed gives
    let id = crate::hash::sha256(b"s");
    let key = entry_key("kg", &id);
    store_at(&st, &key, &ident(None), Binding::NoUser, None, &p, NOW);
    let (mut memo, mut neg) = (Memo::default(), NegativeCache::new(16));
    // this worker remembers the valid verdict (it would not read shared data for 250 ms)
    assert!(matches!(
        memo.lookup(&st, key.table, key.spot.tag, None, NOW, 250),
        Lookup::Fresh(Verdict::Valid(_))
    ));
    let feed = [
        (crate::hash::sha256(b"s"), Some("alice".to_string())),
        (crate::hash::sha256(b"never-cached"), None),
    ];
    let marked = apply_revocations(&st, table(), &p, &feed, &mut memo, &mut neg, NOW + 1);
    assert_eq!(
        marked,
        (1, true),
        "one valid verdict overwritten; the other secret gets a mark"
    );
    // every worker: the shared entry now says revoked
    assert_eq!(
        Memo::default().lookup(&st, key.table, key.spot.tag, None, NOW + 2, 250),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    // this worker forgot what it remembered, at once
    assert_eq!(
        memo.lookup(&st, key.table, key.spot.tag, None, NOW + 2, 250),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    // and refuses the secret alone and with the user the feed named, until the negative TTL
    let with_user = credential_id(Some("alice"), "s");
    for c in [id, with_user] {
        assert_eq!(neg.get(&c, NOW + 2), Some(Refusal::Revoked));
        assert_eq!(neg.get(&c, NOW + 1 + p.negative_ttl_ms), None);
    }
    // a verdict whose call started before the revocation never overwrites it
    let late = Offer {
        identity: &ident(None),
        binding: Binding::NoUser,
        ttl_hint_s: None,
        started_ms: NOW,
    };
    assert_eq!(store_valid(&st, &key, late, &p, NOW + 3), Stored::Revoked);
    // applied twice (a page read again), nothing new is overwritten
    assert_eq!(
        apply_revocations(&st, table(), &p, &feed, &mut memo, &mut neg, NOW + 4),
        (0, true)
    );
    // a mark that loses every compare-and-swap is reported, not counted as done
    st.conflicts.set(8);
    let once = [(crate::hash::sha256(b"s"), None)];
    assert_eq!(
        apply_revocations(&st, table(), &p, &once, &mut memo, &mut neg, NOW + 5),
        (0, false)
    );
}

mod secrets_tests {
    use crate::config;
    use crate::gate::{decide, Gate};
    use crate::store::memory::MemoryStore;

    /// Everything the gate writes to shared data for a known key presented through every
    /// carrier (rate-limit buckets keyed by key id, subject and account) holds no byte run of the
    /// secret. (Cache entries and revocation marks are keyed by a `Digest32` and hold an
    /// `Identity` and the Basic user: the types keep the secret out; an earlier half of this test
    /// fed them digests and could not fail.)
    #[test]
    fn shared_data_never_holds_a_secret() {
        let secret = "sk_live_THE-SECRET-VALUE-0001";
        let cfg = format!(
            r#"{{"keys":[{{"id":"k1","sha256":"{}","user":"alice","account":"acme","plan":"p"}}],
                "rate_limit":{{"plans":{{"p":{{"requests":2,"window_s":60,"per":"account"}}}}}}}}"#,
            crate::hash::to_hex(&crate::hash::sha256(secret.as_bytes()))
        );
        let g = Gate::new(config::parse(cfg.as_bytes(), &mut Vec::new()).unwrap());
        let st = MemoryStore::default();
        let now = 1_800_000_000_000_000u64;
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("alice:{secret}")
            )
        );
        let path = format!("/x?_apikey={secret}");
        for h in [
            vec![(":path", path.as_bytes()), ("x-api-key", b"x" as &[u8])],
            vec![(":path", b"/x" as &[u8]), ("x-api-key", secret.as_bytes())],
            vec![
                (":path", b"/x" as &[u8]),
                ("authorization", basic.as_bytes()),
            ],
            vec![(":path", path.as_bytes())],
            vec![(":path", path.as_bytes())],
        ] {
            decide(&g, &h, &st, now);
        }
        let map = st.map.borrow();
        assert!(!map.is_empty(), "the gate wrote nothing");
        let needle = &secret.as_bytes()[8..20];
        for (k, (v, _)) in map.iter() {
            assert!(
                !k.as_bytes().windows(needle.len()).any(|w| w == needle),
                "key {k}"
            );
            assert!(
                !v.windows(needle.len()).any(|w| w == needle),
                "value of {k}"
            );
        }
    }
}

mod eviction {
    use super::*;

    const TIMEOUT: u64 = 500;

    fn small(sets: u64) -> Table {
        Table::new("kg", 'v', slots::Geometry::of(sets * 2, 2), (3, 4))
    }

    /// One step of the model: a key-service answer for key `k` (a call that started `age` ms
    /// ago, never more than the timeout), a revocation of `k`, a lookup of `k`, or time passing.
    #[derive(Clone, Debug)]
    enum Op {
        Answer(usize, u64),
        Revoke(usize),
        Lookup(usize),
        Wait(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..8, 0u64..=TIMEOUT).prop_map(|(k, a)| Op::Answer(k, a)),
            (0usize..8).prop_map(Op::Revoke),
            (0usize..8).prop_map(Op::Lookup),
            (1u64..20_000).prop_map(Op::Wait),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Eight keys through one or two sets of two ways: every answer, revocation and lookup
        /// in any order, with evictions all the time. The service answers valid only for calls
        /// that started before the key was revoked (later calls see the revocation). Never is a
        /// revoked key served: no valid answer that started before its revocation is stored or
        /// used, and no lookup after the revocation gives a valid verdict.
        #[test]
        fn no_sequence_of_evictions_serves_a_revoked_key(
            sets in 1u64..3,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let st = MemoryStore::default();
            let t = small(sets);
            let p = CachePolicy {
                positive_ttl_ms: 30_000,
                stale_ms: 30_000,
                hold_ms: TIMEOUT + HOLD_MARGIN_MS,
                ..Default::default()
            };
            let mut now = NOW;
            let mut revoked_at: [Option<u64>; 8] = [None; 8];
            let ids: Vec<Digest32> = (0..8).map(|k| credential_id(None, &format!("key{k}"))).collect();
            for op in ops {
                match op {
                    Op::Wait(ms) => now += ms,
                    Op::Revoke(k) => {
                        mark_revoked(&st, &super::super::entry_key(&t, &ids[k]), &p, now);
                        revoked_at[k].get_or_insert(now);
                    }
                    Op::Answer(k, age) => {
                        let started = now.saturating_sub(age);
                        // the service saw the revocation: it answers refused, nothing to store
                        if revoked_at[k].is_some_and(|r| started > r) {
                            continue;
                        }
                        let offer = Offer { identity: &ident(None), binding: Binding::NoUser, ttl_hint_s: None, started_ms: started };
                        let got = store_valid(&st, &super::super::entry_key(&t, &ids[k]), offer, &p, now);
                        if revoked_at[k].is_some() {
                            proptest::prop_assert!(
                                matches!(got, Stored::Revoked | Stored::Unsure),
                                "key {} revoked at {:?}, answer started {} stored: {:?}", k, revoked_at[k], started, got
                            );
                        }
                    }
                    Op::Lookup(k) => {
                        let got = Memo::default().lookup(&st, &t, t.tag(&ids[k]), None, now, 0);
                        if revoked_at[k].is_some() {
                            proptest::prop_assert!(
                                !matches!(got, Lookup::Fresh(Verdict::Valid(_)) | Lookup::Stale(Verdict::Valid(_))),
                                "key {} revoked at {:?} served at {}: {:?}", k, revoked_at[k], now, got
                            );
                        }
                    }
                }
            }
        }
    }

    /// Two configurations on one prefix at once (an LDS update lowered `key_service.timeout_ms`
    /// from 60 s to 0.5 s; the old one still has calls in flight): a mark is held for the longest
    /// hold any of them registered, so the new configuration's valid verdicts cannot evict it
    /// 10.5 s after the revocation while an answer under the old one may still come for 70 s.
    #[test]
    fn a_mark_is_held_for_the_longest_hold_of_any_configuration_of_the_prefix() {
        let st = MemoryStore::default();
        let t = small(1);
        let long = CachePolicy {
            hold_ms: 60_000 + HOLD_MARGIN_MS,
            ..Default::default()
        };
        let short = CachePolicy {
            hold_ms: TIMEOUT + HOLD_MARGIN_MS,
            ..Default::default()
        };
        register_hold(&st, &t, long.hold_ms);
        register_hold(&st, &t, short.hold_ms);
        let k = credential_id(None, "k");
        let offer = |started| Offer {
            identity: ident_static(),
            binding: Binding::NoUser,
            ttl_hint_s: None,
            started_ms: started,
        };
        // the new configuration's feed marks k; its valid verdicts fill the set 20 s later
        mark_revoked(&st, &super::super::entry_key(&t, &k), &short, NOW);
        for i in 0..3 {
            let id = credential_id(None, &format!("o{i}"));
            let at = NOW + 20_000 + i;
            store_valid(
                &st,
                &super::super::entry_key(&t, &id),
                offer(at),
                &short,
                at,
            );
        }
        // the old configuration's call, started before the revocation, answers at 40 s
        assert_eq!(
            store_valid(
                &st,
                &super::super::entry_key(&t, &k),
                offer(NOW - 1),
                &long,
                NOW + 40_000
            ),
            Stored::Revoked
        );
    }

    #[test]
    fn a_held_mark_evicted_raises_the_floor() {
        // one set of two ways: three revocations at once, then a late answer for the first
        let st = MemoryStore::default();
        let t = small(1);
        let p = CachePolicy {
            hold_ms: TIMEOUT + HOLD_MARGIN_MS,
            ..Default::default()
        };
        let ids: Vec<Digest32> = (0..3)
            .map(|k| credential_id(None, &format!("r{k}")))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            mark_revoked(&st, &super::super::entry_key(&t, id), &p, NOW + i as u64);
        }
        let late = |started| Offer {
            identity: ident_static(),
            binding: Binding::NoUser,
            ttl_hint_s: None,
            started_ms: started,
        };
        // the first mark was evicted: its late answer is unsure, never stored
        assert_eq!(
            store_valid(
                &st,
                &super::super::entry_key(&t, &ids[0]),
                late(NOW - 10),
                &p,
                NOW + 5
            ),
            Stored::Unsure
        );
        // an answer to a call that started after the floor is stored as usual
        let other = credential_id(None, "fresh");
        assert_ne!(
            store_valid(
                &st,
                &super::super::entry_key(&t, &other),
                late(NOW + 3),
                &p,
                NOW + 5
            ),
            Stored::Unsure
        );
        // a valid verdict never evicts a held mark: not cached, the marks stay
        assert_eq!(
            store_valid(
                &st,
                &super::super::entry_key(&t, &other),
                late(NOW + 3),
                &p,
                NOW + 6
            ),
            Stored::NotCached
        );
        // once the hold is over, it may
        let after = NOW + 2 + p.hold_ms;
        assert_eq!(
            store_valid(
                &st,
                &super::super::entry_key(&t, &other),
                late(after),
                &p,
                after
            ),
            Stored::Written
        );
        assert_eq!(t.counts.take().0, 2);
    }

    fn ident_static() -> &'static Rc<Identity> {
        Box::leak(Box::new(ident(None)))
    }
}

/// Many keys: a worker reads each verdict once and uses it past `recheck_ms` while the
/// revocation log is unchanged (one read of the log per `recheck_ms` for all of them); a
/// revocation another worker marks is seen within `recheck_ms`, and only that key is forgotten.
#[test]
fn a_memo_reads_each_verdict_once_and_the_log_tells_it_what_was_revoked() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let ids: Vec<Digest32> = (0..50)
        .map(|k| crate::hash::sha256(format!("k{k}").as_bytes()))
        .collect();
    let t = table();
    for id in &ids {
        store_at(
            &st,
            &entry_key("kg", id),
            &ident(None),
            Binding::NoUser,
            None,
            &p,
            NOW,
        );
    }
    let fresh = |l: Lookup| matches!(l, Lookup::Fresh(Verdict::Valid(_)));
    let mut m = Memo::default();
    for id in &ids {
        assert!(fresh(m.lookup(&st, t, t.tag(id), None, NOW, 250)));
    }
    assert_eq!(m.len(), 50);
    assert_eq!(m.take_served(), 0, "each read from shared data");
    // a minute later, every key again: one read (the log), no verdict read again
    let reads = st.gets.get();
    for id in &ids {
        assert!(fresh(m.lookup(&st, t, t.tag(id), None, NOW + 60_000, 250)));
    }
    assert_eq!(st.gets.get(), reads + 1, "the log only");
    assert_eq!(
        m.take_served(),
        50,
        "each from the memo (keygate.cache.memo_hit)"
    );
    // another worker revokes key 7 (its feed): seen at the next look at the log, within 250 ms
    let mut other = Memo::default();
    let feed = [(ids[7], None)];
    let mut neg = NegativeCache::new(16);
    assert_eq!(
        apply_revocations(&st, t, &p, &feed, &mut other, &mut neg, NOW + 60_100),
        (1, true)
    );
    assert!(
        fresh(m.lookup(&st, t, t.tag(&ids[7]), None, NOW + 60_200, 250)),
        "within the window"
    );
    assert_eq!(
        m.lookup(&st, t, t.tag(&ids[7]), None, NOW + 60_250, 250),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    // the others are still memoized: no read of theirs
    let reads = st.gets.get();
    for (k, id) in ids.iter().enumerate().filter(|(k, _)| *k != 7) {
        assert!(
            fresh(m.lookup(&st, t, t.tag(id), None, NOW + 60_300, 250)),
            "key {k}"
        );
    }
    assert_eq!(st.gets.get(), reads);
}

#[test]
fn more_revocations_than_the_log_holds_or_a_broken_log_forget_everything() {
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let t = table();
    let kept = crate::hash::sha256(b"kept");
    store_at(
        &st,
        &entry_key("kg", &kept),
        &ident(None),
        Binding::NoUser,
        None,
        &p,
        NOW,
    );
    let mut m = Memo::default();
    let fresh = |l: Lookup| matches!(l, Lookup::Fresh(Verdict::Valid(_)));
    assert!(fresh(m.lookup(&st, t, t.tag(&kept), None, NOW, 250)));
    // 65 revocations of other keys between two looks: the log holds 64, so the worker cannot
    // know which it missed and forgets all (the kept key is read again, and still valid)
    for k in 0..=memo::LOG_LEN {
        let id = crate::hash::sha256(format!("gone{k}").as_bytes());
        assert_eq!(
            mark_revoked(&st, &entry_key("kg", &id), &p, NOW + 1),
            Some(false)
        );
    }
    let reads = st.gets.get();
    assert!(fresh(m.lookup(&st, t, t.tag(&kept), None, NOW + 300, 250)));
    assert_eq!(st.gets.get(), reads + 2, "the log, then the verdict again");
    assert!(fresh(m.lookup(&st, t, t.tag(&kept), None, NOW + 600, 250)));
    assert_eq!(st.gets.get(), reads + 3, "the log only");
    // foreign bytes where the log is: everything forgotten, once
    let log = side_key(t, "log");
    st.set(&log, b"garbage", 0);
    assert!(fresh(m.lookup(&st, t, t.tag(&kept), None, NOW + 900, 250)));
    assert_eq!(st.gets.get(), reads + 5, "the log, then the verdict again");
    // the next revocation rewrites the log from the start: the sequence went back, forget all
    let gone = crate::hash::sha256(b"gone-after");
    assert_eq!(
        mark_revoked(&st, &entry_key("kg", &gone), &p, NOW + 1000),
        Some(false)
    );
    let reads = st.gets.get();
    assert!(fresh(m.lookup(&st, t, t.tag(&kept), None, NOW + 1200, 250)));
    assert_eq!(st.gets.get(), reads + 2, "the log, then the verdict again");
    // a verdict past its freshness is read again (another worker may have refreshed it)
    store_at(
        &st,
        &entry_key("kg", &kept),
        &ident(None),
        Binding::NoUser,
        None,
        &p,
        NOW + 400_000,
    );
    assert!(fresh(m.lookup(
        &st,
        t,
        t.tag(&kept),
        None,
        NOW + p.positive_ttl_ms + 1,
        250
    )));
}
