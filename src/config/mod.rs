//! The plugin configuration: JSON in the filter's `configuration`, parsed and checked once.
//!
//! The JSON is decoded into `Raw*` structs (`#[derive(Deserialize)]`, every field optional), then
//! checked by hand into a [`Config`]: bounds, tokens, header names, dates, duplicates. One file
//! per section, each with its raw form, its checks, its defaults (named constants beside the
//! check that applies them) and its tests:
//!
//! | section | file |
//! |---|---|
//! | `credentials`, `identity_headers`, `auth_throttle` | [`credentials`] |
//! | `keys` | [`keys`] |
//! | `rate_limit` | [`rate`] |
//! | `routes`, `default_access`, `paths`, `bodies` | [`routes`] |
//! | `key_service` | [`key_service`] |
//! | `fleet` | [`fleet`] |
//! | `problems` | [`problems`] |
//! | the top level (`realm`, `problem_base`, `shared_prefix`, `access_log_state`, `strict`) | here |
//!
//! Errors name the field (`keys[2].sha256`) and the reason, in one line. Unknown fields are
//! warned about and ignored, so a control plane that adds a field does not take a listener down;
//! `"strict": true` refuses them instead. Every field, its default and bounds are documented for
//! operators in `envoy/config-reference.md`, which `tests/config_reference.rs` checks against
//! [`known_fields`].

mod credentials;
mod dupes;
mod fields;
mod fleet;
mod key_service;
mod keys;
mod problems;
mod rate;
mod routes;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::credential::CredentialConfig;
use crate::fleet::FleetConfig;
use crate::json::{self, Entries};
use crate::keystore::KeyStore;
use crate::path::PathPolicy;
use crate::problem::Dialects;
use crate::route::{Access, Route};
use crate::throttle::ThrottleConfig;

pub use self::credentials::IdentityHeaders;
pub use self::key_service::{KeyServiceConfig, OnFailure};
pub use self::routes::{BodyLimits, BODYLESS};
pub use crate::ratelimit::{Algorithm, Policy, RateConfig, ResetStyle};

use self::fields::{err, plain_text};

/// `realm`: the realm of every challenge (`WWW-Authenticate`).
pub const REALM: &str = "keygate";
/// `problem_base`: the start of every problem's `type` URI.
pub const PROBLEM_BASE: &str = "urn:keygate:problem:";
/// `shared_prefix`: the start of every shared-data key (bump its version to start afresh).
pub const SHARED_PREFIX: &str = "keygate.v1";

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
    credentials: Option<credentials::RawCredentials>,
    keys: Option<Vec<keys::RawKey>>,
    rate_limit: Option<rate::RawRate>,
    identity_headers: Option<credentials::RawIdentityHeaders>,
    routes: Option<Vec<routes::RawRoute>>,
    key_service: Option<key_service::RawKeyService>,
    auth_throttle: Option<credentials::RawThrottle>,
    paths: Option<routes::RawPaths>,
    problems: Option<Entries<problems::RawDialect>>,
    fleet: Option<fleet::RawFleet>,
    default_access: Option<String>,
    bodies: Option<routes::RawBodies>,
}

/// Parses and checks the whole configuration. `warnings` collects one line per ignored field.
pub fn parse(bytes: &[u8], warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let doc = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        dupes::check_duplicate_members(bytes)?;
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

/// The checked `Config` from the decoded JSON, section by section; `w` gets warnings about what
/// it means.
fn build(raw: RawConfig, w: &mut Vec<String>) -> Result<Config, ConfigError> {
    let realm = plain_text("realm", raw.realm.as_deref().unwrap_or(REALM), 128)?;
    let problem_base = raw.problem_base.unwrap_or_else(|| PROBLEM_BASE.to_string());
    if problem_base.is_empty() || problem_base.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("problem_base", "must be a URI prefix without spaces"));
    }
    let access_log_state = raw.access_log_state.unwrap_or(true);
    let shared_prefix = raw
        .shared_prefix
        .unwrap_or_else(|| SHARED_PREFIX.to_string());

    // sections in a fixed order: with several errors, the first of these is the one reported
    let (credentials, hide_credentials, malformed_status) =
        credentials::parse_credentials(raw.credentials)?;
    let (keys, key_plans) = keys::build_keys(raw.keys)?;
    let rate = rate::build_rate(raw.rate_limit, &shared_prefix)?;
    keys::check_key_plans(&key_plans, &rate)?;
    let identity_headers = credentials::parse_identity_headers(raw.identity_headers, &credentials)?;
    let routes = routes::build_routes(raw.routes, w)?;
    let key_service = raw
        .key_service
        .map(key_service::parse_key_service)
        .transpose()?;
    let auth_throttle = credentials::build_throttle(raw.auth_throttle)?;
    let (paths, case_sensitive_paths) = routes::build_paths(raw.paths);
    let method_rules = routes.iter().any(|r| !r.methods.is_empty());
    let problems = raw
        .problems
        .map(problems::parse_problems)
        .transpose()?
        .unwrap_or_default();
    let fleet = raw
        .fleet
        .map(|f| fleet::parse_fleet(f, &rate))
        .transpose()?;
    let default_access =
        routes::parse_access("default_access", raw.default_access.as_deref(), Access::Key)?;
    let bodies = routes::build_bodies(raw.bodies)?;

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
