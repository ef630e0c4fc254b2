use super::*;
use keygate::contract::parse_verify;
use keygate::verdict::{Refusal as KgRefusal, Verdict};

fn rec() -> KeyRecord {
    KeyRecord {
        id: "bk_1".into(),
        kind: Kind::Business,
        name: "n".into(),
        key_hash: sha256_hex(b"s"),
        hint: String::new(),
        user: None,
        subject: "bk_1".into(),
        account: "acme".into(),
        plan: "free".into(),
        scopes: vec!["read".into(), "write".into()],
        resources: BTreeMap::from([("aggregator".into(), vec!["a1".into()])]),
        ratelimit: Some(RateLimit {
            requests: 5,
            window_s: 60,
            burst: 5,
        }),
        created_at: 100,
        expires_at: Some(1_000),
        revoked_at: None,
        disabled: false,
        replaced_by: None,
        account_disabled: false,
        user_disabled: false,
    }
}

#[test]
fn keygate_parses_every_verdict_the_service_writes() {
    let r = rec();
    let a = parse_verify(Some(200), &verdict_json(Some(&r), None, 990)).map_err(|e| e.as_str());
    let Ok(a) = a else {
        panic!("{a:?}");
    };
    let Verdict::Valid(id) = a.verdict else {
        panic!("not valid");
    };
    assert_eq!(
        (id.key_id.as_str(), id.account.as_str(), id.expires_at),
        ("bk_1", "acme", Some(1_000))
    );
    assert_eq!(a.ttl_hint_s, Some(10)); // never cached past the key's expiry
    let gone = parse_verify(Some(200), &verdict_json(Some(&r), None, 1_000)).map(|a| a.verdict);
    assert_eq!(gone, Ok(Verdict::Refused(KgRefusal::Expired)));
    let other_user =
        parse_verify(Some(200), &verdict_json(Some(&r), Some("bob"), 0)).map(|a| a.verdict);
    assert_eq!(other_user, Ok(Verdict::Refused(KgRefusal::Unknown)));
    let mut revoked = r.clone();
    revoked.revoked_at = Some(5);
    revoked.disabled = true;
    let v = parse_verify(Some(200), &verdict_json(Some(&revoked), None, 0)).map(|a| a.verdict);
    assert_eq!(v, Ok(Verdict::Refused(KgRefusal::Revoked)));
    let mut off = r.clone();
    off.account_disabled = true;
    let v = parse_verify(Some(200), &verdict_json(Some(&off), None, 0)).map(|a| a.verdict);
    assert_eq!(v, Ok(Verdict::Refused(KgRefusal::Disabled)));
}

#[test]
fn the_wire_form_is_contract_v1() {
    let mut r = rec();
    r.expires_at = None;
    let v: Value = serde_json::from_slice(&verdict_json(Some(&r), None, 0)).unwrap_or_default();
    assert_eq!(
        v,
        json!({"contract": 1, "valid": true, "code": "VALID", "key_id": "bk_1", "subject": "bk_1",
               "account": "acme", "plan": "free", "scopes": ["read", "write"], "expires_at": null,
               "ratelimit": {"requests": 5, "window_s": 60, "burst": 5},
               "resources": {"aggregator": ["a1"]}, "cache_ttl_s": 60})
    );
    let v: Value = serde_json::from_slice(&verdict_json(None, None, 0)).unwrap_or_default();
    assert_eq!(
        v,
        json!({"contract": 1, "valid": false, "code": "NOT_FOUND", "cache_ttl_s": 10})
    );
}

#[test]
fn query_ints() {
    assert_eq!(query_int("", "since", -1, -1, 9).ok(), Some(-1));
    assert_eq!(query_int("since=5&limit=2", "limit", 0, 1, 9).ok(), Some(2));
    for bad in [
        "since=",
        "since=abc",
        "since=-2",
        "since=1.5",
        "since=99999999999999999999",
        "since=+1",
    ] {
        assert!(query_int(bad, "since", -1, -1, 1 << 62).is_err(), "{bad}");
    }
}

#[test]
fn routes() {
    assert_eq!(routes_for("/v1/tokens/business/bk_1").len(), 1);
    assert!(routes_for("/v1/tokens/business/b k").is_empty());
    assert_eq!(
        routes_for("/v1/tokens/named/nk_1/rotate")[0].1,
        Action::RotateNamed
    );
    assert!(routes_for("/nowhere").is_empty());
}
