//! `fleet`: limits counted by a rate-limit engine that every replica asks.

use serde::Deserialize;

use super::fields::{bounded, cluster_and_authority, err, join, plain_text, Bound};
use super::ConfigError;
use crate::fleet::{FleetConfig, LeasePolicy, Mode, OnEngineFailure};
use crate::json::{Entries, Loose};
use crate::ratelimit::RateConfig;

/// `fleet.domain`: the engine's domain (Limitador's namespace).
pub const DOMAIN: &str = "keygate";
/// `fleet.timeout_ms`: an engine call's deadline, counted from the request's arrival.
pub const TIMEOUT_MS: Bound = Bound::new(200, 1, 60_000);
/// `fleet.retry_after_s`: `Retry-After` of a 503 `rate-limit-unavailable`.
pub const RETRY_AFTER_S: Bound = Bound::new(1, 1, 3600);
/// `fleet.lease.max`: the most tokens one lease takes.
pub const LEASE_MAX: Bound = Bound::new(100, 1, 1_000_000);
/// `fleet.lease.percent`: a lease's share of what the engine last said remains.
pub const LEASE_PERCENT: Bound = Bound::new(10, 1, 100);
/// `fleet.lease.ttl_ms`: how long a lease lives when the engine names no reset.
pub const LEASE_TTL_MS: Bound = Bound::new(1000, 10, 3_600_000);

#[derive(Deserialize)]
pub(super) struct RawFleet {
    pub(super) cluster: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) retry_after_s: Option<u64>,
    pub(super) on_failure: Option<String>,
    pub(super) default: Option<String>,
    pub(super) plans: Option<Entries<Loose>>,
    pub(super) lease: Option<RawLease>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawLease {
    pub(super) max: Option<u64>,
    pub(super) percent: Option<u64>,
    pub(super) ttl_ms: Option<u64>,
}

pub(super) fn parse_mode(field: &str, v: Option<&str>, default: Mode) -> Result<Mode, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => Mode::parse(s)
            .ok_or_else(|| err(field, format!("`{s}` is not one of local, request, leased"))),
    }
}

/// `fleet`: the rate-limit engine and which policies it counts (see `crate::fleet`).
pub(super) fn parse_fleet(o: RawFleet, rate: &RateConfig) -> Result<FleetConfig, ConfigError> {
    let (cluster, authority) = cluster_and_authority("fleet", o.cluster, o.authority)?;
    let domain = plain_text("fleet.domain", o.domain.as_deref().unwrap_or(DOMAIN), 128)?;
    let timeout_ms = bounded("fleet.timeout_ms", o.timeout_ms, TIMEOUT_MS)?;
    let retry_after_s = bounded("fleet.retry_after_s", o.retry_after_s, RETRY_AFTER_S)?;
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
    let l = o.lease.unwrap_or_default();
    let lease = LeasePolicy {
        max: bounded("fleet.lease.max", l.max, LEASE_MAX)?,
        percent: bounded("fleet.lease.percent", l.percent, LEASE_PERCENT)?,
        ttl_ms: bounded("fleet.lease.ttl_ms", l.ttl_ms, LEASE_TTL_MS)?,
    };
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
