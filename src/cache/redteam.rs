//! A red team on the worker memo and the revocation log (`memo`): what a reader sees when a
//! mark, its log entry and a reader's reads interleave; logs rewritten after foreign bytes;
//! more revocations than the log holds; marks evicted; Basic users; expiry; clocks going back;
//! `shared_recheck_ms: 0`; two prefixes in one VM; and what attacker traffic can make it hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::cell::RefCell;

use super::*;
use crate::hash::sha256;
use crate::store::memory::MemoryStore;

const NOW: u64 = 1_800_000_000_000;
const RECHECK: u64 = 250;

fn table_of(prefix: &str) -> &'static Table {
    Box::leak(Box::new(Table::new(
        prefix,
        'v',
        slots::Geometry::of(1024, slots::VERDICT_WAYS),
        (7, 9),
    )))
}

fn ident(expires_at: Option<u64>) -> Rc<Identity> {
    Rc::new(Identity {
        key_id: "k".into(),
        subject: "s".into(),
        account: "a".into(),
        plan: "p".into(),
        scopes: vec![],
        expires_at,
        rate_limit: None,
        resources: vec![],
    })
}

fn store(
    st: &dyn SharedStore,
    t: &Table,
    secret: &str,
    binding: Binding,
    exp: Option<u64>,
    now: u64,
) {
    let offer = Offer {
        identity: &ident(exp),
        binding,
        ttl_hint_s: None,
        started_ms: now,
    };
    let p = CachePolicy::default();
    assert_eq!(
        store_valid(
            st,
            &entry_key(t, &sha256(secret.as_bytes())),
            offer,
            &p,
            now
        ),
        Stored::Written
    );
}

fn revoke(st: &dyn SharedStore, t: &Table, secret: &str, now: u64) {
    let p = CachePolicy::default();
    let slot = entry_key(t, &sha256(secret.as_bytes()));
    assert!(mark_revoked(st, &slot, &p, now).is_some());
}

fn tag(t: &Table, secret: &str) -> u128 {
    t.tag(&sha256(secret.as_bytes()))
}

fn valid(l: &Lookup) -> bool {
    matches!(
        l,
        Lookup::Fresh(Verdict::Valid(_)) | Lookup::Stale(Verdict::Valid(_))
    )
}

/// Another worker's writes, run once by [`Hooked`].
type Hook<'a> = Box<dyn FnOnce(&MemoryStore) + 'a>;

/// A store that runs `hook` once, just before its `n`-th call (gets and sets counted together):
/// another worker's writes landing between two host calls of this one.
struct Hooked<'a> {
    inner: &'a MemoryStore,
    calls: Cell<u32>,
    n: u32,
    hook: RefCell<Option<Hook<'a>>>,
}

impl<'a> Hooked<'a> {
    fn new(inner: &'a MemoryStore, n: u32, hook: impl FnOnce(&MemoryStore) + 'a) -> Self {
        Hooked {
            inner,
            calls: Cell::new(0),
            n,
            hook: RefCell::new(Some(Box::new(hook))),
        }
    }
    fn tick(&self) {
        let c = self.calls.get();
        self.calls.set(c + 1);
        if c == self.n {
            if let Some(h) = self.hook.borrow_mut().take() {
                h(self.inner);
            }
        }
    }
}

impl SharedStore for Hooked<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.tick();
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        self.tick();
        self.inner.set(key, value, cas)
    }
}

#[test]
fn every_interleaving_of_a_mark_its_log_entry_and_a_readers_reads_ends_within_recheck_ms() {
    // the writer's host calls (read the set, write the mark, read the log, write the log) and
    // the reader's (read the log, read the set) in every order: after `shared_recheck_ms` the
    // reader refuses the key, whichever order they came in
    let t = table_of("kg");
    for at in 0..3 {
        for w in 0..4 {
            let st = MemoryStore::default();
            store(&st, t, "x", Binding::NoUser, None, NOW);
            // the reader is at its log look: its first host calls are the log, then the set
            let mut m = Memo::default();
            // reader's hooks: the writer runs whole before the reader's `at`-th call
            let hooked = Hooked::new(&st, at, |s| revoke(s, t, "x", NOW + 1));
            let _ = m.lookup(&hooked, t, tag(t, "x"), None, NOW + 1, RECHECK);
            // the reader's calls are over: the writer comes after them
            let late = hooked.hook.borrow_mut().take();
            if let Some(h) = late {
                h(&st);
            }
            // writer's hooks: the reader runs (a fresh look) before the writer's `w`-th call
            let st2 = MemoryStore::default();
            store(&st2, t, "x", Binding::NoUser, None, NOW);
            let mut m2 = Memo::default();
            let _ = m2.lookup(&st2, t, tag(t, "x"), None, NOW - RECHECK, RECHECK);
            let mut m2_seen = None;
            {
                let seen = &mut m2_seen;
                let m2r = &mut m2;
                let hooked = Hooked::new(&st2, w, move |s| {
                    // a look at the log is due: the reader reads the log, then the set
                    *seen = Some(m2r.lookup(s, t, tag(t, "x"), None, NOW + 1, RECHECK));
                });
                revoke(&hooked, t, "x", NOW + 1);
            }
            for (name, mm, s) in [
                ("reader hooked", &mut m, &st),
                ("writer hooked", &mut m2, &st2),
            ] {
                let later = mm.lookup(s, t, tag(t, "x"), None, NOW + 1 + RECHECK, RECHECK);
                assert_eq!(
                    later,
                    Lookup::Fresh(Verdict::Refused(Refusal::Revoked)),
                    "{name}: at {at}, w {w}, in between: {m2_seen:?}"
                );
            }
        }
    }
}

#[test]
fn a_log_rewritten_after_foreign_bytes_makes_every_reader_forget() {
    // a reader that last looked at the log at sequence 1 (or at no log: 0), and did not look
    // while foreign bytes (another build's log, a value emptied by `remove_shared_data`) were
    // there: the log the next revocation writes must not look like one it has seen, or the
    // revocations overwritten with the foreign bytes are never forgotten by it
    let t = table_of("kg");
    for before in [0, 1] {
        let st = MemoryStore::default();
        store(&st, t, "x", Binding::NoUser, None, NOW);
        for k in 0..before {
            revoke(&st, t, &format!("early{k}"), NOW);
        }
        let mut m = Memo::default();
        assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK)));
        // x revoked and logged, then the log overwritten by foreign bytes, then one more
        revoke(&st, t, "x", NOW + 10);
        st.set(&side_key(t, "log"), b"", 0);
        revoke(&st, t, "other", NOW + 20);
        assert_eq!(
            m.lookup(&st, t, tag(t, "x"), None, NOW + RECHECK, RECHECK),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked)),
            "a reader that saw sequence {before} before the foreign bytes"
        );
    }
}

#[test]
fn more_than_the_log_holds_in_one_page_reaches_every_memo() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    let names: Vec<String> = (0..150).map(|k| format!("key{k}")).collect();
    for n in &names {
        store(&st, t, n, Binding::NoUser, None, NOW);
    }
    let mut m = Memo::default();
    for n in &names {
        assert!(valid(&m.lookup(&st, t, tag(t, n), None, NOW, RECHECK)));
    }
    // one page names 100 of them (the first and the last among them)
    let page: Vec<(Digest32, Option<String>)> = names[..100]
        .iter()
        .map(|n| (sha256(n.as_bytes()), None))
        .collect();
    let mut other = Memo::default();
    let mut neg = NegativeCache::new(16);
    assert_eq!(
        apply_revocations(&st, t, &p, &page, &mut other, &mut neg, NOW + 5),
        (100, true)
    );
    for (k, n) in names.iter().enumerate() {
        let l = m.lookup(&st, t, tag(t, n), None, NOW + 5 + RECHECK, RECHECK);
        assert_eq!(valid(&l), k >= 100, "{n}: {l:?}");
    }
}

#[test]
fn a_mark_evicted_by_a_mass_revocation_never_brings_back_a_memoized_verdict() {
    // a table of one set of four ways: x valid and memoized; 10 revocations of other keys at
    // once evict x's mark (the floor rises): the reader forgets x and finds nothing (a miss: the
    // service is asked), never its valid verdict
    let t: &'static Table = Box::leak(Box::new(Table::new(
        "kg",
        'v',
        slots::Geometry::of(4, 4),
        (7, 9),
    )));
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    store(&st, t, "x", Binding::NoUser, None, NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK)));
    let mut page = vec![(sha256(b"x"), None)];
    page.extend((0..10).map(|k| (sha256(format!("o{k}").as_bytes()), None)));
    let mut other = Memo::default();
    let mut neg = NegativeCache::new(16);
    assert!(apply_revocations(&st, t, &p, &page, &mut other, &mut neg, NOW + 1).1);
    let l = m.lookup(&st, t, tag(t, "x"), None, NOW + 1 + RECHECK, RECHECK);
    assert!(!valid(&l), "{l:?}");
    // and an answer to a call that started before the mark was evicted is not cached
    let offer = Offer {
        identity: &ident(None),
        binding: Binding::NoUser,
        ttl_hint_s: None,
        started_ms: NOW,
    };
    assert_eq!(
        store_valid(&st, &entry_key(t, &sha256(b"x")), offer, &p, NOW + 300),
        Stored::Unsure
    );
}

#[test]
fn a_basic_users_memoized_verdict_is_revoked_for_every_user() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    store(&st, t, "x", Binding::User("alice".into()), None, NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(
        &st,
        t,
        tag(t, "x"),
        Some("alice"),
        NOW,
        RECHECK
    )));
    // another user: a miss, never alice's verdict
    assert_eq!(
        m.lookup(&st, t, tag(t, "x"), Some("bob"), NOW, RECHECK),
        Lookup::Miss
    );
    assert_eq!(
        m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK),
        Lookup::Miss
    );
    revoke(&st, t, "x", NOW + 1);
    for user in [Some("alice"), Some("bob"), None] {
        assert_eq!(
            m.lookup(&st, t, tag(t, "x"), user, NOW + 1 + RECHECK, RECHECK),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked)),
            "{user:?}"
        );
    }
}

#[test]
fn a_key_expires_while_memoized() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    let exp_s = NOW / 1000 + 60;
    store(&st, t, "x", Binding::NoUser, Some(exp_s), NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK)));
    assert!(valid(&m.lookup(
        &st,
        t,
        tag(t, "x"),
        None,
        exp_s * 1000 - 1,
        RECHECK
    )));
    let l = m.lookup(&st, t, tag(t, "x"), None, exp_s * 1000, RECHECK);
    assert!(!valid(&l), "{l:?}");
}

#[test]
fn a_clock_that_goes_back_reads_the_log_again() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    store(&st, t, "x", Binding::NoUser, None, NOW - 100_000);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK)));
    revoke(&st, t, "x", NOW + 1);
    // the clock went back a minute: the window since the last look is not stretched by it
    assert_eq!(
        m.lookup(&st, t, tag(t, "x"), None, NOW - 60_000, RECHECK),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
}

#[test]
fn recheck_zero_sees_a_revocation_at_once_and_keeps_nothing() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    store(&st, t, "x", Binding::NoUser, None, NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, 0)));
    assert!(m.is_empty());
    revoke(&st, t, "x", NOW + 1);
    assert_eq!(
        m.lookup(&st, t, tag(t, "x"), None, NOW + 1, 0),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
}

#[test]
fn two_prefixes_in_one_vm_have_their_own_logs() {
    let (a, b) = (table_of("kga"), table_of("kgb"));
    assert_ne!(side_key(a, "log"), side_key(b, "log"));
    let st = MemoryStore::default();
    store(&st, a, "x", Binding::NoUser, None, NOW);
    store(&st, b, "x", Binding::NoUser, None, NOW);
    let (mut ma, mut mb) = (Memo::default(), Memo::default());
    assert!(valid(&ma.lookup(&st, a, tag(a, "x"), None, NOW, RECHECK)));
    assert!(valid(&mb.lookup(&st, b, tag(b, "x"), None, NOW, RECHECK)));
    // each plugin's feed marks its own prefix; a revocation under a reaches a's memo
    revoke(&st, a, "x", NOW + 1);
    assert_eq!(
        ma.lookup(&st, a, tag(a, "x"), None, NOW + 1 + RECHECK, RECHECK),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
    revoke(&st, b, "x", NOW + 2);
    assert_eq!(
        mb.lookup(&st, b, tag(b, "x"), None, NOW + 2 + RECHECK, RECHECK),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
}

#[test]
fn keys_an_attacker_sends_grow_no_memo_and_nothing_in_shared_data() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    let mut m = Memo::new(16);
    let mut digests = crate::hash::DigestMemo::new(64);
    for k in 0..20_000u32 {
        let d = digests.sha256(format!("kgb_random{k}").as_bytes());
        let tg = digests.verdict_tag(&d, |d| t.tag(d));
        assert_eq!(
            m.lookup(&st, t, tg, None, NOW + u64::from(k), RECHECK),
            Lookup::Miss
        );
    }
    assert!(m.is_empty());
    assert!(digests.len() <= 64);
    // lookups write nothing: only the log would be, and no revocation came
    assert!(st.map.borrow().is_empty(), "{:?}", st.map.borrow().keys());
    // the log holds at most LOG_LEN tags, whatever the number of revocations
    for k in 0..500 {
        revoke(&st, t, &format!("kgb_revoked_secret_{k:04}"), NOW);
    }
    let log = st.get(&side_key(t, "log")).unwrap().0;
    assert_eq!(log.len(), 4 + 8 + 16 * memo::LOG_LEN);
    // no shared-data value holds a secret or its digest
    for (key, (v, _)) in st.map.borrow().iter() {
        for k in 0..500 {
            let s = format!("kgb_revoked_secret_{k:04}");
            let d = sha256(s.as_bytes());
            assert!(!key.contains(&s));
            assert!(!v.windows(s.len()).any(|w| w == s.as_bytes()), "{key}");
            assert!(!v.windows(32).any(|w| w == d), "{key}: a digest");
        }
    }
}

/// A store whose writes to the revocation log fail while `down`.
struct LogDown<'a> {
    inner: &'a MemoryStore,
    down: Cell<bool>,
}

impl SharedStore for LogDown<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
        if self.down.get() && key.ends_with(":log") {
            return SetOutcome::Failed;
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_mark_whose_log_entry_cannot_be_written_is_applied_again_and_then_reaches_every_memo() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    let p = CachePolicy::default();
    store(&st, t, "x", Binding::NoUser, None, NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(&st, t, tag(t, "x"), None, NOW, RECHECK)));
    let down = LogDown {
        inner: &st,
        down: Cell::new(true),
    };
    let page = [(sha256(b"x"), None)];
    let mut other = Memo::default();
    let mut neg = NegativeCache::new(16);
    // the mark is written, its log entry is not: the page is not done (the cursor stays)
    assert_eq!(
        apply_revocations(&down, t, &p, &page, &mut other, &mut neg, NOW + 1),
        (0, false)
    );
    // the page again, once the log can be written: every memo forgets x
    down.down.set(false);
    assert_eq!(
        apply_revocations(&down, t, &p, &page, &mut other, &mut neg, NOW + 1001),
        (0, true),
        "already marked"
    );
    assert_eq!(
        m.lookup(&st, t, tag(t, "x"), None, NOW + 1001 + RECHECK, RECHECK),
        Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
    );
}

/// The red team on [`Memo::remember`] (the worker that asked keeps the answer it wrote).
mod remember {
    use super::*;

    fn rich(expires_at: Option<u64>) -> Rc<Identity> {
        Rc::new(Identity {
            key_id: "k".into(),
            subject: "alice".into(),
            account: "a".into(),
            plan: "p".into(),
            scopes: vec!["read".into(), "write".into()],
            expires_at,
            rate_limit: Some(crate::ratelimit::Limit {
                requests: 5,
                window_s: 60,
                burst: 9,
            }),
            resources: vec![("aggregator".into(), vec!["a1".into(), "a2".into()])],
        })
    }

    /// Writes `secret`'s valid verdict as the worker that asked does, and keeps it in `m`.
    #[allow(clippy::too_many_arguments)]
    fn write_and_remember(
        st: &dyn SharedStore,
        m: &mut Memo,
        t: &Table,
        secret: &str,
        id: &Rc<Identity>,
        binding: Binding,
        hint: Option<u64>,
        now: u64,
    ) -> Stored {
        let p = CachePolicy::default();
        let slot = entry_key(t, &sha256(secret.as_bytes()));
        let offer = Offer {
            identity: id,
            binding: binding.clone(),
            ttl_hint_s: hint,
            started_ms: now,
        };
        let stored = store_valid(st, &slot, offer, &p, now);
        m.forget(slot.spot.tag);
        if stored == Stored::Written {
            m.remember(slot.spot.tag, valid_entry(id, binding, hint, &p, now));
        }
        stored
    }

    #[test]
    fn what_a_worker_remembers_is_what_it_wrote_with_a_ttl_hint_an_expiry_and_a_user() {
        let t = table_of("kg");
        let exp_s = NOW / 1000 + 100;
        for (i, (exp, hint, binding)) in [
            (None, None, Binding::NoUser),
            (Some(exp_s), None, Binding::AnyUser),
            (None, Some(5), Binding::User("alice".into())),
            (Some(exp_s), Some(1000), Binding::User("bob".into())),
            (Some(NOW / 1000 - 1), None, Binding::NoUser),
        ]
        .into_iter()
        .enumerate()
        {
            let st = MemoryStore::default();
            let mut m = Memo::default();
            let secret = format!("x{i}");
            let id = rich(exp);
            let stored =
                write_and_remember(&st, &mut m, t, &secret, &id, binding.clone(), hint, NOW);
            assert_eq!(stored, Stored::Written);
            let slot = entry_key(t, &sha256(secret.as_bytes()));
            let (bytes, _) = st.get(&slot.spot.key).unwrap();
            let written = slots::find(Some(&bytes), slot.spot.tag)
                .and_then(decode)
                .unwrap();
            let kept = valid_entry(&id, binding.clone(), hint, &CachePolicy::default(), NOW);
            assert_eq!(written, kept, "case {i}");
            // and every lookup, at every instant, from the memo or from shared data, agrees
            let user = match &binding {
                Binding::User(u) => Some(u.as_str()),
                Binding::AnyUser => Some("zed"),
                Binding::NoUser => None,
            };
            let mut reader = Memo::default();
            for at in [
                NOW,
                NOW + 4_999,
                NOW + 5_000,
                NOW + 99_999,
                NOW + 100_000,
                NOW + 900_000,
            ] {
                let a = m.lookup(&st, t, slot.spot.tag, user, at, 1_000_000);
                let b = reader.lookup(&st, t, slot.spot.tag, user, at, 0);
                assert_eq!(a, b, "case {i} at +{}", at - NOW);
            }
        }
    }

    #[test]
    fn a_mark_written_between_the_write_and_remember_is_forgotten_at_the_next_look() {
        let t = table_of("kg");
        for synced in [false, true] {
            let st = MemoryStore::default();
            let mut m = Memo::default();
            if synced {
                // the memo looked at the log just before (the call's answer comes between looks)
                let _ = m.lookup(&st, t, tag(t, "y"), None, NOW, RECHECK);
            }
            let id = ident(None);
            let p = CachePolicy::default();
            let slot = entry_key(t, &sha256(b"x"));
            let offer = Offer {
                identity: &id,
                binding: Binding::NoUser,
                ttl_hint_s: None,
                started_ms: NOW,
            };
            assert_eq!(store_valid(&st, &slot, offer, &p, NOW + 1), Stored::Written);
            // another worker marks x (and logs it) before this one remembers
            revoke(&st, t, "x", NOW + 1);
            m.remember(
                slot.spot.tag,
                valid_entry(&id, Binding::NoUser, None, &p, NOW + 1),
            );
            let l = m.lookup(&st, t, tag(t, "x"), None, NOW + 1 + RECHECK, RECHECK);
            assert_eq!(
                l,
                Lookup::Fresh(Verdict::Refused(Refusal::Revoked)),
                "synced before: {synced}"
            );
        }
    }

    #[test]
    fn a_memo_that_never_looked_at_the_log_forgets_what_it_remembered_at_its_first_look() {
        let t = table_of("kg");
        let st = MemoryStore::default();
        // the log already holds revocations of other keys
        for k in 0..3 {
            revoke(&st, t, &format!("o{k}"), NOW - 10);
        }
        let mut m = Memo::default();
        let stored = write_and_remember(
            &st,
            &mut m,
            t,
            "x",
            &ident(None),
            Binding::NoUser,
            None,
            NOW,
        );
        assert_eq!(stored, Stored::Written);
        revoke(&st, t, "x", NOW + 1);
        // the first look (seq None): everything forgotten, the mark read
        assert_eq!(
            m.lookup(&st, t, tag(t, "x"), None, NOW + 2, RECHECK),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
    }

    #[test]
    fn more_revocations_than_the_log_holds_after_remember_forget_it() {
        let t = table_of("kg");
        let st = MemoryStore::default();
        let mut m = Memo::default();
        let _ = m.lookup(&st, t, tag(t, "y"), None, NOW, RECHECK);
        let stored = write_and_remember(
            &st,
            &mut m,
            t,
            "x",
            &ident(None),
            Binding::NoUser,
            None,
            NOW,
        );
        assert_eq!(stored, Stored::Written);
        revoke(&st, t, "x", NOW + 1);
        for k in 0..memo::LOG_LEN + 3 {
            revoke(&st, t, &format!("o{k}"), NOW + 2);
        }
        assert_eq!(
            m.lookup(&st, t, tag(t, "x"), None, NOW + 2 + RECHECK, RECHECK),
            Lookup::Fresh(Verdict::Refused(Refusal::Revoked))
        );
    }

    #[test]
    fn a_revoked_or_unsure_or_uncached_answer_is_never_written_so_never_remembered() {
        let t = table_of("kg");
        let p = CachePolicy::default();
        // revoked while on its way
        let st = MemoryStore::default();
        let mut m = Memo::default();
        revoke(&st, t, "x", NOW + 5);
        let s = write_and_remember(
            &st,
            &mut m,
            t,
            "x",
            &ident(None),
            Binding::NoUser,
            None,
            NOW,
        );
        assert_eq!((s, m.len()), (Stored::Revoked, 0));
        // a huge identity (> MAX_ENTRY_BYTES): not cached, not remembered
        let st = MemoryStore::default();
        let mut big = (*ident(None)).clone();
        big.scopes = (0..40).map(|i| format!("scope-{i:040}")).collect();
        let s = write_and_remember(
            &st,
            &mut m,
            t,
            "x",
            &Rc::new(big),
            Binding::NoUser,
            None,
            NOW,
        );
        assert_eq!((s, m.len()), (Stored::NotCached, 0));
        // unsure: the floor above the call's start
        let small: &'static Table = Box::leak(Box::new(Table::new(
            "kg",
            'v',
            slots::Geometry::of(4, 4),
            (7, 9),
        )));
        let st = MemoryStore::default();
        let mut page = vec![(sha256(b"x"), None)];
        page.extend((0..10).map(|k| (sha256(format!("o{k}").as_bytes()), None)));
        let mut neg = NegativeCache::new(16);
        let mut other = Memo::default();
        assert!(apply_revocations(&st, small, &p, &page, &mut other, &mut neg, NOW + 1).1);
        let offer = Offer {
            identity: &ident(None),
            binding: Binding::NoUser,
            ttl_hint_s: None,
            started_ms: NOW,
        };
        let slot = entry_key(small, &sha256(b"z"));
        assert_eq!(
            store_valid(&st, &slot, offer, &p, NOW + 300),
            Stored::Unsure
        );
    }

    #[test]
    fn remember_is_bounded_by_the_cap() {
        let mut m = Memo::new(16);
        let p = CachePolicy::default();
        for k in 0..1000u128 {
            m.remember(k, valid_entry(&ident(None), Binding::NoUser, None, &p, NOW));
            assert!(m.len() <= 16);
        }
    }
}

/// `keygate.cache.memo_hit` counts cache hits served from the memo: a memoized verdict that does
/// not hold for the user presented is a miss (the service is asked), not a memo hit.
#[test]
fn a_memoized_verdict_for_another_user_is_no_memo_hit() {
    let t = table_of("kg");
    let st = MemoryStore::default();
    store(&st, t, "x", Binding::User("alice".into()), None, NOW);
    let mut m = Memo::default();
    assert!(valid(&m.lookup(
        &st,
        t,
        tag(t, "x"),
        Some("alice"),
        NOW,
        RECHECK
    )));
    assert_eq!(m.take_served(), 0, "read from shared data");
    assert!(valid(&m.lookup(
        &st,
        t,
        tag(t, "x"),
        Some("alice"),
        NOW,
        RECHECK
    )));
    assert_eq!(m.take_served(), 1, "from the memo");
    for user in [Some("bob"), None] {
        assert_eq!(
            m.lookup(&st, t, tag(t, "x"), user, NOW, RECHECK),
            Lookup::Miss
        );
    }
    assert_eq!(m.take_served(), 0, "two misses, no memo hit");
}
