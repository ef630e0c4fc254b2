//! The plugin configuration: JSON in the filter's `configuration`, parsed and checked once.
//!
//! Errors name the field (`keys[2].sha256`) and the reason, in one line. Unknown fields are
//! warned about and ignored, so a control plane that adds a field does not take a listener down;
//! `"strict": true` refuses them instead.

use std::fmt;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::cache::CachePolicy;
use crate::credential::CredentialConfig;
use crate::fleet::{FleetConfig, LeasePolicy, Mode, OnEngineFailure};
use crate::hash::parse_hex32;
use crate::keystore::{KeyEntry, KeyStore};
use crate::ratelimit::{Limit, Scope};
use crate::route::{Access, Owner, OwnerSource, PathMatch, Route};
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
    pub limit: Limit,
    pub scope: Scope,
}

#[derive(Clone, Debug, Default)]
pub struct RateConfig {
    /// Plan name -> policy; `None` is an explicitly unlimited plan.
    pub plans: Vec<(String, Option<Policy>)>,
    /// For plans not in the table; `None` means unlimited.
    pub default: Option<Policy>,
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
    /// Fleet-wide limits on a rate-limit engine (`None`: every limit is this Envoy's own).
    pub fleet: Option<FleetConfig>,
}

thread_local! {
    /// When set, every field name the parser asks for is recorded (see `known_fields`).
    static FIELDS_ASKED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Every configuration field the parser knows, as `a.b[].c` paths (`<name>` for map keys), found by
/// parsing a configuration that sets every group. The config reference is tested against it.
pub fn known_fields() -> Vec<String> {
    let sample = br#"{
      "credentials": {}, "identity_headers": {},
      "keys": [{"id": "k", "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                "rate_limit": {"requests": 1}, "resources": {}}],
      "rate_limit": {"plans": {"p": {"requests": 1}}, "default": {"requests": 1}},
      "routes": [{"prefix": "/", "owner": {"query": "q", "resource": "r"}}],
      "key_service": {"cluster": "c"},
      "auth_throttle": {},
      "fleet": {"cluster": "c", "plans": {"p": "request"}, "lease": {}}
    }"#;
    FIELDS_ASKED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let _ = parse(sample, &mut Vec::new());
    let mut asked = FIELDS_ASKED
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    for f in asked.iter_mut() {
        *f = f.replace("[0]", "[]").replace("plans.p.", "plans.<name>.");
    }
    asked.sort();
    asked.dedup();
    asked
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

struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Obj<'a> {
    fn new(path: String, v: &'a Value) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Obj {
                path,
                map,
                seen: Vec::new(),
            }),
            other => Err(err(
                &path,
                format!("expected an object, got {}", type_name(other)),
            )),
        }
    }

    fn field(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.seen.push(name);
        FIELDS_ASKED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(self.field(name));
            }
        });
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn bool(&mut self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(err(
                &self.field(name),
                format!("expected a boolean, got {}", type_name(v)),
            )),
        }
    }

    fn opt_str(&mut self, name: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(err(
                &self.field(name),
                format!("expected a string, got {}", type_name(v)),
            )),
        }
    }

    fn str_req(&mut self, name: &'static str) -> Result<&'a str, ConfigError> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(err(&self.field(name), "is required and must not be empty")),
        }
    }

    fn opt_u64(&mut self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| err(&self.field(name), "expected a non-negative whole number")),
            Some(v) => Err(err(
                &self.field(name),
                format!("expected a number, got {}", type_name(v)),
            )),
        }
    }

    fn opt_array(&mut self, name: &'static str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(err(
                &self.field(name),
                format!("expected an array, got {}", type_name(v)),
            )),
        }
    }

    fn strings(&mut self, name: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(a) = self.opt_array(name)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(a.len());
        for (i, v) in a.iter().enumerate() {
            match v {
                Value::String(s) => out.push(s.clone()),
                other => {
                    return Err(err(
                        &format!("{}[{i}]", self.field(name)),
                        format!("expected a string, got {}", type_name(other)),
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    fn child(&mut self, name: &'static str) -> Result<Option<Obj<'a>>, ConfigError> {
        let path = self.field(name);
        match self.get(name) {
            None => Ok(None),
            Some(v) => Obj::new(path, v).map(Some),
        }
    }

    /// Reports fields nobody asked for: refused when strict, else warned about.
    fn finish(self, strict: bool, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        for k in self.map.keys() {
            if !self.seen.contains(&k.as_str()) {
                let f = join(&self.path, k);
                if strict {
                    return Err(err(&f, "unknown field (\"strict\": true)"));
                }
                warnings.push(format!("keygate: ignoring unknown config field `{f}`"));
            }
        }
        Ok(())
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
pub fn parse_time(field: &str, v: &Value) -> Result<u64, ConfigError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| err(field, "expected unix seconds (a non-negative whole number)")),
        Value::String(s) => parse_rfc3339(s).ok_or_else(|| {
            err(
                field,
                "expected unix seconds or a timestamp like 2027-01-31T00:00:00Z",
            )
        }),
        other => Err(err(
            field,
            format!("expected a time, got {}", type_name(other)),
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
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
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

fn parse_limit(mut o: Obj<'_>, strict: bool, w: &mut Vec<String>) -> Result<Limit, ConfigError> {
    let requests = o
        .opt_u64("requests")?
        .ok_or_else(|| err(&o.field("requests"), "is required"))?;
    if requests == 0 || requests > 1_000_000_000 {
        return Err(err(&o.field("requests"), "must be 1 to 1000000000"));
    }
    let window_s = o.opt_u64("window_s")?.unwrap_or(60);
    if window_s == 0 || window_s > 31_536_000 {
        return Err(err(&o.field("window_s"), "must be 1 to 31536000 (a year)"));
    }
    let burst = o.opt_u64("burst")?.unwrap_or(requests);
    if burst == 0 || burst > 1_000_000_000 {
        return Err(err(&o.field("burst"), "must be 1 to 1000000000"));
    }
    o.finish(strict, w)?;
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

/// A plan's policy: `"unlimited"` or `{requests, window_s, burst, per}`.
fn parse_policy(
    path: String,
    name: &str,
    v: &Value,
    strict: bool,
    w: &mut Vec<String>,
) -> Result<Option<Policy>, ConfigError> {
    if v.as_str() == Some("unlimited") {
        return Ok(None);
    }
    let mut o = Obj::new(path, v).map_err(|e| {
        err(
            &e.field,
            "expected \"unlimited\" or an object {requests, window_s, burst, per}",
        )
    })?;
    let per = o.opt_str("per")?;
    let scope = parse_scope(&o.field("per"), per)?;
    let limit = parse_limit(o, strict, w)?;
    Ok(Some(Policy {
        name: name.to_string(),
        limit,
        scope,
    }))
}

fn parse_owner(mut o: Obj<'_>, strict: bool, w: &mut Vec<String>) -> Result<Owner, ConfigError> {
    let query = o.opt_str("query")?;
    let segment = o.opt_u64("path_segment")?;
    let source = match (query, segment) {
        (Some(q), None) if !q.is_empty() => OwnerSource::Query(q.to_string()),
        (None, Some(n)) if (1..=64).contains(&n) => OwnerSource::PathSegment(n as usize),
        _ => {
            return Err(err(
                &o.path,
                "needs exactly one of `query` (a parameter name) or `path_segment` (1 to 64)",
            ))
        }
    };
    let resource = o.str_req("resource")?.to_string();
    let status = o.opt_u64("status")?.unwrap_or(404);
    if status != 403 && status != 404 {
        return Err(err(&o.field("status"), "must be 403 or 404"));
    }
    o.finish(strict, w)?;
    Ok(Owner {
        source,
        resource,
        status: status as u32,
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

fn parse_route(mut o: Obj<'_>, strict: bool, w: &mut Vec<String>) -> Result<Route, ConfigError> {
    let exact = o.opt_str("exact")?;
    let prefix = o.opt_str("prefix")?;
    let matcher = match (exact, prefix) {
        (Some(e), None) if e.starts_with('/') => PathMatch::Exact(e.to_string()),
        (None, Some(p)) if p.starts_with('/') => PathMatch::Prefix(p.to_string()),
        _ => {
            return Err(err(
                &o.path,
                "needs exactly one of `exact` or `prefix`, starting with '/'",
            ))
        }
    };
    let methods = o
        .strings("methods")?
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    let access_s = o.opt_str("access")?;
    let access = parse_access(&o.field("access"), access_s, Access::Key)?;
    let scopes = o.strings("scopes")?.unwrap_or_default();
    let owner = match o.child("owner")? {
        Some(c) => Some(parse_owner(c, strict, w)?),
        None => None,
    };
    if access != Access::Key && (!scopes.is_empty() || owner.is_some()) {
        return Err(err(
            &o.path,
            "`scopes` and `owner` only make sense with \"access\": \"key\"",
        ));
    }
    o.finish(strict, w)?;
    Ok(Route {
        methods,
        matcher,
        access,
        scopes,
        owner,
    })
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
    o: &mut Obj<'_>,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = o.opt_u64(name)?.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(err(&o.field(name), format!("must be {min} to {max}")));
    }
    Ok(v)
}

fn parse_key_service(
    mut o: Obj<'_>,
    strict: bool,
    w: &mut Vec<String>,
) -> Result<KeyServiceConfig, ConfigError> {
    let cluster = o.str_req("cluster")?.to_string();
    if cluster.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(err(
            &o.field("cluster"),
            "must hold no spaces or control characters",
        ));
    }
    let af = o.field("authority");
    let authority = plain_text(&af, o.opt_str("authority")?.unwrap_or(&cluster), 256)?;
    let vf = o.field("verify_path");
    let verify_path = path_value(&vf, o.opt_str("verify_path")?.unwrap_or("/v1/keys/verify"))?;
    let rf = o.field("revocations_path");
    let revocations_path = match o.get("revocations_path") {
        None => Some("/v1/keys/revocations".to_string()),
        Some(Value::Bool(false)) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(path_value(&rf, s)?),
        Some(_) => return Err(err(&rf, "expected a path, \"\" or false")),
    };
    let timeout_ms = bounded(&mut o, "timeout_ms", 500, 1, 60_000)?;
    let poll_ms = bounded(&mut o, "revocation_poll_ms", 1000, 100, 3_600_000)?;
    let max_response_bytes =
        bounded(&mut o, "max_response_bytes", 65_536, 256, 4_194_304)? as usize;
    let retry_after_s = bounded(&mut o, "retry_after_s", 1, 1, 3600)?;
    let cache = CachePolicy {
        positive_ttl_ms: bounded(&mut o, "positive_ttl_s", 300, 1, 86_400)? * 1000,
        negative_ttl_ms: bounded(&mut o, "negative_ttl_s", 30, 1, 86_400)? * 1000,
        stale_ms: bounded(&mut o, "stale_ttl_s", 600, 0, 604_800)? * 1000,
        negative_entries: bounded(&mut o, "negative_cache_entries", 10_000, 16, 1_000_000)?
            as usize,
        recheck_ms: bounded(&mut o, "shared_recheck_ms", 250, 0, 60_000)?,
    };
    let on_failure = match o.opt_str("on_failure")? {
        None | Some("closed") => OnFailure::Closed,
        Some("open") => OnFailure::Open,
        Some(other) => {
            return Err(err(
                &o.field("on_failure"),
                format!("`{other}` is not one of closed, open"),
            ))
        }
    };
    o.finish(strict, w)?;
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
    })
}

fn parse_key(
    mut o: Obj<'_>,
    strict: bool,
    w: &mut Vec<String>,
) -> Result<(crate::hash::Digest32, KeyEntry), ConfigError> {
    let sha_field = o.field("sha256");
    let sha = o.str_req("sha256")?;
    let digest = parse_hex32(sha).ok_or_else(|| {
        err(
            &sha_field,
            "expected 64 hex digits: the SHA-256 of the key (printf %s KEY | sha256sum)",
        )
    })?;
    let id_field = o.field("id");
    let key_id = plain_text(&id_field, o.str_req("id")?, 128)?;
    let user = o.opt_str("user")?.map(str::to_string);
    let subject = o
        .opt_str("subject")?
        .map(str::to_string)
        .or_else(|| user.clone())
        .unwrap_or_else(|| key_id.clone());
    let account = o.opt_str("account")?.unwrap_or("").to_string();
    let plan = o.opt_str("plan")?.unwrap_or("default").to_string();
    let scopes = o.strings("scopes")?.unwrap_or_default();
    let expires_at = match o.get("expires_at") {
        Some(v) => Some(parse_time(&o.field("expires_at"), v)?),
        None => None,
    };
    let disabled = o.bool("disabled", false)?;
    let rate_limit = match o.child("rate_limit")? {
        Some(c) => Some(parse_limit(c, strict, w)?),
        None => None,
    };
    let mut resources = Vec::new();
    if let Some(mut r) = o.child("resources")? {
        let names: Vec<&String> = r.map.keys().collect();
        for name in names {
            let f = r.field(name);
            let vals = match r.map.get(name) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>(),
                _ => None,
            }
            .ok_or_else(|| err(&f, "expected an array of strings"))?;
            resources.push((name.clone(), vals));
        }
        r.seen.clear();
        // every field of `resources` is a resource name: nothing is unknown there.
    }
    for (f, s) in [
        ("subject", &subject),
        ("account", &account),
        ("plan", &plan),
    ] {
        if !s.is_empty() {
            plain_text(&o.field(f), s, 256)?;
        }
    }
    for (i, s) in scopes.iter().enumerate() {
        plain_text(&format!("{}[{i}]", o.field("scopes")), s, 128)?;
    }
    o.finish(strict, w)?;
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

/// Parses and checks the whole configuration. `warnings` collects one line per ignored field.
pub fn parse(bytes: &[u8], warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let root: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(bytes).map_err(|e| err("", format!("not valid JSON: {e}")))?
    };
    let mut o = Obj::new(String::new(), &root)?;
    let strict = o.bool("strict", false)?;
    let w = warnings;

    let realm_field = o.field("realm");
    let realm = plain_text(&realm_field, o.opt_str("realm")?.unwrap_or("keygate"), 128)?;
    let pb_field = o.field("problem_base");
    let problem_base = o
        .opt_str("problem_base")?
        .unwrap_or("urn:keygate:problem:")
        .to_string();
    if problem_base.is_empty() || problem_base.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err(&pb_field, "must be a URI prefix without spaces"));
    }
    let access_log_state = o.bool("access_log_state", true)?;
    let shared_prefix = o
        .opt_str("shared_prefix")?
        .unwrap_or("keygate.v1")
        .to_string();

    let mut credentials = CredentialConfig::default();
    let mut hide_credentials = true;
    if let Some(mut c) = o.child("credentials")? {
        credentials.basic = c.bool("basic", true)?;
        credentials.bearer = c.bool("bearer", true)?;
        if let Some(names) = c.strings("api_key_headers")? {
            let f = c.field("api_key_headers");
            credentials.api_key_headers = names
                .iter()
                .map(|n| header_name(&f, n))
                .collect::<Result<_, _>>()?;
            if credentials
                .api_key_headers
                .iter()
                .any(|n| n == "authorization")
            {
                return Err(err(
                    &f,
                    "`authorization` is configured by `basic` and `bearer`",
                ));
            }
            if credentials.api_key_headers.len() > 16 {
                return Err(err(&f, "at most 16 header names"));
            }
        }
        match c.get("query_param") {
            None => {}
            Some(Value::Bool(false)) => credentials.query_param = None,
            Some(Value::String(s)) if s.is_empty() => credentials.query_param = None,
            Some(Value::String(s)) => {
                let ok = s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok {
                    return Err(err(
                        &c.field("query_param"),
                        "must be unreserved characters (A-Z a-z 0-9 - . _ ~)",
                    ));
                }
                credentials.query_param = Some(s.clone());
            }
            Some(_) => {
                return Err(err(
                    &c.field("query_param"),
                    "expected a parameter name, \"\" or false",
                ))
            }
        }
        if let Some(n) = c.opt_u64("max_bytes")? {
            if !(16..=16_384).contains(&n) {
                return Err(err(&c.field("max_bytes"), "must be 16 to 16384"));
            }
            credentials.max_bytes = n as usize;
        }
        hide_credentials = c.bool("hide_from_upstream", true)?;
        c.finish(strict, w)?;
    }
    if !credentials.basic
        && !credentials.bearer
        && credentials.api_key_headers.is_empty()
        && credentials.query_param.is_none()
    {
        return Err(err("credentials", "every credential style is switched off"));
    }

    let mut keys = KeyStore::default();
    if let Some(arr) = o.opt_array("keys")? {
        for (i, v) in arr.iter().enumerate() {
            let path = format!("keys[{i}]");
            let (digest, entry) = parse_key(Obj::new(path.clone(), v)?, strict, w)?;
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
    if let Some(mut r) = o.child("rate_limit")? {
        if let Some(mut plans) = r.child("plans")? {
            let names: Vec<&String> = plans.map.keys().collect();
            for name in names {
                let f = plans.field(name);
                plain_text(&f, name, 128)?;
                if let Some(v) = plans.map.get(name.as_str()) {
                    let p = parse_policy(f, name, v, strict, w)?;
                    rate.plans.push((name.clone(), p));
                }
            }
            plans.seen.clear();
        }
        if let Some(v) = r.get("default") {
            rate.default = parse_policy(r.field("default"), "default", v, strict, w)?;
        }
        rate.reset = match r.opt_str("reset")? {
            None | Some("seconds") => Some(ResetStyle::Seconds),
            Some("unix") => Some(ResetStyle::Unix),
            Some(other) => {
                return Err(err(
                    &r.field("reset"),
                    format!("`{other}` is not one of seconds, unix"),
                ))
            }
        };
        rate.ietf_headers = r.bool("ietf_headers", false)?;
        rate.headers = r.bool("headers", true)?;
        r.finish(strict, w)?;
    }

    let mut identity_headers = IdentityHeaders {
        key_id: "x-keygate-key-id".into(),
        subject: "x-keygate-subject".into(),
        account: "x-keygate-account".into(),
        plan: "x-keygate-plan".into(),
        scopes: "x-keygate-scopes".into(),
    };
    if let Some(mut ih) = o.child("identity_headers")? {
        for (name, slot) in [
            ("key_id", &mut identity_headers.key_id),
            ("subject", &mut identity_headers.subject),
            ("account", &mut identity_headers.account),
            ("plan", &mut identity_headers.plan),
            ("scopes", &mut identity_headers.scopes),
        ] {
            match ih.get(name) {
                None => {}
                // not sent, and a client's header of the default name is left alone
                Some(Value::Bool(false)) => slot.clear(),
                Some(_) => {
                    let s = ih.opt_str(name)?.unwrap_or_default();
                    *slot = header_name(&ih.field(name), s)?;
                }
            }
        }
        ih.finish(strict, w)?;
    }
    for n in identity_headers
        .names()
        .into_iter()
        .filter(|n| !n.is_empty())
    {
        // headers keygate reads or Envoy manages cannot carry identity: a client could forge them
        let reserved = [
            "authorization",
            "x-request-id",
            "host",
            "content-length",
            "transfer-encoding",
            "x-keygate-fail-open",
        ];
        if reserved.contains(&n)
            || credentials.api_key_headers.iter().any(|h| h == n)
            || n.starts_with(':')
        {
            return Err(err(
                "identity_headers",
                format!("`{n}` is a header keygate reads or Envoy manages"),
            ));
        }
    }

    let mut routes = Vec::new();
    if let Some(arr) = o.opt_array("routes")? {
        for (i, v) in arr.iter().enumerate() {
            routes.push(parse_route(
                Obj::new(format!("routes[{i}]"), v)?,
                strict,
                w,
            )?);
        }
    }
    let key_service = match o.child("key_service")? {
        Some(c) => Some(parse_key_service(c, strict, w)?),
        None => None,
    };
    let auth_throttle = match o.get("auth_throttle") {
        Some(Value::Bool(false)) => None,
        None | Some(Value::Bool(true)) => Some(ThrottleConfig {
            failures: 100,
            window_s: 60,
            clients: 10_000,
        }),
        Some(v) => {
            let mut t = Obj::new("auth_throttle".into(), v)?;
            let failures = bounded(&mut t, "failures", 100, 1, 1_000_000)?;
            let window_s = bounded(&mut t, "window_s", 60, 1, 86_400)?;
            let clients = bounded(&mut t, "clients", 10_000, 16, 1_000_000)? as usize;
            t.finish(strict, w)?;
            Some(ThrottleConfig {
                failures,
                window_s,
                clients,
            })
        }
    };
    let fleet = match o.child("fleet")? {
        Some(f) => Some(parse_fleet(f, &rate, strict, w)?),
        None => None,
    };
    let da_field = o.field("default_access");
    let da = o.opt_str("default_access")?;
    let default_access = parse_access(&da_field, da, Access::Key)?;

    o.finish(strict, w)?;
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
        fleet,
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
fn parse_fleet(
    mut o: Obj<'_>,
    rate: &RateConfig,
    strict: bool,
    w: &mut Vec<String>,
) -> Result<FleetConfig, ConfigError> {
    let cluster = o.str_req("cluster")?.to_string();
    if cluster.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(err(
            &o.field("cluster"),
            "must hold no spaces or control characters",
        ));
    }
    let af = o.field("authority");
    let authority = plain_text(&af, o.opt_str("authority")?.unwrap_or(&cluster), 256)?;
    let df = o.field("domain");
    let domain = plain_text(&df, o.opt_str("domain")?.unwrap_or("keygate"), 128)?;
    if domain.is_empty() {
        return Err(err(&df, "must not be empty"));
    }
    let timeout_ms = bounded(&mut o, "timeout_ms", 200, 1, 60_000)?;
    let retry_after_s = bounded(&mut o, "retry_after_s", 1, 1, 3600)?;
    let on_failure = match o.opt_str("on_failure")? {
        None | Some("local") => OnEngineFailure::Local,
        Some("closed") => OnEngineFailure::Closed,
        Some(other) => {
            return Err(err(
                &o.field("on_failure"),
                format!("`{other}` is not one of local, closed"),
            ))
        }
    };
    let dm = o.field("default");
    let default = parse_mode(&dm, o.opt_str("default")?, Mode::Local)?;
    let mut plans = Vec::new();
    if let Some(mut p) = o.child("plans")? {
        let names: Vec<&String> = p.map.keys().collect();
        for name in names {
            let f = p.field(name);
            let known =
                name == "key" || name == "default" || rate.plans.iter().any(|(n, _)| n == name);
            if !known {
                return Err(err(
                    &f,
                    "names no plan of rate_limit.plans (nor `key` or `default`)",
                ));
            }
            let mode = match p.map.get(name.as_str()) {
                Some(Value::String(s)) => parse_mode(&f, Some(s), Mode::Local)?,
                _ => return Err(err(&f, "expected \"local\", \"request\" or \"leased\"")),
            };
            plans.push((name.clone(), mode));
        }
        p.seen.clear();
    }
    let mut lease = LeasePolicy {
        max: 100,
        percent: 10,
        ttl_ms: 1000,
    };
    if let Some(mut l) = o.child("lease")? {
        lease.max = bounded(&mut l, "max", 100, 1, 1_000_000)?;
        lease.percent = bounded(&mut l, "percent", 10, 1, 100)?;
        lease.ttl_ms = bounded(&mut l, "ttl_ms", 1000, 10, 3_600_000)?;
        l.finish(strict, w)?;
    }
    o.finish(strict, w)?;
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
