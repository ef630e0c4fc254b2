//! The key-service contract, version 1 (documented in envoy/contract/key-service-contract.md).
//!
//! keygate → `POST {verify_path}` `{"key": SECRET, "user": USER|null}`; a completed check is a 2xx
//! JSON answer `{"contract":1, "valid":bool, "code":..., "key_id", "subject", "account", "plan",
//! "scopes", "expires_at", "ratelimit", "resources", "cache_ttl_s"}`. Anything else (non-2xx,
//! timeout, reset, unparseable or oversized body, wrong contract) is a failure of the service,
//! never a verdict.
//!
//! keygate → `GET {revocations_path}?since=CURSOR` → `{"cursor": N, "revoked": [{"key_hash":
//! hex(sha256(secret)), "user": USER|null}], "more": bool}`.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::credential::Credential;
use crate::hash::{parse_hex32, Digest32};
use crate::json::{self, Entries, Loose};
use crate::ratelimit::Limit;
use crate::verdict::{Identity, Refusal, Verdict};

pub const CONTRACT_VERSION: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceFailure {
    /// A status that is not 2xx (Envoy reports a timeout as 504 and a connect failure as 503).
    Status(u32),
    /// No `:status` at all (the connection was reset after headers), or the call never started.
    NoResponse,
    BodyTooLarge,
    BadBody,
}

impl ServiceFailure {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceFailure::Status(504) => "timeout",
            ServiceFailure::Status(_) => "status",
            ServiceFailure::NoResponse => "no-response",
            ServiceFailure::BodyTooLarge => "body-too-large",
            ServiceFailure::BadBody => "bad-body",
        }
    }
}

pub fn verify_request_body(c: &Credential) -> Vec<u8> {
    json!({"key": c.secret, "user": c.user})
        .to_string()
        .into_bytes()
}

/// A verdict plus the service's cache hint in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    pub ttl_hint_s: Option<u64>,
    /// The verdict holds only for the Basic user presented (the default); `"user_bound": false`
    /// says it holds for any user (keygate then caches it once for all of them).
    pub user_bound: bool,
}

// A verify answer in two passes over the parsed JSON: `Head` is read for every answer, `Body`
// only for a valid one, so a refusal's other members may be anything (as in a `Value` walk).
// Duplicate members keep the last one, as JSON parsers do (the answer is parsed into a `Value`).

#[derive(Deserialize)]
struct Head {
    /// Not a whole number: taken as this version.
    contract: Option<Loose>,
    valid: Option<bool>,
    /// Not a whole number: no hint.
    cache_ttl_s: Option<Loose>,
    user_bound: Option<bool>,
    /// Not a known code (or not a string): `Refusal::Unknown`.
    code: Option<Loose>,
}

#[derive(Deserialize)]
struct Body {
    key_id: Option<String>,
    subject: Option<String>,
    account: Option<String>,
    plan: Option<String>,
    scopes: Option<Vec<String>>,
    expires_at: Option<u64>,
    ratelimit: Option<RateLimit>,
    /// A list may be null (no values).
    resources: Option<Entries<Option<Vec<String>>>>,
}

#[derive(Deserialize)]
struct RateLimit {
    requests: Option<Loose>,
    /// Not a whole number: the default (60 s), as for `burst` (`requests`).
    window_s: Option<Loose>,
    burst: Option<Loose>,
}

/// A string member: absent or null is `""`; longer than `max` or holding control characters is
/// a bad body.
fn text(v: Option<String>, max: usize) -> Result<String, ServiceFailure> {
    match v {
        None => Ok(String::new()),
        Some(s) if s.len() <= max && !s.chars().any(char::is_control) => Ok(s),
        Some(_) => Err(ServiceFailure::BadBody),
    }
}

fn strings(v: Option<Vec<String>>, max_items: usize) -> Result<Vec<String>, ServiceFailure> {
    let v = v.unwrap_or_default();
    let ok = v.len() <= max_items
        && v.iter()
            .all(|s| s.len() <= 256 && !s.chars().any(char::is_control));
    if ok {
        Ok(v)
    } else {
        Err(ServiceFailure::BadBody)
    }
}

fn limit_of(v: Option<RateLimit>) -> Result<Option<Limit>, ServiceFailure> {
    let Some(v) = v else {
        return Ok(None);
    };
    let n = |x: Option<Loose>| x.as_ref().and_then(Loose::as_u64);
    let requests = n(v.requests)
        .filter(|r| (1..=1_000_000_000).contains(r))
        .ok_or(ServiceFailure::BadBody)?;
    let window_s = n(v.window_s).unwrap_or(60).clamp(1, 31_536_000);
    let burst = n(v.burst).unwrap_or(requests).clamp(1, 1_000_000_000);
    Ok(Some(Limit {
        requests,
        window_s,
        burst,
    }))
}

/// Scopes travel space-separated upstream: one holding a space, quote or backslash would read
/// as two (or break the challenge), so such an answer is a bad body.
fn scope_tokens(v: Vec<String>) -> Result<Vec<String>, ServiceFailure> {
    let ok = |s: &String| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
    };
    if v.iter().all(ok) {
        Ok(v)
    } else {
        Err(ServiceFailure::BadBody)
    }
}

/// Parses a verify answer. `status` is the call's `:status`, `None` when there was none.
pub fn parse_verify(status: Option<u32>, body: &[u8]) -> Result<Answer, ServiceFailure> {
    let status = status.ok_or(ServiceFailure::NoResponse)?;
    if !(200..300).contains(&status) {
        return Err(ServiceFailure::Status(status));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| ServiceFailure::BadBody)?;
    let head: Head = json::decode(&v).map_err(|_| ServiceFailure::BadBody)?;
    if head
        .contract
        .and_then(|c| c.as_u64())
        .unwrap_or(CONTRACT_VERSION)
        != CONTRACT_VERSION
    {
        return Err(ServiceFailure::BadBody);
    }
    let valid = head.valid.ok_or(ServiceFailure::BadBody)?;
    let ttl_hint_s = head.cache_ttl_s.and_then(|t| t.as_u64());
    let user_bound = head.user_bound.unwrap_or(true);
    if !valid {
        let refusal = match head.code {
            Some(Loose::Str(c)) if c == "REVOKED" => Refusal::Revoked,
            Some(Loose::Str(c)) if c == "EXPIRED" => Refusal::Expired,
            Some(Loose::Str(c)) if c == "DISABLED" => Refusal::Disabled,
            _ => Refusal::Unknown,
        };
        return Ok(Answer {
            verdict: Verdict::Refused(refusal),
            ttl_hint_s,
            user_bound,
        });
    }
    let b: Body = json::decode(&v).map_err(|_| ServiceFailure::BadBody)?;
    let key_id = text(b.key_id, 128)?;
    if key_id.is_empty() {
        return Err(ServiceFailure::BadBody);
    }
    let subject = Some(text(b.subject, 256)?)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| key_id.clone());
    let resources = b.resources.unwrap_or_default().0;
    if resources.len() > 32 {
        return Err(ServiceFailure::BadBody);
    }
    let resources = resources
        .into_iter()
        .map(|(name, list)| Ok((name, strings(list, 1024)?)))
        .collect::<Result<Vec<_>, ServiceFailure>>()?;
    let id = Identity {
        key_id,
        subject,
        account: text(b.account, 256)?,
        plan: Some(text(b.plan, 128)?)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        scopes: scope_tokens(strings(b.scopes, 128)?)?,
        expires_at: b.expires_at,
        rate_limit: limit_of(b.ratelimit)?,
        resources,
    };
    Ok(Answer {
        verdict: Verdict::Valid(Rc::new(id)),
        ttl_hint_s,
        user_bound,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocations {
    pub cursor: i64,
    /// (sha256(secret), user)
    pub revoked: Vec<(Digest32, Option<String>)>,
    pub more: bool,
}

// The feed: `revoked` that is not an array is read as none (as a `Value` walk did), so the items
// are a second pass, taken only when it is one.

#[derive(Deserialize)]
struct Feed {
    cursor: Option<i64>,
    revoked: Option<Loose>,
    /// Not a boolean: false.
    more: Option<Loose>,
}

#[derive(Deserialize)]
struct FeedItems {
    revoked: Vec<Revoked>,
}

#[derive(Deserialize)]
struct Revoked {
    key_hash: Option<Loose>,
    /// Not a string: any user.
    user: Option<Loose>,
}

pub fn parse_revocations(status: Option<u32>, body: &[u8]) -> Result<Revocations, ServiceFailure> {
    let status = status.ok_or(ServiceFailure::NoResponse)?;
    if !(200..300).contains(&status) {
        return Err(ServiceFailure::Status(status));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| ServiceFailure::BadBody)?;
    let feed: Feed = json::decode(&v).map_err(|_| ServiceFailure::BadBody)?;
    let cursor = feed.cursor.ok_or(ServiceFailure::BadBody)?;
    let mut revoked = Vec::new();
    if feed.revoked == Some(Loose::Other("an array")) {
        let items: FeedItems = json::decode(&v).map_err(|_| ServiceFailure::BadBody)?;
        for item in items.revoked {
            let hash = match item.key_hash {
                Some(Loose::Str(h)) => parse_hex32(&h),
                _ => None,
            }
            .ok_or(ServiceFailure::BadBody)?;
            let user = match item.user {
                Some(Loose::Str(u)) => Some(u),
                _ => None,
            };
            revoked.push((hash, user));
        }
    }
    let more = feed.more == Some(Loose::Bool(true));
    Ok(Revocations {
        cursor,
        revoked,
        more,
    })
}

/// Identity <-> JSON for the shared-data cache (the service's own shape, so one parser serves).
pub fn identity_json(id: &Identity) -> Value {
    let resources: serde_json::Map<String, Value> = id
        .resources
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "valid": true,
        "key_id": id.key_id,
        "subject": id.subject,
        "account": id.account,
        "plan": id.plan,
        "scopes": id.scopes,
        "expires_at": id.expires_at,
        "ratelimit": id.rate_limit.map(|l| json!({"requests": l.requests, "window_s": l.window_s, "burst": l.burst})),
        "resources": resources,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::credential::Style;

    #[test]
    fn request_body_carries_secret_and_user() {
        let c = Credential {
            style: Style::Basic,
            user: Some("al\"ice".into()),
            secret: "s".into(),
        };
        let v: Value = serde_json::from_slice(&verify_request_body(&c)).unwrap();
        assert_eq!(v, json!({"key": "s", "user": "al\"ice"}));
    }

    #[test]
    fn valid_answer_round_trips_through_identity_json() {
        let body = br#"{"contract":1,"valid":true,"code":"VALID","key_id":"k","subject":"alice","account":"acme",
            "plan":"pro","scopes":["read"],"expires_at":1900000000,"ratelimit":{"requests":5},
            "resources":{"aggregator":["a1"]},"cache_ttl_s":30}"#;
        let a = parse_verify(Some(200), body).unwrap();
        assert_eq!(a.ttl_hint_s, Some(30));
        let Verdict::Valid(id) = &a.verdict else {
            panic!()
        };
        assert_eq!(
            id.rate_limit,
            Some(Limit {
                requests: 5,
                window_s: 60,
                burst: 5
            })
        );
        let again = parse_verify(Some(200), identity_json(id).to_string().as_bytes()).unwrap();
        assert_eq!(again.verdict, a.verdict);
    }

    #[test]
    fn refusals_and_failures() {
        let r = |b: &[u8]| parse_verify(Some(200), b).map(|a| a.verdict);
        assert_eq!(
            r(br#"{"valid":false,"code":"REVOKED"}"#),
            Ok(Verdict::Refused(Refusal::Revoked))
        );
        assert_eq!(
            r(br#"{"valid":false,"code":"whatever"}"#),
            Ok(Verdict::Refused(Refusal::Unknown))
        );
        assert_eq!(r(b"<html>"), Err(ServiceFailure::BadBody));
        assert_eq!(r(br#"{"valid":"yes"}"#), Err(ServiceFailure::BadBody));
        assert_eq!(r(br#"{"valid":true}"#), Err(ServiceFailure::BadBody));
        assert_eq!(
            r(br#"{"contract":2,"valid":false}"#),
            Err(ServiceFailure::BadBody)
        );
        assert_eq!(
            r(br#"{"valid":true,"key_id":"k","scopes":"read"}"#),
            Err(ServiceFailure::BadBody)
        );
        assert_eq!(
            parse_verify(Some(500), b"{}").map(|a| a.verdict),
            Err(ServiceFailure::Status(500))
        );
        assert_eq!(
            parse_verify(None, b"").map(|a| a.verdict),
            Err(ServiceFailure::NoResponse)
        );
    }

    #[test]
    fn revocation_feed() {
        let h = "ab".repeat(32);
        let body = format!(
            r#"{{"cursor":7,"revoked":[{{"key_hash":"{h}","user":"alice"}},{{"key_hash":"{h}","user":null}}],"more":true}}"#
        );
        let r = parse_revocations(Some(200), body.as_bytes()).unwrap();
        assert_eq!(r.cursor, 7);
        assert!(r.more);
        assert_eq!(r.revoked[0].1.as_deref(), Some("alice"));
        assert_eq!(r.revoked[1].1, None);
        assert!(
            parse_revocations(Some(200), br#"{"cursor":1,"revoked":[{"key_hash":"zz"}]}"#).is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400), s in 0u32..700) {
            let _ = parse_verify(Some(s), &b);
            let _ = parse_revocations(Some(s), &b);
        }
    }
}
