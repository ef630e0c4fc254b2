//! `rate_limit`: plans, the default, and how limits are told to clients.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::fields::{err, join, log_token};
use super::ConfigError;
use crate::json::Entries;
use crate::ratelimit::{Algorithm, Limit, Policy, RateConfig, ResetStyle, Scope};
use crate::state_key::{self, Origin, Tier};

/// `window_s` of a plan or a key's own limit: the window its `requests` are counted in.
pub const WINDOW_S: u64 = 60;

#[derive(Deserialize)]
pub(super) struct RawRate {
    pub(super) plans: Option<Entries<RawPolicy>>,
    pub(super) default: Option<RawPolicy>,
    pub(super) reset: Option<String>,
    pub(super) ietf_headers: Option<bool>,
    pub(super) headers: Option<bool>,
}

/// A plan's policy: `"unlimited"` or an object.
pub(super) enum RawPolicy {
    Unlimited,
    Limited(RawPolicyFields),
}

#[derive(Deserialize)]
pub(super) struct RawPolicyFields {
    pub(super) requests: Option<u64>,
    pub(super) window_s: Option<u64>,
    pub(super) burst: Option<u64>,
    pub(super) per: Option<String>,
    pub(super) algorithm: Option<String>,
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

pub(super) fn parse_limit(
    path: &str,
    requests: Option<u64>,
    window_s: Option<u64>,
    burst: Option<u64>,
) -> Result<Limit, ConfigError> {
    let requests = requests.ok_or_else(|| err(&join(path, "requests"), "is required"))?;
    if requests == 0 || requests > 1_000_000_000 {
        return Err(err(&join(path, "requests"), "must be 1 to 1000000000"));
    }
    let window_s = window_s.unwrap_or(WINDOW_S);
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

pub(super) fn parse_scope(field: &str, s: Option<&str>) -> Result<Scope, ConfigError> {
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
pub(super) fn parse_policy(
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

/// `rate_limit`: the plans, the default, how limits are told. Without the section nothing is
/// limited.
pub(super) fn build_rate(
    r: Option<RawRate>,
    shared_prefix: &str,
) -> Result<RateConfig, ConfigError> {
    let mut rate = RateConfig {
        headers: true,
        ..RateConfig::default()
    };
    if let Some(r) = r {
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
        p.stem = state_key::stem(shared_prefix, Tier::Local, (p.origin, &p.name));
    }
    Ok(rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::{field_of, p};
    use super::*;

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
}
