//! One behaviour suite for every storage backend: SQLite (a temporary file) and PostgreSQL (a
//! throwaway cluster from Debian's package, started by tests/services/pg.sh on a free loopback
//! port). Both must behave the same; PostgreSQL also with two replicas on one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use keyservice::history::{Excerpt, HistoryRecord};
use keyservice::model::{sha256_hex, Account, KeyRecord, Kind, Session, State, User};
use keyservice::store::{self, HistoryQuery, KeyFilter, StatusFilter, Store, StoreError, UsageOf};

fn key(id: &str, kind: Kind, account: &str, user: Option<&str>, created_at: i64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        kind,
        name: format!("{id} name"),
        key_hash: sha256_hex(format!("secret-{id}").as_bytes()),
        hint: "kgb_abcd".into(),
        user: user.map(str::to_string),
        subject: user.unwrap_or(id).into(),
        account: account.into(),
        plan: "free".into(),
        scopes: vec!["read".into()],
        resources: BTreeMap::from([("agg".into(), vec!["a".into(), "b".into()])]),
        ratelimit: None,
        created_at,
        expires_at: None,
        revoked_at: None,
        disabled: false,
        replaced_by: None,
        account_disabled: false,
        user_disabled: false,
    }
}

fn user(name: &str, account: &str) -> User {
    User {
        name: name.into(),
        email: format!("{name}@example.com"),
        account: account.into(),
        password_hash: "$argon2id$not-a-real-hash".into(),
        disabled: false,
        created_at: 1,
    }
}

async fn feed_ids(s: &dyn Store, since: i64) -> Vec<String> {
    let (rows, more) = s.revocations_since(since, 1000).await.unwrap();
    assert!(!more);
    rows.into_iter().map(|r| r.key_id).collect()
}

/// The behaviour every backend must have.
async fn suite(s: Arc<dyn Store>) {
    let s = s.as_ref();
    // -- keys: insert, read, conflicts
    let k1 = key("bk_1", Kind::Business, "acme", None, 10);
    assert!(s.insert_key(&k1, false).await.unwrap());
    assert_eq!(
        s.key_by_hash(&k1.key_hash).await.unwrap().as_deref(),
        Some(&k1)
    );
    assert_eq!(s.key_by_id("bk_1").await.unwrap().as_ref(), Some(&k1));
    assert!(s.key_by_id("nope").await.unwrap().is_none());
    let mut dup_hash = key("bk_other", Kind::Business, "acme", None, 10);
    dup_hash.key_hash = k1.key_hash.clone();
    assert!(matches!(
        s.insert_key(&dup_hash, false).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.insert_key(&k1, false).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!s.insert_key(&k1, true).await.unwrap());

    // -- the feed: one entry per revocation, in order, paged
    let start = s.revocation_cursor().await.unwrap();
    assert_eq!(start, 0);
    for i in 2..=4 {
        s.insert_key(
            &key(&format!("bk_{i}"), Kind::Business, "acme", None, i),
            false,
        )
        .await
        .unwrap();
    }
    assert!(s.revoke("bk_2", "revoked", 100).await.unwrap());
    assert!(!s.revoke("bk_2", "revoked", 101).await.unwrap());
    assert!(s.revoke("bk_3", "revoked", 102).await.unwrap());
    assert_eq!(s.revocation_cursor().await.unwrap(), 2);
    assert_eq!(feed_ids(s, 0).await, ["bk_2", "bk_3"]);
    let (page, more) = s.revocations_since(0, 1).await.unwrap();
    assert!(more && page.len() == 1 && page[0].seq == 1);
    assert_eq!(page[0].key_hash, sha256_hex(b"secret-bk_2"));
    assert_eq!(
        s.key_by_id("bk_2").await.unwrap().unwrap().state(0),
        State::Revoked
    );
    assert_eq!(
        s.key_by_id("bk_2").await.unwrap().unwrap().revoked_at,
        Some(100)
    );

    // -- listing and counting
    let live = s
        .list_keys(&KeyFilter {
            account: "acme",
            kind: Some(Kind::Business),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        live.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["bk_4", "bk_1"]
    );
    let all = s
        .list_keys(&KeyFilter {
            account: "acme",
            include_revoked: true,
            limit: Some(3),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["bk_1", "bk_4", "bk_3"]
    );
    assert_eq!(s.count_live_keys("acme", 0).await.unwrap(), 2);

    // -- an operator's change: plan, account, subject, limit; no feed entry
    let c = s.revocation_cursor().await.unwrap();
    let ch = keyservice::store::KeyChange {
        plan: Some("pro".into()),
        ratelimit: Some(Some(keyservice::model::RateLimit {
            requests: 5,
            window_s: 60,
            burst: 5,
        })),
        ..Default::default()
    };
    let k = s.update_key("bk_4", &ch).await.unwrap().unwrap();
    assert_eq!(
        (
            k.plan.as_str(),
            k.account.as_str(),
            k.ratelimit.map(|r| r.requests)
        ),
        ("pro", "acme", Some(5))
    );
    let k = s
        .update_key(
            "bk_4",
            &keyservice::store::KeyChange {
                ratelimit: Some(None),
                plan: Some("free".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((k.plan.as_str(), k.ratelimit), ("free", None));
    assert_eq!(
        s.key_by_hash(&k.key_hash).await.unwrap().unwrap().plan,
        "free"
    );
    assert!(s.update_key("nope", &ch).await.unwrap().is_none());
    assert_eq!(s.revocation_cursor().await.unwrap(), c);

    // -- disabling a key: a feed entry once; re-enabling: none
    let c = s.revocation_cursor().await.unwrap();
    let k = s
        .set_key_disabled("bk_4", true, 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.state(0), State::Disabled);
    s.set_key_disabled("bk_4", true, 201).await.unwrap();
    assert_eq!(feed_ids(s, c).await, ["bk_4"]);
    let k = s
        .set_key_disabled("bk_4", false, 202)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.state(0), State::Valid);
    assert!(s.set_key_disabled("nope", true, 0).await.unwrap().is_none());

    // -- accounts and users
    let acme = Account {
        name: "acme".into(),
        plan: "basic".into(),
        disabled: false,
        created_at: 1,
    };
    assert!(s.create_account(&acme).await.unwrap());
    assert!(!s.create_account(&acme).await.unwrap());
    assert_eq!(s.account("acme").await.unwrap(), Some(acme.clone()));
    s.create_user(&user("alice", "acme")).await.unwrap();
    assert!(matches!(
        s.create_user(&user("alice", "acme")).await,
        Err(StoreError::Conflict(_))
    ));
    let mut same_email = user("alice2", "acme");
    same_email.email = "alice@example.com".into();
    assert!(matches!(
        s.create_user(&same_email).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .name,
        "alice"
    );
    assert_eq!(s.list_users(Some("acme"), 10).await.unwrap().len(), 1);
    assert!(s.list_users(Some("globex"), 10).await.unwrap().is_empty());
    let pat = key("nk_a", Kind::Named, "acme", Some("alice"), 20);
    s.insert_key(&pat, false).await.unwrap();

    // a disabled user: its keys refused (feed entries), sessions gone; enabled: back
    let sess = Session {
        id_hash: sha256_hex(b"s1"),
        user: "alice".into(),
        csrf: "c".into(),
        created_at: 50,
        expires_at: 500,
    };
    s.create_session(&sess, 5).await.unwrap();
    let c = s.revocation_cursor().await.unwrap();
    assert!(s.set_user_disabled("alice", true, 300).await.unwrap());
    assert_eq!(feed_ids(s, c).await, ["nk_a"]);
    assert_eq!(
        s.key_by_id("nk_a").await.unwrap().unwrap().state(0),
        State::Disabled
    );
    assert!(s.session(&sess.id_hash, 60).await.unwrap().is_none());
    assert!(s.set_user_disabled("alice", false, 301).await.unwrap());
    assert_eq!(
        s.key_by_id("nk_a").await.unwrap().unwrap().state(0),
        State::Valid
    );
    assert!(!s.set_user_disabled("nobody", true, 0).await.unwrap());

    // a disabled account: every live key refused, one entry each (not the revoked ones)
    let c = s.revocation_cursor().await.unwrap();
    assert!(s.set_account_disabled("acme", true, 400).await.unwrap());
    let mut ids = feed_ids(s, c).await;
    ids.sort();
    assert_eq!(ids, ["bk_1", "bk_4", "nk_a"]);
    assert_eq!(
        s.key_by_id("bk_1").await.unwrap().unwrap().state(0),
        State::Disabled
    );
    assert!(s.set_account_disabled("acme", false, 401).await.unwrap());
    assert_eq!(
        s.key_by_id("bk_1").await.unwrap().unwrap().state(0),
        State::Valid
    );
    assert!(!s.set_account_disabled("nobody", true, 0).await.unwrap());

    // -- revoke all of a kind (and user)
    let c = s.revocation_cursor().await.unwrap();
    s.insert_key(
        &key("pk_1", Kind::Personal, "acme", Some("alice"), 30),
        false,
    )
    .await
    .unwrap();
    s.insert_key(&key("pk_2", Kind::Personal, "acme", Some("bob"), 31), false)
        .await
        .unwrap();
    s.insert_key(
        &key("pk_3", Kind::Personal, "globex", Some("carol"), 32),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        s.revoke_all("acme", Kind::Personal, Some("alice"), 500)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.revoke_all("acme", Kind::Personal, None, 501)
            .await
            .unwrap(),
        1
    );
    assert_eq!(feed_ids(s, c).await, ["pk_1", "pk_2"]);
    assert_eq!(
        s.key_by_id("pk_3").await.unwrap().unwrap().state(0),
        State::Valid
    );

    // -- rotation with grace
    let old = key("bk_rot", Kind::Business, "acme", None, 40);
    s.insert_key(&old, false).await.unwrap();
    let new = key("bk_rot2", Kind::Business, "acme", None, 1_000);
    assert!(s
        .rotate("bk_rot", &new, 1_000 + 3_600, 1_000)
        .await
        .unwrap());
    let o = s.key_by_id("bk_rot").await.unwrap().unwrap();
    assert_eq!(
        (o.expires_at, o.replaced_by.as_deref()),
        (Some(4_600), Some("bk_rot2"))
    );
    assert_eq!(o.state(4_599), State::Valid);
    assert_eq!(o.state(4_600), State::Expired);
    assert_eq!(
        s.key_by_id("bk_rot2").await.unwrap().unwrap().state(4_600),
        State::Valid
    );
    // rotated once only, and not while in grace
    assert!(!s
        .rotate(
            "bk_rot",
            &key("bk_rot3", Kind::Business, "acme", None, 1_001),
            5_000,
            1_001
        )
        .await
        .unwrap());
    assert!(s.key_by_id("bk_rot3").await.unwrap().is_none());
    let c = s.revocation_cursor().await.unwrap();
    assert_eq!(s.promote_due(4_599).await.unwrap(), 0);
    assert_eq!(s.promote_due(4_600).await.unwrap(), 1);
    assert_eq!(s.promote_due(4_601).await.unwrap(), 0);
    assert_eq!(feed_ids(s, c).await, ["bk_rot"]);
    let o = s.key_by_id("bk_rot").await.unwrap().unwrap();
    assert_eq!((o.state(0), o.revoked_at), (State::Revoked, Some(4_600)));

    // grace 0: refused at once, in the feed at once
    let old = key("nk_rot", Kind::Named, "acme", Some("alice"), 50);
    let mut old = old;
    old.expires_at = Some(10_000);
    s.insert_key(&old, false).await.unwrap();
    let c = s.revocation_cursor().await.unwrap();
    assert!(s
        .rotate(
            "nk_rot",
            &key("nk_rot2", Kind::Named, "acme", Some("alice"), 2_000),
            2_000,
            2_000
        )
        .await
        .unwrap());
    assert_eq!(feed_ids(s, c).await, ["nk_rot"]);
    assert_eq!(
        s.key_by_id("nk_rot").await.unwrap().unwrap().revoked_at,
        Some(2_000)
    );
    // a grace past the key's own expiry does not lengthen it
    let mut short = key("bk_short", Kind::Business, "acme", None, 60);
    short.expires_at = Some(3_000);
    s.insert_key(&short, false).await.unwrap();
    assert!(s
        .rotate(
            "bk_short",
            &key("bk_short2", Kind::Business, "acme", None, 2_500),
            9_000,
            2_500
        )
        .await
        .unwrap());
    assert_eq!(
        s.key_by_id("bk_short").await.unwrap().unwrap().expires_at,
        Some(3_000)
    );

    // -- restore (the demo keys)
    s.restore_key("bk_2", &sha256_hex(b"secret-bk_2"), Some(99))
        .await
        .unwrap();
    let k = s.key_by_id("bk_2").await.unwrap().unwrap();
    assert_eq!((k.state(0), k.expires_at), (State::Valid, Some(99)));
    s.restore_key("bk_3", "0000", None).await.unwrap(); // wrong hash: untouched
    assert_eq!(
        s.key_by_id("bk_3").await.unwrap().unwrap().state(0),
        State::Revoked
    );

    // -- sessions: expiry, bound per user, delete
    for i in 0..7 {
        let x = Session {
            id_hash: sha256_hex(format!("u{i}").as_bytes()),
            user: "bob".into(),
            csrf: "c".into(),
            created_at: 1_000 + i,
            expires_at: 2_000,
        };
        s.create_session(&x, 5).await.unwrap();
    }
    let kept: usize = futures_count(
        s,
        (0..7).map(|i| sha256_hex(format!("u{i}").as_bytes())),
        1_500,
    )
    .await;
    assert_eq!(kept, 5);
    assert!(s
        .session(&sha256_hex(b"u6"), 1_999)
        .await
        .unwrap()
        .is_some());
    assert!(s
        .session(&sha256_hex(b"u6"), 2_000)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .session(&sha256_hex(b"u0"), 1_500)
        .await
        .unwrap()
        .is_none()); // the oldest went
    s.delete_session(&sha256_hex(b"u6")).await.unwrap();
    assert!(s
        .session(&sha256_hex(b"u6"), 1_500)
        .await
        .unwrap()
        .is_none());
    s.delete_user_sessions("bob").await.unwrap();
    assert!(s
        .session(&sha256_hex(b"u5"), 1_500)
        .await
        .unwrap()
        .is_none());
    assert!(s.set_password("alice", "$argon2id$other").await.unwrap());

    // -- purge: what ended before the instant goes; the live keys and the cursor stay
    let cursor = s.revocation_cursor().await.unwrap();
    let live_before = s.count_live_keys("acme", 0).await.unwrap();
    let gone = s.purge(4_601).await.unwrap();
    assert!(gone >= 5, "{gone}");
    assert!(s.key_by_id("bk_3").await.unwrap().is_none()); // revoked at 102
    assert!(s.key_by_id("bk_rot").await.unwrap().is_none()); // revoked at 4_600
    assert!(s.key_by_id("bk_short").await.unwrap().is_none()); // expired at 3_000
    assert!(s.key_by_id("bk_1").await.unwrap().is_some());
    assert_eq!(s.revocation_cursor().await.unwrap(), cursor);
    let (left, _) = s.revocations_since(0, 1000).await.unwrap();
    assert_eq!(left.len(), 1, "only the newest entry stays: {left:?}");
    assert!(s.count_live_keys("acme", 0).await.unwrap() <= live_before);
    assert_eq!(
        s.user_by_name("alice")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$other"
    );
    history_suite(s).await;
}

fn req(key: &str, account: &str, at_ms: i64, status: u16) -> HistoryRecord {
    HistoryRecord {
        key_id: key.into(),
        account: account.into(),
        plan: "free".into(),
        at_ms,
        method: "GET".into(),
        path: format!("/r/{status}"),
        status,
        duration_ms: Some(3),
        upstream_ms: (status != 429).then_some(2),
        bytes_in: 0,
        bytes_out: 10,
        decision: "allowed".into(),
        request_id: format!("rid-{at_ms}"),
        req_body: None,
        resp_body: None,
    }
}

/// Request history: bounded per key, counted per day and class, last use, filters, purge.
async fn history_suite(s: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let t0 = 20_000 * DAY + 1_000; // day 20000
    let mut a: Vec<HistoryRecord> = [200, 201, 404, 500, 0]
        .iter()
        .enumerate()
        .map(|(i, st)| req("hk_a", "acme", t0 + i as i64, *st))
        .collect();
    a[4].req_body = Some(Excerpt {
        content_type: "application/json".into(),
        bytes: Some(11),
        text: "{\"a\": \"b\"}".into(),
        truncated: false,
        omitted: None,
    });
    let b = vec![
        req("hk_b", "globex", t0 + DAY, 429),
        req("hk_b", "globex", t0 + DAY + 5, 200),
    ];
    assert_eq!(s.record_history(&a, 3).await.unwrap(), 5);
    assert_eq!(s.record_history(&b, 3).await.unwrap(), 2);
    // a late record older than the newest 3 is not kept
    s.record_history(&[req("hk_a", "acme", t0 - 1, 204)], 3)
        .await
        .unwrap();
    assert_eq!(s.record_history(&[], 3).await.unwrap(), 0);
    let q = |key: &'static str, status| HistoryQuery {
        key_id: key,
        status,
        from_ms: 0,
        to_ms: i64::MAX,
        before: None,
        limit: 100,
    };
    // the newest 3 of hk_a stay, newest first
    let rows = s.history(&q("hk_a", StatusFilter::Any)).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.record.status).collect::<Vec<_>>(),
        [0, 500, 404]
    );
    assert_eq!(rows[0].record, a[4]);
    assert_eq!(rows[1].record, a[3]);
    // filters: a class, a status, outside the classes, time, pages
    let st = |f| async move {
        s.history(&q("hk_a", f))
            .await
            .unwrap()
            .iter()
            .map(|r| r.record.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(st(StatusFilter::Range(400, 499)).await, [404]);
    assert_eq!(st(StatusFilter::Range(500, 500)).await, [500]);
    assert_eq!(st(StatusFilter::Other).await, [0]);
    assert_eq!(st(StatusFilter::Range(200, 299)).await, Vec::<u16>::new());
    let mut timed = q("hk_a", StatusFilter::Any);
    (timed.from_ms, timed.to_ms) = (t0 + 3, t0 + 4);
    assert_eq!(s.history(&timed).await.unwrap().len(), 1);
    let mut page = q("hk_a", StatusFilter::Any);
    page.limit = 2;
    let first = s.history(&page).await.unwrap();
    page.before = Some((first[1].record.at_ms, first[1].id));
    let second = s.history(&page).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].record.status, 404);
    // one request, only under its own key
    assert_eq!(
        s.history_entry("hk_a", rows[0].id)
            .await
            .unwrap()
            .unwrap()
            .record,
        a[4]
    );
    assert!(s.history_entry("hk_b", rows[0].id).await.unwrap().is_none());
    // usage counts every request (the history keeps only the newest), per day and class
    let u = s
        .usage(UsageOf::Account("acme"), 0, i64::MAX / DAY)
        .await
        .unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].counts.day, 20_000);
    assert_eq!(u[0].counts.counts, [3, 0, 1, 1, 1]);
    s.record_history(&[req("hk_a", "acme", t0 + 10, 302)], 3)
        .await
        .unwrap();
    let u = s
        .usage(UsageOf::Keys(&["hk_a".into()]), 20_000, 20_000)
        .await
        .unwrap();
    assert_eq!(u[0].counts.counts, [3, 1, 1, 1, 1]);
    let all = s.usage(UsageOf::All, 0, 30_000).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[1].account.as_str(), all[1].counts.day),
        ("globex", 20_001)
    );
    assert_eq!(all[1].counts.counts, [1, 0, 1, 0, 0]);
    assert!(s
        .usage(UsageOf::All, 20_002, 30_000)
        .await
        .unwrap()
        .is_empty());
    // last use, per account
    let act = s.key_activity("acme", 10).await.unwrap();
    assert_eq!(act.len(), 1);
    assert_eq!(
        (act[0].key_id.as_str(), act[0].last_used_ms),
        ("hk_a", t0 + 10)
    );
    // a late record does not move "last used" back
    s.record_history(&[req("hk_a", "acme", t0, 200)], 3)
        .await
        .unwrap();
    assert_eq!(
        s.key_activity("acme", 10).await.unwrap()[0].last_used_ms,
        t0 + 10
    );
    assert!(s.key_activity("nobody", 10).await.unwrap().is_empty());
    // purge: requests before an instant, usage before a day
    let gone = s.purge_history(t0 + DAY, 20_001).await.unwrap();
    assert!(gone >= 4, "{gone}");
    assert!(s
        .history(&q("hk_a", StatusFilter::Any))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.history(&q("hk_b", StatusFilter::Any))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(s
        .usage(UsageOf::Account("acme"), 0, 30_000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.usage(UsageOf::Account("globex"), 0, 30_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn futures_count(s: &dyn Store, ids: impl Iterator<Item = String>, now: i64) -> usize {
    let mut n = 0;
    for id in ids {
        if s.session(&id, now).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_behaves() {
    let dir = tempdir("sqlite");
    let s = store::open(dir.join("keys.sqlite").to_str().unwrap())
        .await
        .unwrap();
    suite(s).await;
    // reopening applies no migration twice and keeps the data
    let s = store::open(dir.join("keys.sqlite").to_str().unwrap())
        .await
        .unwrap();
    assert!(s.key_by_id("bk_1").await.unwrap().is_some());
    std::fs::remove_dir_all(dir).ok();
}

/// The SQLite store remembers found keys for a second: a refusal written by another process
/// (the CLI) is noticed as soon as the feed's cursor is read, which happens before any feed
/// answer and every second.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_memory_of_lookups_forgets_what_another_process_refused() {
    let dir = tempdir("sqlite-memory");
    let path = dir.join("keys.sqlite");
    let service = store::open(path.to_str().unwrap()).await.unwrap();
    let cli = store::open(path.to_str().unwrap()).await.unwrap();
    let k = key("bk_m", Kind::Business, "acme", None, 1);
    service.insert_key(&k, false).await.unwrap();
    service.revocation_cursor().await.unwrap();
    assert_eq!(
        service
            .key_by_hash(&k.key_hash)
            .await
            .unwrap()
            .unwrap()
            .state(0),
        State::Valid
    );
    // refused by another process: remembered for at most a second, until the cursor is read
    cli.revoke("bk_m", "revoked", 5).await.unwrap();
    let remembered = service.key_by_hash(&k.key_hash).await.unwrap().unwrap();
    assert_eq!(
        remembered.state(0),
        State::Valid,
        "the memory is what this test is about"
    );
    assert_eq!(service.revocation_cursor().await.unwrap(), 1);
    assert_eq!(
        service
            .key_by_hash(&k.key_hash)
            .await
            .unwrap()
            .unwrap()
            .state(0),
        State::Revoked
    );
    // a write through the service itself forgets at once
    let k2 = key("bk_m2", Kind::Business, "acme", None, 2);
    service.insert_key(&k2, false).await.unwrap();
    assert!(service.key_by_hash(&k2.key_hash).await.unwrap().is_some());
    service.set_key_disabled("bk_m2", true, 6).await.unwrap();
    assert_eq!(
        service
            .key_by_hash(&k2.key_hash)
            .await
            .unwrap()
            .unwrap()
            .state(0),
        State::Disabled
    );
    // and the memory lasts a second at most
    cli.set_key_disabled("bk_m2", false, 7).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        service
            .key_by_hash(&k2.key_hash)
            .await
            .unwrap()
            .unwrap()
            .state(0),
        State::Valid
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_behaves_and_replicas_agree_on_one_feed() {
    let pg = Postgres::start();
    let s = store::open(&pg.url).await.unwrap();
    suite(s.clone()).await;
    // a second replica on the same database (migrations already applied: none run twice)
    let b = store::open(&pg.url).await.unwrap();
    assert_eq!(
        b.revocation_cursor().await.unwrap(),
        s.revocation_cursor().await.unwrap()
    );
    assert!(b.key_by_id("bk_1").await.unwrap().is_some());

    // Two replicas revoke 200 keys concurrently while a third polls the feed as keygate does:
    // the poller sees every revocation exactly once, in cursor order, with no cursor gap skipped.
    let c = store::open(&pg.url).await.unwrap();
    for i in 0..200 {
        s.insert_key(
            &key(&format!("bk_c{i}"), Kind::Business, "conc", None, i),
            false,
        )
        .await
        .unwrap();
    }
    let mut cursor = s.revocation_cursor().await.unwrap();
    let writers: Vec<_> = [s.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, st)| {
            tokio::spawn(async move {
                for i in (w..200).step_by(2) {
                    assert!(st.revoke(&format!("bk_c{i}"), "revoked", 7).await.unwrap());
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.len() < 200 && std::time::Instant::now() < deadline {
        let (rows, _) = c.revocations_since(cursor, 7).await.unwrap();
        for r in rows {
            assert!(r.seq > cursor);
            cursor = r.seq;
            seen.push(r.key_id);
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let (rest, _) = c.revocations_since(cursor, 1000).await.unwrap();
    assert!(
        rest.is_empty(),
        "entries appeared behind the poller's cursor: {rest:?}"
    );
    assert_eq!(seen.len(), 200);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 200);
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "keyservice-test-{tag}-{}-{}",
        std::process::id(),
        &sha256_hex(tag.as_bytes())[..6]
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A throwaway PostgreSQL cluster (tests/services/pg.sh), stopped when dropped.
struct Postgres {
    dir: PathBuf,
    url: String,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempdir("pg");
        let out = Command::new(pg_sh())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run tests/services/pg.sh");
        assert!(
            out.status.success(),
            "could not start PostgreSQL:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Postgres { dir, url }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(pg_sh()).arg("stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/services/pg.sh")
}
