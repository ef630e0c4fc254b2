//! `cache::decode` on arbitrary shared-data bytes (another worker's, another plugin's, an older
//! layout's), then the same bytes through `Memo::lookup` and `mark_revoked`.
//! Properties: whatever decodes re-encodes to something that decodes to the same entry (a
//! refusal always comes back as the revoked mark, the only refusal keygate writes); after
//! `mark_revoked`, no lookup at that instant serves a `Valid` verdict.
//!
//! The bytes are tried as the secret's entry in its set, and as a whole set value (another
//! writer's, or damaged).
//!
//! Input: the raw stored value (`KG2` + fresh_until_ms u64le + stale_until_ms u64le + tag, then
//! the binding and the JSON identity when tag is 0, the revocation instant u64le otherwise).

use crate::common;

use keygate::cache::{self, CachePolicy, Lookup, Memo};
use keygate::hash::credential_id;
use keygate::slots;
use keygate::store::SharedStore;
use keygate::verdict::{Refusal, Verdict};

const NOW_MS: u64 = 1_800_000_000_000;

/// One input.
pub fn run(data: &[u8]) {
    if let Some(e) = cache::decode(data) {
        let back = cache::decode(&cache::encode(&e)).expect("an encoded entry must decode");
        assert_eq!(
            (back.fresh_until_ms, back.stale_until_ms),
            (e.fresh_until_ms, e.stale_until_ms)
        );
        match &e.verdict {
            // keygate only ever writes Valid (tag 0) and the revoked mark (tag 1).
            Verdict::Valid(_) => assert_eq!(back.verdict, e.verdict, "round trip"),
            Verdict::Refused(_) => assert_eq!(back.verdict, Verdict::Refused(Refusal::Revoked)),
        }
    }

    let table = slots::Table::new("kg", 'v', slots::Geometry::of(64, 4), (1, 2));
    let id = credential_id(Some("alice"), "secret");
    let key = cache::entry_key(&table, &id);
    let mut set = Vec::new();
    let _ = slots::place(
        None,
        4,
        key.spot.tag,
        data,
        |_| slots::Class::Free,
        &mut set,
    );
    for value in [&set[..], data] {
        let store = common::FuzzStore::default();
        store.set(&key.spot.key, value, 0);
        one(&store, &key, &id, data, std::ptr::eq(value, data));
    }
}

fn one(
    store: &common::FuzzStore,
    key: &cache::Slot<'_>,
    id: &keygate::hash::Digest32,
    data: &[u8],
    raw: bool,
) {
    assert_eq!(key.spot.tag, key.table.tag(id), "the slot is the id's");
    let mut memo = Memo::default();
    let before = memo.lookup(store, key.table, key.spot.tag, Some("alice"), NOW_MS, 0);
    if cache::decode(data).is_none() || raw {
        assert_eq!(before, Lookup::Miss);
    }
    // Second lookup hits the memo: it must agree with the first.
    assert_eq!(
        memo.lookup(store, key.table, key.spot.tag, Some("alice"), NOW_MS, 0),
        before
    );

    let policy = CachePolicy::default();
    cache::mark_revoked(store, key, &policy, NOW_MS);
    {
        match memo.lookup(store, key.table, key.spot.tag, Some("alice"), NOW_MS, 0) {
            Lookup::Fresh(Verdict::Valid(_)) | Lookup::Stale(Verdict::Valid(_)) => {
                panic!("a revoked entry still serves Valid")
            }
            _ => {}
        }
    }
}
