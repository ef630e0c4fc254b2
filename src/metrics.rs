//! Every metric keygate keeps, typed: a new decision, failure kind or event does not compile
//! until it has its metric (the host finds a metric's id by the enum's index, never by its
//! name). Names are `keygate.*` in Envoy's stats (`wasmcustom.keygate.*`), summed over workers,
//! from fixed sets: no per-key series. The per-plan 429 counters
//! (`keygate.ratelimit.rejected.<plan>`) are the one family named by the configuration.

use crate::contract::ServiceFailure;
use crate::fleet::EngineFailure;
use crate::gate::Outcome;
use crate::problem::Kind;

/// A counter or a histogram (proxy-wasm `MetricType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Histogram,
}

macro_rules! metrics {
    ($($variant:ident = $name:literal $(($ty:ident))?,)*) => {
        /// A metric with a fixed name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Metric {
            $($variant,)*
        }

        impl Metric {
            /// Every metric, in index order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            pub fn kind(self) -> Type {
                match self {
                    $(Metric::$variant => metrics!(@type $($ty)?),)*
                }
            }
        }
    };
    (@type) => { Type::Counter };
    (@type Histogram) => { Type::Histogram };
}

metrics! {
    Allowed = "keygate.requests.allowed",
    Public = "keygate.requests.public",
    FailOpen = "keygate.requests.fail_open",
    CredentialMissing = "keygate.requests.credential_missing",
    CredentialMalformed = "keygate.requests.credential_malformed",
    CredentialTooLarge = "keygate.requests.credential_too_large",
    CredentialConflict = "keygate.requests.credential_conflict",
    CredentialInvalid = "keygate.requests.credential_invalid",
    CredentialExpired = "keygate.requests.credential_expired",
    CredentialRevoked = "keygate.requests.credential_revoked",
    CredentialDisabled = "keygate.requests.credential_disabled",
    InsufficientScope = "keygate.requests.insufficient_scope",
    ResourceForbidden = "keygate.requests.resource_forbidden",
    RouteClosed = "keygate.requests.route_closed",
    RequestAmbiguous = "keygate.requests.request_ambiguous",
    BodyUnchecked = "keygate.requests.body_unchecked",
    RateLimited = "keygate.requests.rate_limited",
    AuthThrottled = "keygate.requests.auth_throttled",
    KeyServiceUnavailable = "keygate.requests.key_service_unavailable",
    RateLimitUnavailable = "keygate.requests.rate_limit_unavailable",
    Internal = "keygate.requests.internal",
    CacheHit = "keygate.cache.hit",
    CacheMemoHit = "keygate.cache.memo_hit",
    CacheNegativeHit = "keygate.cache.negative_hit",
    CacheMiss = "keygate.cache.miss",
    CacheStaleServed = "keygate.cache.stale_served",
    KeyServiceCalls = "keygate.keyservice.calls",
    KeyServiceDispatchFailed = "keygate.keyservice.failure.dispatch",
    KeyServiceTimeout = "keygate.keyservice.failure.timeout",
    KeyServiceStatus = "keygate.keyservice.failure.status",
    KeyServiceNoResponse = "keygate.keyservice.failure.no_response",
    KeyServiceBodyTooLarge = "keygate.keyservice.failure.body_too_large",
    KeyServiceBadBody = "keygate.keyservice.failure.bad_body",
    KeyServiceLatency = "keygate.keyservice.latency_ms" (Histogram),
    RevocationPolls = "keygate.revocations.polls",
    RevocationsMarked = "keygate.revocations.marked",
    RevocationFailures = "keygate.revocations.failures",
    FleetCalls = "keygate.fleet.calls",
    FleetLeaseCalls = "keygate.fleet.lease.calls",
    FleetLeaseTokens = "keygate.fleet.lease.tokens",
    FleetOverLimit = "keygate.fleet.over_limit",
    FleetDeniedRemembered = "keygate.fleet.denied_remembered",
    FleetFallbackLocal = "keygate.fleet.fallback_local",
    FleetLeaseStranded = "keygate.fleet.lease.stranded",
    FleetTimeout = "keygate.fleet.failure.timeout",
    FleetStatus = "keygate.fleet.failure.status",
    FleetGrpc = "keygate.fleet.failure.grpc",
    FleetUnavailable = "keygate.fleet.failure.unavailable",
    FleetBadBody = "keygate.fleet.failure.bad_body",
    FleetDispatchFailed = "keygate.fleet.failure.dispatch",
    FleetStoreFailed = "keygate.fleet.failure.store",
    FleetLatency = "keygate.fleet.latency_ms" (Histogram),
    SlotsVerdictsEvicted = "keygate.slots.verdicts.evicted",
    SlotsVerdictsFull = "keygate.slots.verdicts.full",
    SlotsVerdictsUnsure = "keygate.slots.verdicts.unsure",
    SlotsStatesReused = "keygate.slots.states.reused",
    SlotsStatesFull = "keygate.slots.states.full",
}

impl Metric {
    /// Its place in `ALL` (and in the host's table of metric ids).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The counter of a request's outcome.
    pub fn of_outcome(o: Outcome) -> Metric {
        match o {
            Outcome::Allowed => Metric::Allowed,
            Outcome::Public => Metric::Public,
            Outcome::FailOpen => Metric::FailOpen,
            Outcome::Denied(k) => match k {
                Kind::CredentialMissing => Metric::CredentialMissing,
                Kind::CredentialMalformed => Metric::CredentialMalformed,
                Kind::CredentialTooLarge => Metric::CredentialTooLarge,
                Kind::CredentialConflict => Metric::CredentialConflict,
                Kind::CredentialInvalid => Metric::CredentialInvalid,
                Kind::CredentialExpired => Metric::CredentialExpired,
                Kind::CredentialRevoked => Metric::CredentialRevoked,
                Kind::CredentialDisabled => Metric::CredentialDisabled,
                Kind::InsufficientScope => Metric::InsufficientScope,
                Kind::ResourceForbidden => Metric::ResourceForbidden,
                Kind::RouteClosed => Metric::RouteClosed,
                Kind::RequestAmbiguous => Metric::RequestAmbiguous,
                Kind::BodyUnchecked => Metric::BodyUnchecked,
                Kind::RateLimited => Metric::RateLimited,
                Kind::AuthThrottled => Metric::AuthThrottled,
                Kind::KeyServiceUnavailable => Metric::KeyServiceUnavailable,
                Kind::RateLimitUnavailable => Metric::RateLimitUnavailable,
                Kind::Internal => Metric::Internal,
            },
        }
    }

    /// The counter of a key-service failure.
    pub fn of_service_failure(f: ServiceFailure) -> Metric {
        match f {
            ServiceFailure::Status(504) => Metric::KeyServiceTimeout,
            ServiceFailure::Status(_) => Metric::KeyServiceStatus,
            ServiceFailure::NoResponse => Metric::KeyServiceNoResponse,
            ServiceFailure::BodyTooLarge => Metric::KeyServiceBodyTooLarge,
            ServiceFailure::BadBody => Metric::KeyServiceBadBody,
        }
    }

    /// The counter of a rate-limit engine's failure.
    pub fn of_engine_failure(f: EngineFailure) -> Metric {
        match f {
            EngineFailure::Timeout => Metric::FleetTimeout,
            EngineFailure::Status => Metric::FleetStatus,
            EngineFailure::Grpc => Metric::FleetGrpc,
            EngineFailure::Unavailable => Metric::FleetUnavailable,
            EngineFailure::BadBody => Metric::FleetBadBody,
            EngineFailure::Dispatch => Metric::FleetDispatchFailed,
            EngineFailure::Store => Metric::FleetStoreFailed,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_in_keygate_namespace() {
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("keygate.")
            && n.bytes()
                .all(|c| c.is_ascii_lowercase() || c == b'.' || c == b'_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::COUNT);
    }

    #[test]
    fn index_is_the_place_in_all() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
        }
    }

    #[test]
    fn every_outcome_has_its_own_counter() {
        let mut outcomes = vec![Outcome::Allowed, Outcome::Public, Outcome::FailOpen];
        outcomes.extend(Kind::ALL.iter().map(|k| Outcome::Denied(*k)));
        let mut ms: Vec<usize> = outcomes
            .iter()
            .map(|o| Metric::of_outcome(*o).index())
            .collect();
        ms.sort_unstable();
        ms.dedup();
        assert_eq!(ms.len(), outcomes.len());
        assert!(outcomes
            .iter()
            .all(|o| Metric::of_outcome(*o).kind() == Type::Counter));
        // the kind's slug names its counter, so a dashboard can join them
        for k in Kind::ALL {
            let name = Metric::of_outcome(Outcome::Denied(k)).name();
            assert_eq!(
                name,
                format!("keygate.requests.{}", k.slug().replace('-', "_"))
            );
        }
    }

    #[test]
    fn every_engine_failure_has_its_own_fleet_counter() {
        use crate::fleet::EngineFailure as F;
        let all = [
            F::Timeout,
            F::Status,
            F::Grpc,
            F::Unavailable,
            F::BadBody,
            F::Dispatch,
            F::Store,
        ];
        for f in all {
            let name = Metric::of_engine_failure(f).name();
            assert_eq!(name, format!("keygate.fleet.failure.{}", f.as_str()));
        }
    }

    #[test]
    fn latencies_are_histograms() {
        let h: Vec<Metric> = Metric::ALL
            .iter()
            .copied()
            .filter(|m| m.kind() == Type::Histogram)
            .collect();
        assert_eq!(h, [Metric::KeyServiceLatency, Metric::FleetLatency]);
    }
}
