//! The plugin configuration: JSON in the filter's `configuration`, parsed and checked once.
//!
//! The JSON is decoded into `Raw*` structs (`#[derive(Deserialize)]`, every field optional), then
//! checked by hand into a `Config`: bounds, tokens, header names, dates, duplicates.
//!
//! Errors name the field (`keys[2].sha256`) and the reason, in one line. Unknown fields are
//! warned about and ignored, so a control plane that adds a field does not take a listener down;
//! `"strict": true` refuses them instead.

use std::fmt;
use std::rc::Rc;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::cache::CachePolicy;
use crate::credential::CredentialConfig;
use crate::fleet::{FleetConfig, LeasePolicy, Mode, OnEngineFailure};
use crate::hash::parse_hex32;
use crate::json::{self, Entries, Loose};
use crate::keystore::{KeyEntry, KeyStore};
use crate::path::PathPolicy;
use crate::problem::{Dialect, Dialects, Kind, MemberValue};
use crate::ratelimit::{Limit, Scope};
use crate::route::{Access, Owner, OwnerBody, OwnerSource, PathMatch, Route};
use crate::state_key::{self, Origin, Tier};
use crate::throttle::ThrottleConfig;
use crate::verdict::Identity;

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "keygate: configuration refused: {}", self.reason)
        } else {
            write!(
                f,
                "keygate: configuration refused: field `{}`: {}",
                self.field, self.reason
            )
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetStyle {
    /// `X-RateLimit-Reset` is seconds until the bucket is full again.
    Seconds,
    /// `X-RateLimit-Reset` is the unix time at which it is.
    Unix,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// A plan of `rate_limit.plans`, or `rate_limit.default` (its state is named apart, see
    /// `state_key`).
    pub origin: Origin,
    /// The start of the shared-data keys of its local counts (`state_key::stem`).
    pub stem: String,
    pub limit: Limit,
    pub scope: Scope,
    pub algorithm: Algorithm,
}

/// How a plan counts (`rate_limit.plans.<name>.algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `burst` at once, refilled continuously (`ratelimit`).
    TokenBucket,
    /// At most `requests` in any `window_s`-long interval (`window`).
    RollingWindow,
}

#[derive(Clone, Debug, Default)]
pub struct RateConfig {
    /// Plan name -> policy; `None` is an explicitly unlimited plan.
    pub plans: Vec<(String, Option<Policy>)>,
    /// For plans not in the table; `None` means unlimited.
    pub default: Option<Policy>,
    /// A `rate_limit` section without a `default`: every plan must be one of `plans` (a key
    /// service that names another plan gets 503, never an unlimited key). Without a `rate_limit`
    /// section nothing is limited, and plans are only names.
    pub plans_declared_only: bool,
    pub reset: Option<ResetStyle>,
    pub ietf_headers: bool,
    /// Rate-limit headers on allowed responses (`X-RateLimit-*`, and the IETF pair when on).
    /// A 429 carries them regardless: it is keygate's own reply and the client needs them to
    /// back off.
    pub headers: bool,
}

impl RateConfig {
    pub fn policy_for(&self, plan: &str) -> Option<&Policy> {
        match self.plans.iter().find(|(n, _)| n == plan) {
            Some((_, p)) => p.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// Whether `plan` means something here: a plan of the table, or any plan when a `default`
    /// catches the others or nothing is limited.
    pub fn declares(&self, plan: &str) -> bool {
        !self.plans_declared_only || self.plans.iter().any(|(n, _)| n == plan)
    }

    pub fn reset_style(&self) -> ResetStyle {
        self.reset.unwrap_or(ResetStyle::Seconds)
    }
}

#[derive(Clone, Debug)]
/// Header names for the identity sent upstream; `""` when the operator turned one off (`false`).
pub struct IdentityHeaders {
    pub key_id: String,
    pub subject: String,
    pub account: String,
    pub plan: String,
    pub scopes: String,
}

impl IdentityHeaders {
    pub fn names(&self) -> [&str; 5] {
        [
            &self.key_id,
            &self.subject,
            &self.account,
            &self.plan,
            &self.scopes,
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// 503 `key-service-unavailable` (the default).
    Closed,
    /// Let the request through without identity, marked with `x-keygate-fail-open`.
    Open,
}

#[derive(Clone, Debug)]
pub struct KeyServiceConfig {
    /// The Envoy cluster of the key service (Istio: `outbound|8080||keys.ns.svc.cluster.local`).
    pub cluster: String,
    pub authority: String,
    pub verify_path: String,
    /// `None` switches the revocation feed off.
    pub revocations_path: Option<String>,
    pub timeout_ms: u64,
    pub poll_ms: u64,
    pub max_response_bytes: usize,
    pub on_failure: OnFailure,
    pub retry_after_s: u64,
    pub cache: CachePolicy,
    /// `key_format.prefixes`: a key not in the published format (`keyformat`) with one of these
    /// prefixes is refused without a call.
    pub key_format: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub realm: String,
    pub problem_base: String,
    pub credentials: CredentialConfig,
    /// Remove the credential's carriers before the request goes upstream.
    pub hide_credentials: bool,
    pub keys: KeyStore,
    pub rate: RateConfig,
    pub identity_headers: IdentityHeaders,
    pub routes: Vec<Route>,
    pub default_access: Access,
    /// Prefix of every shared-data key, so plugins sharing a VM id (Istio) never collide.
    pub shared_prefix: String,
    pub key_service: Option<KeyServiceConfig>,
    /// The decision, key id, account and plan in filter state for the access log
    /// (`%FILTER_STATE(wasm.keygate:PLAIN)%`).
    pub access_log_state: bool,
    /// Failed-authentication throttle per client address (`None`: off).
    pub auth_throttle: Option<ThrottleConfig>,
    /// How paths are canonicalised before routes see them (`paths.allow_semicolon`).
    pub paths: PathPolicy,
    /// Routes compare letter case (`paths.case_sensitive`; off by default: many upstreams, such
    /// as IIS and Express, ignore it, and matching without case never lets such an upstream
    /// serve a protected path under another spelling).
    pub case_sensitive_paths: bool,
    /// Some route names methods, so a method override (`X-HTTP-Method-Override`, `_method`)
    /// could move a request from one rule to another: such requests are refused.
    pub method_rules: bool,
    /// The status of a malformed or oversized credential (`credentials.malformed_status`).
    pub malformed_status: u32,
    /// Wording and extension members per problem kind (`problems`), by `Kind::index`.
    pub problems: Dialects,
    /// Fleet-wide limits on a rate-limit engine (`None`: every limit is this Envoy's own).
    pub fleet: Option<FleetConfig>,
    /// How the bodies that owner checks read are held (`bodies`).
    pub bodies: BodyLimits,
}

/// `bodies`: the bodies keygate holds until an owner check has read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bodies held at once per worker; past it a new one is refused (503), never one forgotten.
    pub max_held: usize,
    /// A body still incomplete this long after keygate began to hold it ends its request (408).
    pub timeout_ms: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_held: 4096,
            timeout_ms: 60_000,
        }
    }
}

/// Every configuration field the parser knows, as `a.b[].c` paths (`<name>` for map keys,
/// `<slug>` for problem kinds), read from the field lists serde derives for the raw structs below
/// (see `json::field_paths`). The config reference is tested against it.
pub fn known_fields() -> Vec<String> {
    match json::field_paths::<RawConfig>() {
        Ok(fields) => {
            let mut v: Vec<String> = fields
                .into_iter()
                .map(|f| f.replacen("problems.<name>", "problems.<slug>", 1))
                .collect();
            v.sort();
            v
        }
        Err(e) => vec![format!("<the field recorder failed: {e}>")],
    }
}

impl Config {
    /// One line for logs: what this configuration holds.
    pub fn summary(&self) -> String {
        format!(
            "{} embedded keys, {} routes, key service: {}",
            self.keys.len(),
            self.routes.len(),
            self.key_service
                .as_ref()
                .map_or("none", |k| k.cluster.as_str())
        )
    }
}

// The configuration as JSON says it: every field optional (null is absent), checked and given
// its default when the `Config` is built. Unknown fields are collected by `json::decode_tracked`.

#[derive(Deserialize)]
struct RawConfig {
    strict: Option<bool>,
    realm: Option<String>,
    problem_base: Option<String>,
    access_log_state: Option<bool>,
    shared_prefix: Option<String>,
    credentials: Option<RawCredentials>,
    keys: Option<Vec<RawKey>>,
    rate_limit: Option<RawRate>,
    identity_headers: Option<RawIdentityHeaders>,
    routes: Option<Vec<RawRoute>>,
    key_service: Option<RawKeyService>,
    auth_throttle: Option<RawThrottle>,
    paths: Option<RawPaths>,
    problems: Option<Entries<RawDialect>>,
    fleet: Option<RawFleet>,
    default_access: Option<String>,
    bodies: Option<RawBodies>,
}

#[derive(Deserialize)]
struct RawBodies {
    max_held: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawCredentials {
    basic: Option<bool>,
    bearer: Option<bool>,
    api_key_headers: Option<Vec<String>>,
    /// A parameter name, `""` or `false`.
    query_param: Option<Loose>,
    max_bytes: Option<u64>,
    hide_from_upstream: Option<bool>,
    malformed_status: Option<u64>,
}

#[derive(Deserialize)]
struct RawKey {
    id: Option<String>,
    sha256: Option<String>,
    user: Option<String>,
    subject: Option<String>,
    account: Option<String>,
    plan: Option<String>,
    scopes: Option<Vec<String>>,
    /// Unix seconds or an RFC 3339 UTC timestamp.
    expires_at: Option<Loose>,
    disabled: Option<bool>,
    rate_limit: Option<RawLimit>,
    /// Every member is a resource name: nothing is unknown there.
    resources: Option<Entries<Vec<String>>>,
}

#[derive(Deserialize)]
struct RawLimit {
    requests: Option<u64>,
    window_s: Option<u64>,
    burst: Option<u64>,
}

#[derive(Deserialize)]
struct RawRate {
    plans: Option<Entries<RawPolicy>>,
    default: Option<RawPolicy>,
    reset: Option<String>,
    ietf_headers: Option<bool>,
    headers: Option<bool>,
}

/// A plan's policy: `"unlimited"` or an object.
enum RawPolicy {
    Unlimited,
    Limited(RawPolicyFields),
}

#[derive(Deserialize)]
struct RawPolicyFields {
    requests: Option<u64>,
    window_s: Option<u64>,
    burst: Option<u64>,
    per: Option<String>,
    algorithm: Option<String>,
}

impl<'de> Deserialize<'de> for RawPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"unlimited\" or an object {requests, window_s, burst, per}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawPolicy, E> {
                if s == "unlimited" {
                    Ok(RawPolicy::Unlimited)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawPolicy, A::Error> {
                RawPolicyFields::deserialize(MapAccessDeserializer::new(m)).map(RawPolicy::Limited)
            }
            // the field recorder (`known_fields`)
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<RawPolicy, D::Error> {
                RawPolicyFields::deserialize(d).map(RawPolicy::Limited)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawIdentityHeaders {
    key_id: Option<Loose>,
    subject: Option<Loose>,
    account: Option<Loose>,
    plan: Option<Loose>,
    scopes: Option<Loose>,
}

#[derive(Deserialize)]
struct RawRoute {
    exact: Option<String>,
    prefix: Option<String>,
    methods: Option<Vec<String>>,
    access: Option<String>,
    scopes: Option<Vec<String>>,
    owner: Option<RawOwner>,
}

#[derive(Deserialize)]
struct RawOwner {
    query: Option<String>,
    path_segment: Option<u64>,
    resource: Option<String>,
    status: Option<u64>,
    body: Option<String>,
}

#[derive(Deserialize)]
struct RawKeyService {
    cluster: Option<String>,
    authority: Option<String>,
    verify_path: Option<String>,
    /// A path, `""` or `false`.
    revocations_path: Option<Loose>,
    timeout_ms: Option<u64>,
    revocation_poll_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    retry_after_s: Option<u64>,
    positive_ttl_s: Option<u64>,
    negative_ttl_s: Option<u64>,
    stale_ttl_s: Option<u64>,
    negative_cache_entries: Option<u64>,
    shared_recheck_ms: Option<u64>,
    on_failure: Option<String>,
    key_format: Option<RawKeyFormat>,
}

#[derive(Deserialize)]
struct RawKeyFormat {
    prefixes: Option<Vec<String>>,
}

/// `auth_throttle`: `true`, `false` or an object.
enum RawThrottle {
    Switch(bool),
    Tuned(RawThrottleFields),
}

#[derive(Deserialize)]
struct RawThrottleFields {
    failures: Option<u64>,
    window_s: Option<u64>,
    clients: Option<u64>,
}

impl<'de> Deserialize<'de> for RawThrottle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawThrottle;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or an object {failures, window_s, clients}")
            }
            fn visit_bool<E>(self, b: bool) -> Result<RawThrottle, E> {
                Ok(RawThrottle::Switch(b))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawThrottle, A::Error> {
                RawThrottleFields::deserialize(MapAccessDeserializer::new(m))
                    .map(RawThrottle::Tuned)
            }
            // the field recorder (`known_fields`)
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<RawThrottle, D::Error> {
                RawThrottleFields::deserialize(d).map(RawThrottle::Tuned)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawPaths {
    case_sensitive: Option<bool>,
    allow_semicolon: Option<bool>,
}

#[derive(Deserialize)]
struct RawDialect {
    title: Option<String>,
    detail: Option<String>,
    members: Option<Entries<Member>>,
}

/// A problem member's value: any JSON.
struct Member(Value);

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Member, E> {
                Ok(Member(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Member, E> {
                Ok(Member(Value::from(s)))
            }
            fn visit_string<E>(self, s: String) -> Result<Member, E> {
                Ok(Member(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<Member, E> {
                Ok(Member(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Member, E> {
                Ok(Member(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Member, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(a)).map(Member)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Member, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(m)).map(Member)
            }
            // the field recorder (`known_fields`)
            fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Member, D::Error> {
                Ok(Member(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawFleet {
    cluster: Option<String>,
    authority: Option<String>,
    domain: Option<String>,
    timeout_ms: Option<u64>,
    retry_after_s: Option<u64>,
    on_failure: Option<String>,
    default: Option<String>,
    plans: Option<Entries<Loose>>,
    lease: Option<RawLease>,
}

#[derive(Deserialize)]
struct RawLease {
    max: Option<u64>,
    percent: Option<u64>,
    ttl_ms: Option<u64>,
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A string that must be given and not empty.
fn required(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(err(field, "is required and must not be empty")),
    }
}

/// A header name as Envoy stores it: lower-case token characters.
fn header_name(field: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if !ok {
        return Err(err(field, format!("`{s}` is not a valid header name")));
    }
    Ok(s.to_ascii_lowercase())
}

/// Plain printable ASCII without quotes or backslashes (it goes into headers and challenges).
fn plain_text(field: &str, s: &str, max: usize) -> Result<String, ConfigError> {
    if s.is_empty() || s.len() > max {
        return Err(err(field, format!("must be 1 to {max} characters")));
    }
    if !s
        .bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        return Err(err(
            field,
            "must be printable ASCII without quotes or backslashes",
        ));
    }
    Ok(s.to_string())
}

/// Unix seconds from a number or an RFC 3339 UTC timestamp (`2027-01-31T00:00:00Z`).
fn parse_time(field: &str, v: Loose) -> Result<u64, ConfigError> {
    match v {
        Loose::U64(n) => Ok(n),
        Loose::Other("a number") => Err(err(
            field,
            "expected unix seconds (a non-negative whole number)",
        )),
        Loose::Str(s) => parse_rfc3339(&s).ok_or_else(|| {
            err(
                field,
                "expected unix seconds or a timestamp like 2027-01-31T00:00:00Z",
            )
        }),
        other => Err(err(
            field,
            format!("expected a time, got {}", other.type_name()),
        )),
    }
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=month_days).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    // days from civil (Howard Hinnant), valid for the proleptic Gregorian calendar.
    let (y, mo, d) = (y as i64, mo as i64, d as i64);
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (h * 3600 + mi * 60 + se) as i64).ok()
}

fn parse_limit(
    path: &str,
    requests: Option<u64>,
    window_s: Option<u64>,
    burst: Option<u64>,
) -> Result<Limit, ConfigError> {
    let requests = requests.ok_or_else(|| err(&join(path, "requests"), "is required"))?;
    if requests == 0 || requests > 1_000_000_000 {
        return Err(err(&join(path, "requests"), "must be 1 to 1000000000"));
    }
    let window_s = window_s.unwrap_or(60);
    if window_s == 0 || window_s > 31_536_000 {
        return Err(err(
            &join(path, "window_s"),
            "must be 1 to 31536000 (a year)",
        ));
    }
    let burst = burst.unwrap_or(requests);
    if burst == 0 || burst > 1_000_000_000 {
        return Err(err(&join(path, "burst"), "must be 1 to 1000000000"));
    }
    Ok(Limit {
        requests,
        window_s,
        burst,
    })
}

fn parse_scope(field: &str, s: Option<&str>) -> Result<Scope, ConfigError> {
    match s {
        None | Some("key") => Ok(Scope::Key),
        Some("subject") | Some("user") => Ok(Scope::Subject),
        Some("account") => Ok(Scope::Account),
        Some(other) => Err(err(
            field,
            format!("`{other}` is not one of key, subject, account"),
        )),
    }
}

/// A plan's policy: `"unlimited"` (`None`) or `{requests, window_s, burst, per, algorithm}`.
fn parse_policy(
    path: &str,
    (origin, name): (Origin, &str),
    p: RawPolicy,
) -> Result<Option<Policy>, ConfigError> {
    let p = match p {
        RawPolicy::Unlimited => return Ok(None),
        RawPolicy::Limited(p) => p,
    };
    let scope = parse_scope(&join(path, "per"), p.per.as_deref())?;
    let algorithm = match p.algorithm.as_deref() {
        None | Some("token_bucket") => Algorithm::TokenBucket,
        Some("rolling_window") => Algorithm::RollingWindow,
        Some(other) => {
            return Err(err(
                &join(path, "algorithm"),
                format!("`{other}` is not one of token_bucket, rolling_window"),
            ))
        }
    };
    let has_burst = p.burst.is_some();
    let limit = parse_limit(path, p.requests, p.window_s, p.burst)?;
    if algorithm == Algorithm::RollingWindow {
        if has_burst {
            return Err(err(
                &join(path, "burst"),
                "has no meaning for a rolling window (it allows `requests` in any window)",
            ));
        }
        if limit.requests > crate::window::MAX_REQUESTS {
            return Err(err(
                &join(path, "requests"),
                format!(
                    "must be 1 to {} for a rolling window (4 bytes of shared data each)",
                    crate::window::MAX_REQUESTS
                ),
            ));
        }
        if limit.window_s > crate::window::MAX_WINDOW_S {
            return Err(err(
                &join(path, "window_s"),
                format!(
                    "must be 1 to {} (30 days) for a rolling window",
                    crate::window::MAX_WINDOW_S
                ),
            ));
        }
    }
    Ok(Some(Policy {
        name: name.to_string(),
        origin,
        stem: String::new(),
        limit,
        scope,
        algorithm,
    }))
}

fn parse_owner(path: &str, o: RawOwner) -> Result<Owner, ConfigError> {
    let source = match (o.query, o.path_segment) {
        (Some(q), None) if !q.is_empty() => OwnerSource::Query(q),
        (None, Some(n)) if (1..=64).contains(&n) => OwnerSource::PathSegment(n as usize),
        _ => {
            return Err(err(
                path,
                "needs exactly one of `query` (a parameter name) or `path_segment` (1 to 64)",
            ))
        }
    };
    let resource = required(&join(path, "resource"), o.resource)?;
    let status = o.status.unwrap_or(404);
    if status != 403 && status != 404 {
        return Err(err(&join(path, "status"), "must be 403 or 404"));
    }
    let body = match o.body.as_deref() {
        None | Some("read") => OwnerBody::Read,
        Some("reject") => OwnerBody::Reject,
        Some("unchecked") => OwnerBody::Unchecked,
        Some(other) => {
            return Err(err(
                &join(path, "body"),
                format!("`{other}` is not one of read, reject, unchecked"),
            ))
        }
    };
    Ok(Owner {
        source,
        resource,
        status: status as u32,
        body,
    })
}

fn parse_access(field: &str, s: Option<&str>, default: Access) -> Result<Access, ConfigError> {
    match s {
        None => Ok(default),
        Some("public") => Ok(Access::Public),
        Some("key") => Ok(Access::Key),
        Some("closed") => Ok(Access::Closed),
        Some(other) => Err(err(
            field,
            format!("`{other}` is not one of public, key, closed"),
        )),
    }
}

fn parse_route(path: &str, r: RawRoute) -> Result<Route, ConfigError> {
    let matcher = match (r.exact, r.prefix) {
        (Some(e), None) if e.starts_with('/') => PathMatch::Exact(e),
        (None, Some(p)) if p.starts_with('/') => PathMatch::Prefix(p),
        _ => {
            return Err(err(
                path,
                "needs exactly one of `exact` or `prefix`, starting with '/'",
            ))
        }
    };
    let mf = join(path, "methods");
    let mut methods: Vec<String> = r
        .methods
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, m)| method_token(&format!("{mf}[{i}]"), m))
        .collect::<Result<_, _>>()?;
    // Rails, Express, Flask and others serve HEAD with the GET handler: a rule for GET is one
    // for HEAD too, or HEAD would run the handler past it
    if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
        methods.push("HEAD".to_string());
    }
    let access = parse_access(&join(path, "access"), r.access.as_deref(), Access::Key)?;
    let scopes = r.scopes.unwrap_or_default();
    let owner = match r.owner {
        Some(o) => Some(parse_owner(&join(path, "owner"), o)?),
        None => None,
    };
    if access != Access::Key && (!scopes.is_empty() || owner.is_some()) {
        return Err(err(
            path,
            "`scopes` and `owner` only make sense with \"access\": \"key\"",
        ));
    }
    let sf = join(path, "scopes");
    for (i, s) in scopes.iter().enumerate() {
        scope_token(&format!("{sf}[{i}]"), s)?;
    }
    if let Some(ow) = &owner {
        let body_methods: Vec<&String> = methods
            .iter()
            .filter(|m| !BODYLESS.contains(&m.as_str()))
            .collect();
        if ow.body == OwnerBody::Reject && !body_methods.is_empty() {
            return Err(err(
                &join(path, "owner.body"),
                format!(
                    "the route protects {} and \"reject\" refuses every request with a body: list only {}, or let keygate read bodies (\"read\", the default)",
                    body_methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
                    BODYLESS.join(", "),
                ),
            ));
        }
    }
    Ok(Route {
        methods,
        matcher,
        access,
        scopes,
        owner,
    })
}

/// Methods whose body has no defined meaning (RFC 9110): on an owner route that reads bodies,
/// one of them with a body is refused from its headers (upstreams disagree whether to read it,
/// and one that does not answers before the body is checked).
pub const BODYLESS: [&str; 5] = ["GET", "HEAD", "OPTIONS", "DELETE", "TRACE"];

/// Every embedded key's plan must be declared when anything is limited: a key naming a plan
/// the table lacks would fall to the default, or be unlimited without one, so a typo would be
/// an unlimited key. A key naming no plan needs a `default`.
fn check_key_plans(plans: &[Option<String>], rate: &RateConfig) -> Result<(), ConfigError> {
    let limited = rate.plans_declared_only || rate.default.is_some() || !rate.plans.is_empty();
    if !limited {
        return Ok(());
    }
    for (i, plan) in plans.iter().enumerate() {
        match plan {
            Some(p) if !rate.plans.iter().any(|(n, _)| n == p) => {
                return Err(err(
                    &format!("keys[{i}].plan"),
                    format!("`{p}` is not a plan of rate_limit.plans: declare it (\"unlimited\" if it has no limit)"),
                ))
            }
            None if rate.plans_declared_only => {
                return Err(err(
                    &format!("keys[{i}].plan"),
                    "the key names no plan and rate_limit has no `default`: name one of rate_limit.plans, or declare rate_limit.default",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The methods that only read. Any token is an HTTP method (`PROPPATCH`, `PURGE`, an API's own),
/// so a rule that lists others lets every method it does not list skip it.
const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// Warns about a rule that lists write methods with no catch-all after it: every other method
/// (one the operator did not think of) skips the rule and falls to a later route or
/// `default_access`. The safe pattern lists the read methods and catches the rest with a route
/// for the same path without `methods`.
fn warn_method_lists(routes: &[Route], w: &mut Vec<String>) {
    for (i, r) in routes.iter().enumerate() {
        if r.access == Access::Public {
            continue;
        }
        let writes: Vec<&str> = r
            .methods
            .iter()
            .map(String::as_str)
            .filter(|m| !READ_METHODS.contains(m))
            .collect();
        if writes.is_empty() {
            continue;
        }
        let caught = routes.iter().skip(i + 1).any(|later| {
            later.matcher == r.matcher && later.methods.is_empty() && later.access != Access::Public
        });
        if !caught {
            w.push(format!(
                "keygate: `routes[{i}].methods` lists {}: every method it does not list (PROPPATCH, PURGE, any other) skips this rule; list the read methods ({}) instead and catch the rest with a route for the same path without `methods`",
                writes.join(", "),
                READ_METHODS.join(", ")
            ));
        }
    }
}

/// An HTTP method as a rule names it: an RFC 9110 token, upper-cased (methods match ignoring case).
fn method_token(field: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if !ok {
        return Err(err(
            field,
            format!("`{s}` is not an HTTP method (a token without spaces)"),
        ));
    }
    Ok(s.to_ascii_uppercase())
}

/// A scope as OAuth defines one (RFC 6749 §3.3): scopes travel space-separated in
/// `x-keygate-scopes` and in challenges, so one holding a space would read as two.
fn scope_token(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c));
    if !ok {
        return Err(err(
            field,
            "a scope is 1 to 128 visible ASCII characters without spaces, quotes or backslashes",
        ));
    }
    Ok(())
}

/// A value that goes into the access log's logfmt line and metric names (key id, account,
/// plan): visible ASCII without `=`, quotes or backslashes, so a line reads one way only.
fn log_token(field: &str, s: &str, max: usize) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| (0x21..0x7f).contains(&c) && !matches!(c, b'=' | b'"' | b'\\'));
    if !ok {
        return Err(err(
            field,
            format!("must be 1 to {max} visible ASCII characters without spaces, '=', quotes or backslashes (it goes into the access log)"),
        ));
    }
    Ok(s.to_string())
}

fn path_value(field: &str, s: &str) -> Result<String, ConfigError> {
    if !s.starts_with('/') || s.bytes().any(|c| c <= b' ' || c == 0x7f) || s.len() > 1024 {
        return Err(err(
            field,
            "must start with '/' and hold no spaces or control characters",
        ));
    }
    Ok(s.to_string())
}

fn bounded(
    field: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(err(field, format!("must be {min} to {max}")));
    }
    Ok(v)
}

/// An Envoy cluster to call and the `:authority` of the calls (the cluster's name by default).
fn cluster_and_authority(
    path: &str,
    cluster: Option<String>,
    authority: Option<String>,
) -> Result<(String, String), ConfigError> {
    let cf = join(path, "cluster");
    let cluster = required(&cf, cluster)?;
    if cluster.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(err(&cf, "must hold no spaces or control characters"));
    }
    let authority = plain_text(
        &join(path, "authority"),
        authority.as_deref().unwrap_or(&cluster),
        256,
    )?;
    Ok((cluster, authority))
}

fn parse_key_service(o: RawKeyService) -> Result<KeyServiceConfig, ConfigError> {
    let (cluster, authority) = cluster_and_authority("key_service", o.cluster, o.authority)?;
    let verify_path = path_value(
        "key_service.verify_path",
        o.verify_path.as_deref().unwrap_or("/v1/keys/verify"),
    )?;
    let rf = "key_service.revocations_path";
    let revocations_path = match o.revocations_path {
        None => Some("/v1/keys/revocations".to_string()),
        Some(Loose::Bool(false)) => None,
        Some(Loose::Str(s)) if s.is_empty() => None,
        Some(Loose::Str(s)) => Some(path_value(rf, &s)?),
        Some(_) => return Err(err(rf, "expected a path, \"\" or false")),
    };
    let f = |name: &str| join("key_service", name);
    let timeout_ms = bounded(&f("timeout_ms"), o.timeout_ms, 500, 1, 60_000)?;
    let poll_ms = bounded(
        &f("revocation_poll_ms"),
        o.revocation_poll_ms,
        1000,
        100,
        3_600_000,
    )?;
    let max_response_bytes = bounded(
        &f("max_response_bytes"),
        o.max_response_bytes,
        65_536,
        256,
        4_194_304,
    )? as usize;
    let retry_after_s = bounded(&f("retry_after_s"), o.retry_after_s, 1, 1, 3600)?;
    let cache = CachePolicy {
        positive_ttl_ms: bounded(&f("positive_ttl_s"), o.positive_ttl_s, 300, 1, 86_400)? * 1000,
        negative_ttl_ms: bounded(&f("negative_ttl_s"), o.negative_ttl_s, 30, 1, 86_400)? * 1000,
        stale_ms: bounded(&f("stale_ttl_s"), o.stale_ttl_s, 600, 0, 604_800)? * 1000,
        negative_entries: bounded(
            &f("negative_cache_entries"),
            o.negative_cache_entries,
            10_000,
            16,
            1_000_000,
        )? as usize,
        recheck_ms: bounded(&f("shared_recheck_ms"), o.shared_recheck_ms, 250, 0, 60_000)?,
    };
    let on_failure = match o.on_failure.as_deref() {
        None | Some("closed") => OnFailure::Closed,
        Some("open") => OnFailure::Open,
        Some(other) => {
            return Err(err(
                &f("on_failure"),
                format!("`{other}` is not one of closed, open"),
            ))
        }
    };
    let key_format = match o.key_format {
        None => None,
        Some(k) => {
            let at = "key_service.key_format.prefixes";
            let prefixes = k.prefixes.unwrap_or_default();
            if prefixes.is_empty() || prefixes.len() > 16 {
                return Err(err(at, "expected 1 to 16 prefixes"));
            }
            if let Some(bad) = prefixes.iter().find(|p| !crate::keyformat::valid_prefix(p)) {
                return Err(err(
                    at,
                    format!("`{bad}` is not a prefix: 2 to 16 lowercase letters or digits (a letter first) and `_`"),
                ));
            }
            Some(prefixes)
        }
    };
    Ok(KeyServiceConfig {
        cluster,
        authority,
        verify_path,
        revocations_path,
        timeout_ms,
        poll_ms,
        max_response_bytes,
        on_failure,
        retry_after_s,
        cache,
        key_format,
    })
}

fn parse_key(path: &str, k: RawKey) -> Result<(crate::hash::Digest32, KeyEntry), ConfigError> {
    let f = |name: &str| join(path, name);
    let sha = required(&f("sha256"), k.sha256)?;
    let digest = parse_hex32(&sha).ok_or_else(|| {
        err(
            &f("sha256"),
            "expected 64 hex digits: the SHA-256 of the key (printf %s KEY | sha256sum)",
        )
    })?;
    let key_id = log_token(&f("id"), &required(&f("id"), k.id)?, 128)?;
    let user = k.user;
    if let Some(u) = &user {
        if u.is_empty() || u.len() > 256 || u.contains(':') || u.chars().any(char::is_control) {
            return Err(err(
                &f("user"),
                "a Basic user is 1 to 256 characters without ':' or control characters (Basic splits USER:TOKEN at the first ':')",
            ));
        }
    }
    let subject = k
        .subject
        .or_else(|| user.clone())
        .unwrap_or_else(|| key_id.clone());
    let account = k.account.unwrap_or_default();
    let plan = k.plan.unwrap_or_else(|| "default".to_string());
    let scopes = k.scopes.unwrap_or_default();
    let expires_at = match k.expires_at {
        Some(v) => Some(parse_time(&f("expires_at"), v)?),
        None => None,
    };
    let disabled = k.disabled.unwrap_or(false);
    let rate_limit = match k.rate_limit {
        Some(l) => Some(parse_limit(
            &f("rate_limit"),
            l.requests,
            l.window_s,
            l.burst,
        )?),
        None => None,
    };
    let resources: Vec<(String, Vec<String>)> = k.resources.unwrap_or_default().0;
    if !subject.is_empty() {
        plain_text(&f("subject"), &subject, 256)?;
    }
    for (name, s) in [("account", &account), ("plan", &plan)] {
        if !s.is_empty() {
            log_token(&f(name), s, 256)?;
        }
    }
    for (i, s) in scopes.iter().enumerate() {
        scope_token(&format!("{}[{i}]", f("scopes")), s)?;
    }
    Ok((
        digest,
        KeyEntry {
            user,
            disabled,
            identity: Rc::new(Identity {
                key_id,
                subject,
                account,
                plan,
                scopes,
                expires_at,
                rate_limit,
                resources,
            }),
        },
    ))
}

/// Refuses what is not JSON, and a JSON object that names a member twice anywhere (maps
/// included): serde keeps the last one silently, so `"default_access": "closed"` followed by
/// `"default_access": "public"` would mean public.
fn check_duplicate_members(bytes: &[u8]) -> Result<(), ConfigError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Walk<'a> {
        path: String,
        found: &'a RefCell<Option<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut i = 0usize;
            while a
                .next_element_seed(Walk {
                    path: format!("{}[{i}]", self.path),
                    found: self.found,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen: Vec<String> = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                let p = join(&self.path, &k);
                if seen.contains(&k) {
                    *self.found.borrow_mut() = Some(p);
                    return Err(A::Error::custom("duplicate member"));
                }
                m.next_value_seed(Walk {
                    path: p,
                    found: self.found,
                })?;
                seen.push(k);
            }
            Ok(())
        }
    }

    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (Err(_), Some(field)) => Err(err(
            &field,
            "is given twice (JSON keeps only the last one): say it once",
        )),
        (Err(e), None) => Err(err("", format!("not valid JSON: {e}"))),
        (Ok(()), _) => Ok(()),
    }
}

/// Parses and checks the whole configuration. `warnings` collects one line per ignored field.
pub fn parse(bytes: &[u8], warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let doc = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        check_duplicate_members(bytes)?;
        serde_json::from_slice(bytes).map_err(|e| err("", format!("not valid JSON: {e}")))?
    };
    let mut unknown = Vec::new();
    let raw = json::decode_tracked::<RawConfig>(&doc, &mut unknown)
        .map_err(|e| err(&e.path, e.message))?;
    let strict = raw.strict.unwrap_or(false);
    let mut w = Vec::new();
    let config = build(raw, &mut w)?;
    for f in unknown {
        if strict {
            return Err(err(&f, "unknown field (\"strict\": true)"));
        }
        warnings.push(format!("keygate: ignoring unknown config field `{f}`"));
    }
    warnings.append(&mut w);
    Ok(config)
}

fn parse_credentials(
    c: Option<RawCredentials>,
) -> Result<(CredentialConfig, bool, u32), ConfigError> {
    let mut credentials = CredentialConfig::default();
    let mut hide_credentials = true;
    let mut malformed_status = 400;
    if let Some(c) = c {
        credentials.basic = c.basic.unwrap_or(true);
        credentials.bearer = c.bearer.unwrap_or(true);
        if let Some(names) = c.api_key_headers {
            let f = "credentials.api_key_headers";
            credentials.api_key_headers = names
                .iter()
                .map(|n| header_name(f, n))
                .collect::<Result<_, _>>()?;
            if credentials
                .api_key_headers
                .iter()
                .any(|n| n == "authorization")
            {
                return Err(err(
                    f,
                    "`authorization` is configured by `basic` and `bearer`",
                ));
            }
            if credentials.api_key_headers.len() > 16 {
                return Err(err(f, "at most 16 header names"));
            }
        }
        let qf = "credentials.query_param";
        match c.query_param {
            None => {}
            Some(Loose::Bool(false)) => credentials.query_param = None,
            Some(Loose::Str(s)) if s.is_empty() => credentials.query_param = None,
            Some(Loose::Str(s)) => {
                let ok = s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok {
                    return Err(err(
                        qf,
                        "must be unreserved characters (A-Z a-z 0-9 - . _ ~)",
                    ));
                }
                credentials.query_param = Some(s);
            }
            Some(_) => return Err(err(qf, "expected a parameter name, \"\" or false")),
        }
        if let Some(n) = c.max_bytes {
            if !(16..=16_384).contains(&n) {
                return Err(err("credentials.max_bytes", "must be 16 to 16384"));
            }
            credentials.max_bytes = n as usize;
        }
        hide_credentials = c.hide_from_upstream.unwrap_or(true);
        if let Some(n) = c.malformed_status {
            if n != 400 && n != 401 {
                return Err(err("credentials.malformed_status", "must be 400 or 401"));
            }
            malformed_status = n as u32;
        }
    }
    if !credentials.basic
        && !credentials.bearer
        && credentials.api_key_headers.is_empty()
        && credentials.query_param.is_none()
    {
        return Err(err("credentials", "every credential style is switched off"));
    }
    Ok((credentials, hide_credentials, malformed_status))
}

fn parse_identity_headers(
    ih: Option<RawIdentityHeaders>,
    credentials: &CredentialConfig,
) -> Result<IdentityHeaders, ConfigError> {
    let mut identity_headers = IdentityHeaders {
        key_id: "x-keygate-key-id".into(),
        subject: "x-keygate-subject".into(),
        account: "x-keygate-account".into(),
        plan: "x-keygate-plan".into(),
        scopes: "x-keygate-scopes".into(),
    };
    if let Some(ih) = ih {
        for (name, slot, v) in [
            ("key_id", &mut identity_headers.key_id, ih.key_id),
            ("subject", &mut identity_headers.subject, ih.subject),
            ("account", &mut identity_headers.account, ih.account),
            ("plan", &mut identity_headers.plan, ih.plan),
            ("scopes", &mut identity_headers.scopes, ih.scopes),
        ] {
            let f = join("identity_headers", name);
            match v {
                None => {}
                // not sent, and a client's header of the default name is left alone
                Some(Loose::Bool(false)) => slot.clear(),
                Some(Loose::Str(s)) => *slot = header_name(&f, &s)?,
                Some(other) => {
                    return Err(err(
                        &f,
                        format!("expected a string, got {}", other.type_name()),
                    ))
                }
            }
        }
    }
    let spelled = |n: &str| n.replace('_', "-");
    let idn: Vec<&str> = identity_headers
        .names()
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    for (i, a) in idn.iter().enumerate() {
        if idn[..i].iter().any(|b| spelled(a) == spelled(b)) {
            return Err(err(
                "identity_headers",
                format!("`{a}` names two identity headers (upstreams read `_` as `-`)"),
            ));
        }
    }
    for (i, a) in credentials.api_key_headers.iter().enumerate() {
        if credentials.api_key_headers[..i]
            .iter()
            .any(|b| spelled(a) == spelled(b))
        {
            return Err(err(
                "credentials.api_key_headers",
                format!("`{a}` is listed twice (upstreams read `_` as `-`)"),
            ));
        }
    }
    for n in idn {
        // headers keygate reads or Envoy manages cannot carry identity: a client could forge them
        let reserved = [
            "authorization",
            "x-request-id",
            "host",
            "content-length",
            "transfer-encoding",
            "x-keygate-fail-open",
        ];
        if reserved.contains(&spelled(n).as_str())
            || credentials
                .api_key_headers
                .iter()
                .any(|h| spelled(h) == spelled(n))
            || n.starts_with(':')
        {
            return Err(err(
                "identity_headers",
                format!("`{n}` is a header keygate reads or Envoy manages"),
            ));
        }
    }
    Ok(identity_headers)
}

/// The checked `Config` from the decoded JSON; `w` gets warnings about what it means.
fn build(raw: RawConfig, w: &mut Vec<String>) -> Result<Config, ConfigError> {
    let realm = plain_text("realm", raw.realm.as_deref().unwrap_or("keygate"), 128)?;
    let problem_base = raw
        .problem_base
        .unwrap_or_else(|| "urn:keygate:problem:".to_string());
    if problem_base.is_empty() || problem_base.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("problem_base", "must be a URI prefix without spaces"));
    }
    let access_log_state = raw.access_log_state.unwrap_or(true);
    let shared_prefix = raw
        .shared_prefix
        .unwrap_or_else(|| "keygate.v1".to_string());

    let (credentials, hide_credentials, malformed_status) = parse_credentials(raw.credentials)?;

    let mut keys = KeyStore::default();
    // each key's plan as written (`None`: the default), checked once the plans are known
    let mut key_plans: Vec<Option<String>> = Vec::new();
    if let Some(arr) = raw.keys {
        // key id -> its index: duplicates found in linear time (100k keys parse in well under
        // a second; a scan per key was quadratic)
        let mut ids: std::collections::HashMap<String, usize> =
            std::collections::HashMap::with_capacity(arr.len());
        for (i, k) in arr.into_iter().enumerate() {
            let path = format!("keys[{i}]");
            key_plans.push(k.plan.clone());
            let (digest, entry) = parse_key(&path, k)?;
            let kid = &entry.identity.key_id;
            if let Some(j) = ids.get(kid) {
                return Err(err(
                    &format!("{path}.id"),
                    format!("`{kid}` is already the id of keys[{j}]: two keys would share one bucket and one identity"),
                ));
            }
            ids.insert(kid.clone(), i);
            if !keys.insert(digest, entry) {
                return Err(err(
                    &format!("{path}.sha256"),
                    "the same key is listed twice",
                ));
            }
        }
    }

    let mut rate = RateConfig {
        headers: true,
        ..RateConfig::default()
    };
    if let Some(r) = raw.rate_limit {
        for (name, p) in r.plans.unwrap_or_default().0 {
            let f = format!("rate_limit.plans.{name}");
            log_token(&f, &name, 128)?;
            let p = parse_policy(&f, (Origin::Plan, &name), p)?;
            rate.plans.push((name, p));
        }
        match r.default {
            Some(p) => {
                rate.default = parse_policy("rate_limit.default", (Origin::Default, "default"), p)?
            }
            None => rate.plans_declared_only = true,
        }
        rate.reset = match r.reset.as_deref() {
            None | Some("seconds") => Some(ResetStyle::Seconds),
            Some("unix") => Some(ResetStyle::Unix),
            Some(other) => {
                return Err(err(
                    "rate_limit.reset",
                    format!("`{other}` is not one of seconds, unix"),
                ))
            }
        };
        rate.ietf_headers = r.ietf_headers.unwrap_or(false);
        rate.headers = r.headers.unwrap_or(true);
    }
    let policies = rate.plans.iter_mut().filter_map(|(_, p)| p.as_mut());
    for p in policies.chain(rate.default.as_mut()) {
        p.stem = state_key::stem(&shared_prefix, Tier::Local, (p.origin, &p.name));
    }

    check_key_plans(&key_plans, &rate)?;

    let identity_headers = parse_identity_headers(raw.identity_headers, &credentials)?;

    let mut routes = Vec::new();
    for (i, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        routes.push(parse_route(&format!("routes[{i}]"), r)?);
    }
    warn_method_lists(&routes, w);
    let key_service = match raw.key_service {
        Some(k) => Some(parse_key_service(k)?),
        None => None,
    };
    let auth_throttle = match raw.auth_throttle {
        Some(RawThrottle::Switch(false)) => None,
        None | Some(RawThrottle::Switch(true)) => Some(ThrottleConfig {
            failures: 100,
            window_s: 60,
            clients: 10_000,
        }),
        Some(RawThrottle::Tuned(t)) => Some(ThrottleConfig {
            failures: bounded("auth_throttle.failures", t.failures, 100, 1, 1_000_000)?,
            window_s: bounded("auth_throttle.window_s", t.window_s, 60, 1, 86_400)?,
            clients: bounded("auth_throttle.clients", t.clients, 10_000, 16, 1_000_000)? as usize,
        }),
    };
    let (paths, case_sensitive_paths) = match raw.paths {
        Some(p) => (
            PathPolicy {
                allow_semicolon: p.allow_semicolon.unwrap_or(false),
            },
            p.case_sensitive.unwrap_or(false),
        ),
        None => (
            PathPolicy {
                allow_semicolon: false,
            },
            false,
        ),
    };
    let method_rules = routes.iter().any(|r| !r.methods.is_empty());
    let problems = match raw.problems {
        Some(m) => parse_problems(m)?,
        None => Dialects::new(),
    };
    let fleet = match raw.fleet {
        Some(f) => Some(parse_fleet(f, &rate)?),
        None => None,
    };
    let default_access =
        parse_access("default_access", raw.default_access.as_deref(), Access::Key)?;
    let bodies = match raw.bodies {
        None => BodyLimits::default(),
        Some(b) => {
            let d = BodyLimits::default();
            BodyLimits {
                max_held: bounded("bodies.max_held", b.max_held, d.max_held as u64, 1, 65_536)?
                    as usize,
                timeout_ms: bounded(
                    "bodies.timeout_ms",
                    b.timeout_ms,
                    d.timeout_ms,
                    100,
                    3_600_000,
                )?,
            }
        }
    };

    Ok(Config {
        realm,
        problem_base,
        credentials,
        hide_credentials,
        keys,
        rate,
        identity_headers,
        routes,
        default_access,
        shared_prefix,
        access_log_state,
        key_service,
        auth_throttle,
        paths,
        case_sensitive_paths,
        method_rules,
        malformed_status,
        problems,
        fleet,
        bodies,
    })
}

/// Members every problem has (RFC 9457's, and keygate's `request_id`): not configurable.
const CORE_MEMBERS: [&str; 6] = [
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "request_id",
];

/// `problems`: `{"<slug>" | "*": {"title", "detail", "members": {name: JSON}}}`; `*` applies to
/// every kind, a slug's own settings win over it.
fn parse_problems(m: Entries<RawDialect>) -> Result<Dialects, ConfigError> {
    let mut any = None;
    let mut own: Vec<(Kind, Dialect)> = Vec::new();
    for (name, raw) in m.0 {
        let f = join("problems", &name);
        let kinds: Vec<Kind> = if name == "*" {
            Kind::ALL.to_vec()
        } else {
            match Kind::from_slug(&name) {
                Some(k) => vec![k],
                None => {
                    return Err(err(
                        &f,
                        "is not a problem slug (credential-missing, credential-invalid, rate-limited, …) or `*`",
                    ))
                }
            }
        };
        let d = parse_dialect(&f, raw, &kinds)?;
        match kinds.as_slice() {
            [k] => own.push((*k, d)),
            _ => any = Some(d),
        }
    }
    let mut out = vec![any.clone().unwrap_or_default(); Kind::ALL.len()];
    for (k, d) in own {
        if let Some(slot) = out.get_mut(k.index()) {
            let base = std::mem::take(slot);
            let mut members = d.members;
            for m in base.members {
                if !members.iter().any(|(n, _)| *n == m.0) {
                    members.push(m);
                }
            }
            *slot = Dialect {
                title: d.title.or(base.title),
                detail: d.detail.or(base.detail),
                members,
            };
        }
    }
    Ok(out)
}

fn parse_dialect(path: &str, raw: RawDialect, kinds: &[Kind]) -> Result<Dialect, ConfigError> {
    let text = |name: &str, v: Option<String>| -> Result<Option<String>, ConfigError> {
        match v {
            Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
                Err(err(
                    &join(path, name),
                    "must be 1 to 256 characters without control characters",
                ))
            }
            v => Ok(v),
        }
    };
    let title = text("title", raw.title)?;
    let detail = text("detail", raw.detail)?;
    let mut members = Vec::new();
    if let Some(m) = raw.members {
        let mp = join(path, "members");
        if m.0.len() > 16 {
            return Err(err(&mp, "at most 16 members"));
        }
        for (name, Member(v)) in m.0 {
            let f = join(&mp, &name);
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
            if !ok {
                return Err(err(&f, "a member name is 1 to 64 of A-Z a-z 0-9 _ - ."));
            }
            if CORE_MEMBERS.contains(&name.as_str()) {
                return Err(err(
                    &f,
                    "is a member every problem has (set `title` or `detail` to reword it)",
                ));
            }
            if let Some(k) = kinds
                .iter()
                .find(|k| k.own_members().contains(&name.as_str()))
            {
                return Err(err(
                    &f,
                    format!("is a member keygate sets itself on `{}`", k.slug()),
                ));
            }
            let value = match v {
                Value::String(s) if s == "$title" => MemberValue::Title,
                Value::String(s) if s == "$detail" => MemberValue::Detail,
                v => {
                    let j = serde_json::to_string(&v).unwrap_or_default();
                    if j.len() > 1024 {
                        return Err(err(&f, "must be at most 1024 bytes of JSON"));
                    }
                    MemberValue::Json(j)
                }
            };
            members.push((name, value));
        }
    }
    Ok(Dialect {
        title,
        detail,
        members,
    })
}

fn parse_mode(field: &str, v: Option<&str>, default: Mode) -> Result<Mode, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => Mode::parse(s)
            .ok_or_else(|| err(field, format!("`{s}` is not one of local, request, leased"))),
    }
}

/// `fleet`: the rate-limit engine and which policies it counts (see `crate::fleet`).
fn parse_fleet(o: RawFleet, rate: &RateConfig) -> Result<FleetConfig, ConfigError> {
    let (cluster, authority) = cluster_and_authority("fleet", o.cluster, o.authority)?;
    let domain = plain_text(
        "fleet.domain",
        o.domain.as_deref().unwrap_or("keygate"),
        128,
    )?;
    let timeout_ms = bounded("fleet.timeout_ms", o.timeout_ms, 200, 1, 60_000)?;
    let retry_after_s = bounded("fleet.retry_after_s", o.retry_after_s, 1, 1, 3600)?;
    let on_failure = match o.on_failure.as_deref() {
        None | Some("local") => OnEngineFailure::Local,
        Some("closed") => OnEngineFailure::Closed,
        Some(other) => {
            return Err(err(
                "fleet.on_failure",
                format!("`{other}` is not one of local, closed"),
            ))
        }
    };
    // the engine tells policies apart by the descriptor's `plan` only: a plan may not take the
    // name of a key's own limit (`key`) or of `rate_limit.default` (`default`)
    for (name, _) in &rate.plans {
        let taken = name == "key" || (name == "default" && rate.default.is_some());
        if taken {
            return Err(err(
                &join("rate_limit.plans", name),
                format!(
                    "is the name the rate-limit engine is sent for {} (`plan: {name}`): rename the plan",
                    if name == "key" {
                        "a key's own limit"
                    } else {
                        "rate_limit.default"
                    }
                ),
            ));
        }
    }
    let default = parse_mode("fleet.default", o.default.as_deref(), Mode::Local)?;
    let mut plans = Vec::new();
    for (name, v) in o.plans.unwrap_or_default().0 {
        let f = join("fleet.plans", &name);
        let known =
            name == "key" || name == "default" || rate.plans.iter().any(|(n, _)| *n == name);
        if !known {
            return Err(err(
                &f,
                "names no plan of rate_limit.plans (nor `key` or `default`)",
            ));
        }
        let mode = match v {
            Loose::Str(s) => parse_mode(&f, Some(&s), Mode::Local)?,
            _ => return Err(err(&f, "expected \"local\", \"request\" or \"leased\"")),
        };
        plans.push((name, mode));
    }
    let mut lease = LeasePolicy {
        max: 100,
        percent: 10,
        ttl_ms: 1000,
    };
    if let Some(l) = o.lease {
        lease.max = bounded("fleet.lease.max", l.max, 100, 1, 1_000_000)?;
        lease.percent = bounded("fleet.lease.percent", l.percent, 10, 1, 100)?;
        lease.ttl_ms = bounded("fleet.lease.ttl_ms", l.ttl_ms, 1000, 10, 3_600_000)?;
    }
    Ok(FleetConfig {
        cluster,
        authority,
        domain,
        timeout_ms,
        on_failure,
        retry_after_s,
        plans,
        default,
        lease,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Config, ConfigError> {
        parse(s.as_bytes(), &mut Vec::new())
    }

    fn field_of(s: &str) -> String {
        match p(s) {
            Err(e) => e.field,
            Ok(_) => panic!("should be refused: {s}"),
        }
    }

    const SHA: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"; // "foo"

    #[test]
    fn empty_config_has_safe_defaults() {
        let c = p("").unwrap();
        assert!(c.credentials.basic && c.credentials.bearer && c.hide_credentials);
        assert_eq!(c.credentials.query_param.as_deref(), Some("_apikey"));
        assert_eq!(c.default_access, Access::Key);
        assert!(c.keys.is_empty());
        assert!(c.rate.headers && c.access_log_state);
    }

    #[test]
    fn rate_headers_and_log_state_can_be_turned_off() {
        let c = p(r#"{"access_log_state":false,"rate_limit":{"headers":false}}"#).unwrap();
        assert!(!c.rate.headers && !c.access_log_state);
        let c = p(r#"{"rate_limit":{"plans":{}}}"#).unwrap();
        assert!(c.rate.headers);
        assert_eq!(field_of(r#"{"access_log_state":"no"}"#), "access_log_state");
        assert_eq!(
            field_of(r#"{"rate_limit":{"headers":1}}"#),
            "rate_limit.headers"
        );
    }

    #[test]
    fn configs_that_mean_something_else_are_refused() {
        let k = |extra: &str| format!(r#"{{"keys":[{{"id":"a","sha256":"{SHA}"{extra}}}]}}"#);
        let two = format!(
            r#"{{"keys":[{{"id":"a","sha256":"{SHA}"}},{{"id":"a","sha256":"{}"}}]}}"#,
            "1".repeat(64)
        );
        for (json, field) in [
            (two, "keys[1].id"),
            (
                r#"{"default_access":"closed","default_access":"public"}"#.to_string(),
                "default_access",
            ),
            (
                r#"{"routes":[{"prefix":"/a","access":"closed","access":"public"}]}"#.to_string(),
                "routes[0].access",
            ),
            (k(r#","expires_at":"2027-02-30T00:00:00Z""#), "keys[0].expires_at"),
            (k(r#","expires_at":"2026-02-29T00:00:00Z""#), "keys[0].expires_at"),
            (k(r#","scopes":["read write"]"#), "keys[0].scopes[0]"),
            (k(r#","user":"al:ice""#), "keys[0].user"),
            (k(r#","account":"a b""#), "keys[0].account"),
            (
                format!(r#"{{"keys":[{{"id":"k=1","sha256":"{SHA}"}}]}}"#),
                "keys[0].id",
            ),
            (
                format!(r#"{{"keys":[{{"id":"k 1","sha256":"{SHA}"}}]}}"#),
                "keys[0].id",
            ),
            (
                r#"{"routes":[{"prefix":"/a","methods":["POST "]}]}"#.to_string(),
                "routes[0].methods[0]",
            ),
            (
                r#"{"routes":[{"prefix":"/a","scopes":["a b"]}]}"#.to_string(),
                "routes[0].scopes[0]",
            ),
            (
                r#"{"identity_headers":{"plan":"x-keygate-account"}}"#.to_string(),
                "identity_headers",
            ),
            (
                r#"{"identity_headers":{"plan":"x_keygate_account"}}"#.to_string(),
                "identity_headers",
            ),
            (
                r#"{"identity_headers":{"plan":"x_api_key"}}"#.to_string(),
                "identity_headers",
            ),
            (
                r#"{"credentials":{"api_key_headers":["x-key","x_key"]}}"#.to_string(),
                "credentials.api_key_headers",
            ),
            (
                r#"{"routes":[{"prefix":"/e","methods":["GET","POST"],"owner":{"query":"_id","resource":"r","body":"reject"}}]}"#.to_string(),
                "routes[0].owner.body",
            ),
        ] {
            assert_eq!(field_of(&json), field, "{json}");
        }
        // leap day, leap second, bodyless owner routes, and an owner route that says the body
        // is not read are fine
        assert!(p(&k(r#","expires_at":"2028-02-29T23:59:60Z""#)).is_ok());
        assert!(p(r#"{"routes":[{"prefix":"/e","methods":["GET","DELETE"],"owner":{"query":"_id","resource":"r"}}]}"#).is_ok());
        assert!(p(r#"{"routes":[{"prefix":"/e","methods":["POST"],"owner":{"query":"_id","resource":"r","body":"unchecked"}}]}"#).is_ok());
        let mut w = Vec::new();
        parse(
            br#"{"routes":[{"prefix":"/o","methods":["POST","PUT","DELETE"],"scopes":["write"]}]}"#,
            &mut w,
        )
        .unwrap();
        assert!(w.iter().any(|l| l.contains("PATCH")), "{w:?}");
        let c = p(
            r#"{"routes":[{"prefix":"/o","methods":["post"]},{"prefix":"/g","methods":["get"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.routes[0].methods, ["POST"]);
        assert_eq!(c.routes[1].methods, ["GET", "HEAD"]);
        assert!(c.method_rules && !c.case_sensitive_paths && !c.paths.allow_semicolon);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"keys":[{"id":"a","sha256":"xyz"}]}"#),
            "keys[0].sha256"
        );
        assert_eq!(
            field_of(r#"{"keys":[{"sha256":"SHA"}]}"#.replace("SHA", SHA).as_str()),
            "keys[0].id"
        );
        assert_eq!(
            field_of(r#"{"credentials":{"basic":"yes"}}"#),
            "credentials.basic"
        );
        assert_eq!(
            field_of(r#"{"credentials":{"api_key_headers":["bad header"]}}"#),
            "credentials.api_key_headers"
        );
        assert_eq!(
            field_of(r#"{"rate_limit":{"plans":{"free":{"requests":0}}}}"#),
            "rate_limit.plans.free.requests"
        );
        assert_eq!(
            field_of(r#"{"rate_limit":{"reset":"later"}}"#),
            "rate_limit.reset"
        );
        assert_eq!(
            field_of(r#"{"routes":[{"prefix":"/a","access":"maybe"}]}"#),
            "routes[0].access"
        );
        assert_eq!(
            field_of(r#"{"routes":[{"prefix":"/a","owner":{"resource":"x"}}]}"#),
            "routes[0].owner"
        );
        assert_eq!(
            field_of(
                r#"{"credentials":{"basic":false,"bearer":false,"api_key_headers":[],"query_param":""}}"#
            ),
            "credentials"
        );
        assert_eq!(field_of("[1]"), "");
        assert_eq!(
            field_of(r#"{"identity_headers":{"subject":"x-request-id"}}"#),
            "identity_headers"
        );
        assert_eq!(
            field_of(r#"{"identity_headers":{"plan":"x-api-key"}}"#),
            "identity_headers"
        );
        let e = p("{nope").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("keygate: configuration refused: not valid JSON"));
        let dup =
            format!(r#"{{"keys":[{{"id":"a","sha256":"{SHA}"}},{{"id":"b","sha256":"{SHA}"}}]}}"#);
        assert_eq!(field_of(&dup), "keys[1].sha256");
    }

    #[test]
    fn unknown_fields_warn_or_refuse() {
        let mut w = Vec::new();
        parse(
            br#"{"future_thing":1,"credentials":{"also_new":true}}"#,
            &mut w,
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("`future_thing`") || w[1].contains("`future_thing`"));
        assert!(w.iter().any(|l| l.contains("`credentials.also_new`")));
        assert_eq!(
            field_of(r#"{"strict":true,"credentials":{"also_new":true}}"#),
            "credentials.also_new"
        );
    }

    #[test]
    fn decoding_refuses_what_is_not_the_shape() {
        for (json, field, reason) in [
            // a derived struct would take an array of its fields in order
            (
                r#"{"paths":[true,false]}"#,
                "paths",
                "expected an object, got an array",
            ),
            (r#"[1]"#, "", "expected an object, got an array"),
            (
                r#"{"keys":[{"id":"a","sha256":"x","scopes":["r",5]}]}"#,
                "keys[0].scopes[1]",
                "expected a string, got a number",
            ),
            (
                r#"{"key_service":{"cluster":"c","timeout_ms":-1}}"#,
                "key_service.timeout_ms",
                "expected a non-negative whole number",
            ),
            (
                r#"{"credentials":{"query_param":true}}"#,
                "credentials.query_param",
                "expected a parameter name, \"\" or false",
            ),
            (
                r#"{"identity_headers":{"plan":1}}"#,
                "identity_headers.plan",
                "expected a string, got a number",
            ),
            (
                r#"{"rate_limit":{"plans":{"p":"lots"}}}"#,
                "rate_limit.plans.p",
                "expected \"unlimited\" or an object {requests, window_s, burst, per}, got `lots`",
            ),
            // duplicates inside maps, where serde would keep the last one
            (
                r#"{"rate_limit":{"plans":{"p":"unlimited","p":{"requests":1}}}}"#,
                "rate_limit.plans.p",
                "is given twice (JSON keeps only the last one): say it once",
            ),
            (
                r#"{"problems":{"*":{"members":{"a":1,"a":2}}}}"#,
                "problems.*.members.a",
                "is given twice (JSON keeps only the last one): say it once",
            ),
        ] {
            let e = p(json).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.reason.as_str()),
                (field, reason),
                "{json}"
            );
        }
        let mut w = Vec::new();
        parse(br#"{"keys":[{"id":"a","sha256":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","resources":{"r":["x"]},"nope":1}],"problems":{"*":{"members":{"m":{"deep":[1]}}}}}"#, &mut w).unwrap();
        assert_eq!(w, ["keygate: ignoring unknown config field `keys[0].nope`"]);
    }

    #[test]
    fn keys_plans_and_times() {
        let c = p(&format!(
            r#"{{"keys":[{{"id":"k1","sha256":"{SHA}","user":"alice","account":"acme","plan":"pro",
                "scopes":["read"],"expires_at":"2027-01-31T00:00:00Z","rate_limit":{{"requests":5}},
                "resources":{{"aggregator":["a1","a2"]}}}}],
               "rate_limit":{{"plans":{{"pro":{{"requests":300,"per":"account"}},"ent":"unlimited"}},
                              "default":{{"requests":60,"burst":10}},"reset":"unix"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.keys.len(), 1);
        let pro = c.rate.policy_for("pro").unwrap();
        assert_eq!(
            (
                pro.limit.requests,
                pro.limit.window_s,
                pro.limit.burst,
                pro.scope
            ),
            (300, 60, 300, Scope::Account)
        );
        assert!(c.rate.policy_for("ent").is_none());
        assert_eq!(c.rate.policy_for("other").unwrap().limit.burst, 10);
        assert_eq!(c.rate.reset_style(), ResetStyle::Unix);
    }

    #[test]
    fn rolling_window_plans() {
        let c =
            p(r#"{"rate_limit":{"plans":{"w":{"requests":100,"algorithm":"rolling_window"}}}}"#)
                .unwrap();
        assert_eq!(
            c.rate.policy_for("w").unwrap().algorithm,
            Algorithm::RollingWindow
        );
        let c = p(r#"{"rate_limit":{"default":{"requests":5}}}"#).unwrap();
        assert_eq!(
            c.rate.policy_for("x").unwrap().algorithm,
            Algorithm::TokenBucket
        );
        for (json, field) in [
            (
                r#"{"rate_limit":{"plans":{"w":{"requests":1,"algorithm":"sliding"}}}}"#,
                "rate_limit.plans.w.algorithm",
            ),
            (
                r#"{"rate_limit":{"plans":{"w":{"requests":5,"burst":5,"algorithm":"rolling_window"}}}}"#,
                "rate_limit.plans.w.burst",
            ),
            (
                r#"{"rate_limit":{"default":{"requests":10001,"algorithm":"rolling_window"}}}"#,
                "rate_limit.default.requests",
            ),
            (
                r#"{"rate_limit":{"plans":{"w":{"requests":1,"window_s":2592001,"algorithm":"rolling_window"}}}}"#,
                "rate_limit.plans.w.window_s",
            ),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
    }

    #[test]
    fn problem_dialects() {
        let c = p(r#"{"problems": {
            "*": {"members": {"message": "$detail", "errors": {}}},
            "credential-invalid": {"title": "Unauthorized", "members": {"error": "Invalid API key", "message": "$title"}},
            "rate-limited": {"detail": "Rate limit exceeded"}}}"#)
        .unwrap();
        let inv = &c.problems[Kind::CredentialInvalid.index()];
        assert_eq!(inv.title.as_deref(), Some("Unauthorized"));
        let m: Vec<(&str, &MemberValue)> =
            inv.members.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert!(m.contains(&("error", &MemberValue::Json("\"Invalid API key\"".into()))));
        assert!(
            m.contains(&("message", &MemberValue::Title)),
            "the slug's own wins"
        );
        assert!(m.contains(&("errors", &MemberValue::Json("{}".into()))));
        assert_eq!(m.len(), 3);
        let missing = &c.problems[Kind::CredentialMissing.index()];
        assert_eq!(missing.members.len(), 2);
        assert_eq!(
            c.problems[Kind::RateLimited.index()].detail.as_deref(),
            Some("Rate limit exceeded")
        );
        assert!(p("{}").unwrap().problems.is_empty());
        for (json, field) in [
            (r#"{"problems": {"nope": {}}}"#, "problems.nope"),
            (
                r#"{"problems": {"*": {"members": {"type": 1}}}}"#,
                "problems.*.members.type",
            ),
            (
                r#"{"problems": {"*": {"members": {"limit": 1}}}}"#,
                "problems.*.members.limit",
            ),
            (
                r#"{"problems": {"rate-limited": {"members": {"resetTime": 1}}}}"#,
                "problems.rate-limited.members.resetTime",
            ),
            (
                r#"{"problems": {"credential-invalid": {"members": {"bad name": 1}}}}"#,
                "problems.credential-invalid.members.bad name",
            ),
            (
                r#"{"problems": {"credential-invalid": {"title": ""}}}"#,
                "problems.credential-invalid.title",
            ),
            (
                r#"{"problems": {"credential-invalid": {"detail": "a\nb"}}}"#,
                "problems.credential-invalid.detail",
            ),
            (
                r#"{"problems": {"credential-invalid": {"members": []}}}"#,
                "problems.credential-invalid.members",
            ),
            (r#"{"problems": []}"#, "problems"),
            (
                r#"{"credentials": {"malformed_status": 403}}"#,
                "credentials.malformed_status",
            ),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
        // a member may be named like another kind's own member
        assert!(p(r#"{"problems": {"credential-invalid": {"members": {"limit": 1}}}}"#).is_ok());
        assert_eq!(p("{}").unwrap().malformed_status, 400);
        assert_eq!(
            p(r#"{"credentials": {"malformed_status": 401}}"#)
                .unwrap()
                .malformed_status,
            401
        );
    }

    #[test]
    fn key_service_section() {
        let c = p(r#"{"key_service":{"cluster":"outbound|8080||keys.default.svc.cluster.local","timeout_ms":250,
                     "revocations_path":false,"on_failure":"open","positive_ttl_s":60}}"#).unwrap();
        let ks = c.key_service.unwrap();
        assert_eq!(ks.cluster, "outbound|8080||keys.default.svc.cluster.local");
        assert_eq!(ks.authority, ks.cluster);
        assert_eq!(ks.timeout_ms, 250);
        assert!(ks.revocations_path.is_none());
        assert_eq!(ks.on_failure, OnFailure::Open);
        assert_eq!(ks.cache.positive_ttl_ms, 60_000);
        assert_eq!(field_of(r#"{"key_service":{}}"#), "key_service.cluster");
        assert_eq!(
            field_of(r#"{"key_service":{"cluster":"k","timeout_ms":0}}"#),
            "key_service.timeout_ms"
        );
        assert_eq!(
            field_of(r#"{"key_service":{"cluster":"k","verify_path":"x"}}"#),
            "key_service.verify_path"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2027-01-31T12:30:05Z"), Some(1_801_398_605));
        assert_eq!(parse_rfc3339("2027-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2027-01-01 00:00:00Z"), None);
        assert_eq!(parse_rfc3339("+027-01-01T00:00:00Z"), None);
    }

    proptest::proptest! {
        #[test]
        fn config_parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse(s.as_bytes(), &mut Vec::new());
        }
    }
}
