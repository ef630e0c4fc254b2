//! The key-service contract, version 1 (documented in README "Key-service contract").
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

use serde_json::{json, Value};

use crate::credential::Credential;
use crate::hash::{parse_hex32, Digest32};
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

fn str_of(v: &Value, k: &str, max: usize) -> Result<String, ServiceFailure> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.len() <= max && !s.chars().any(char::is_control) => {
            Ok(s.clone())
        }
        _ => Err(ServiceFailure::BadBody),
    }
}

fn strings(v: Option<&Value>, max_items: usize) -> Result<Vec<String>, ServiceFailure> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= max_items => a
            .iter()
            .map(|x| match x {
                Value::String(s) if s.len() <= 256 && !s.chars().any(char::is_control) => {
                    Ok(s.clone())
                }
                _ => Err(ServiceFailure::BadBody),
            })
            .collect(),
        _ => Err(ServiceFailure::BadBody),
    }
}

fn limit_of(v: Option<&Value>) -> Result<Option<Limit>, ServiceFailure> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let requests = n("requests")
        .filter(|r| (1..=1_000_000_000).contains(r))
        .ok_or(ServiceFailure::BadBody)?;
    let window_s = n("window_s").unwrap_or(60).clamp(1, 31_536_000);
    let burst = n("burst").unwrap_or(requests).clamp(1, 1_000_000_000);
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
    if v.get("contract")
        .and_then(Value::as_u64)
        .unwrap_or(CONTRACT_VERSION)
        != CONTRACT_VERSION
    {
        return Err(ServiceFailure::BadBody);
    }
    let valid = v
        .get("valid")
        .and_then(Value::as_bool)
        .ok_or(ServiceFailure::BadBody)?;
    let ttl_hint_s = v.get("cache_ttl_s").and_then(Value::as_u64);
    let user_bound = match v.get("user_bound") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ServiceFailure::BadBody),
    };
    if !valid {
        let refusal = match v.get("code").and_then(Value::as_str) {
            Some("REVOKED") => Refusal::Revoked,
            Some("EXPIRED") => Refusal::Expired,
            Some("DISABLED") => Refusal::Disabled,
            _ => Refusal::Unknown,
        };
        return Ok(Answer {
            verdict: Verdict::Refused(refusal),
            ttl_hint_s,
            user_bound,
        });
    }
    let key_id = str_of(&v, "key_id", 128)?;
    if key_id.is_empty() {
        return Err(ServiceFailure::BadBody);
    }
    let subject = Some(str_of(&v, "subject", 256)?)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| key_id.clone());
    let mut resources = Vec::new();
    match v.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.len() <= 32 => {
            for (name, list) in m {
                resources.push((name.clone(), strings(Some(list), 1024)?));
            }
        }
        _ => return Err(ServiceFailure::BadBody),
    }
    let expires_at = match v.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(x) => Some(x.as_u64().ok_or(ServiceFailure::BadBody)?),
    };
    let id = Identity {
        key_id,
        subject,
        account: str_of(&v, "account", 256)?,
        plan: Some(str_of(&v, "plan", 128)?)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        scopes: scope_tokens(strings(v.get("scopes"), 128)?)?,
        expires_at,
        rate_limit: limit_of(v.get("ratelimit"))?,
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

pub fn parse_revocations(status: Option<u32>, body: &[u8]) -> Result<Revocations, ServiceFailure> {
    let status = status.ok_or(ServiceFailure::NoResponse)?;
    if !(200..300).contains(&status) {
        return Err(ServiceFailure::Status(status));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| ServiceFailure::BadBody)?;
    let cursor = v
        .get("cursor")
        .and_then(Value::as_i64)
        .ok_or(ServiceFailure::BadBody)?;
    let mut revoked = Vec::new();
    if let Some(list) = v.get("revoked").and_then(Value::as_array) {
        for item in list {
            let hash = item
                .get("key_hash")
                .and_then(Value::as_str)
                .and_then(parse_hex32)
                .ok_or(ServiceFailure::BadBody)?;
            let user = item.get("user").and_then(Value::as_str).map(str::to_string);
            revoked.push((hash, user));
        }
    }
    let more = v.get("more").and_then(Value::as_bool).unwrap_or(false);
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
