//! `key_service`: the remote key service, its calls, its cache and what happens when it fails.

use serde::Deserialize;

use super::fields::{bounded, cluster_and_authority, err, join, path_value, Bound};
use super::ConfigError;
use crate::cache::CachePolicy;
use crate::json::Loose;

/// `key_service.verify_path`
pub const VERIFY_PATH: &str = "/v1/keys/verify";
/// `key_service.revocations_path` (`""` or `false`: no revocation feed)
pub const REVOCATIONS_PATH: &str = "/v1/keys/revocations";
/// `key_service.timeout_ms`: a call's deadline (Envoy answers 504 then).
pub const TIMEOUT_MS: Bound = Bound::new(500, 1, 60_000);
/// `key_service.revocation_poll_ms`: how often one worker polls the revocation feed.
pub const REVOCATION_POLL_MS: Bound = Bound::new(1000, 100, 3_600_000);
/// `key_service.max_response_bytes`: a larger answer is a failure of the service.
pub const MAX_RESPONSE_BYTES: Bound = Bound::new(65_536, 256, 4_194_304);
/// `key_service.retry_after_s`: `Retry-After` of a 503 `key-service-unavailable`.
pub const RETRY_AFTER_S: Bound = Bound::new(1, 1, 3600);
/// `key_service.positive_ttl_s`: how long a valid verdict is fresh.
pub const POSITIVE_TTL_S: Bound = Bound::new(300, 1, 86_400);
/// `key_service.negative_ttl_s`: how long a worker remembers a refusal.
pub const NEGATIVE_TTL_S: Bound = Bound::new(30, 1, 86_400);
/// `key_service.stale_ttl_s`: how long an expired verdict may serve while the service fails.
pub const STALE_TTL_S: Bound = Bound::new(600, 0, 604_800);
/// `key_service.negative_cache_entries`: refusals a worker remembers.
pub const NEGATIVE_CACHE_ENTRIES: Bound = Bound::new(10_000, 16, 1_000_000);
/// `key_service.shared_recheck_ms`: how often a worker reads the revocation log, so the longest
/// a revocation another worker marked takes to reach it.
pub const SHARED_RECHECK_MS: Bound = Bound::new(250, 0, 60_000);
/// `key_service.worker_cache_entries`: verdicts a worker keeps decoded (about 0.3 KB each).
pub const WORKER_CACHE_ENTRIES: Bound = Bound::new(4096, 16, 4_000_000);

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

#[derive(Deserialize)]
pub(super) struct RawKeyService {
    pub(super) cluster: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) verify_path: Option<String>,
    /// A path, `""` or `false`.
    pub(super) revocations_path: Option<Loose>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) revocation_poll_ms: Option<u64>,
    pub(super) max_response_bytes: Option<u64>,
    pub(super) retry_after_s: Option<u64>,
    pub(super) positive_ttl_s: Option<u64>,
    pub(super) negative_ttl_s: Option<u64>,
    pub(super) stale_ttl_s: Option<u64>,
    pub(super) negative_cache_entries: Option<u64>,
    pub(super) shared_recheck_ms: Option<u64>,
    pub(super) worker_cache_entries: Option<u64>,
    pub(super) on_failure: Option<String>,
    pub(super) key_format: Option<RawKeyFormat>,
}

#[derive(Deserialize)]
pub(super) struct RawKeyFormat {
    pub(super) prefixes: Option<Vec<String>>,
}

pub(super) fn parse_key_service(o: RawKeyService) -> Result<KeyServiceConfig, ConfigError> {
    let (cluster, authority) = cluster_and_authority("key_service", o.cluster, o.authority)?;
    let verify_path = path_value(
        "key_service.verify_path",
        o.verify_path.as_deref().unwrap_or(VERIFY_PATH),
    )?;
    let rf = "key_service.revocations_path";
    let revocations_path = match o.revocations_path {
        None => Some(REVOCATIONS_PATH.to_string()),
        Some(Loose::Bool(false)) => None,
        Some(Loose::Str(s)) if s.is_empty() => None,
        Some(Loose::Str(s)) => Some(path_value(rf, &s)?),
        Some(_) => return Err(err(rf, "expected a path, \"\" or false")),
    };
    let f = |name: &str| join("key_service", name);
    let timeout_ms = bounded(&f("timeout_ms"), o.timeout_ms, TIMEOUT_MS)?;
    let poll_ms = bounded(
        &f("revocation_poll_ms"),
        o.revocation_poll_ms,
        REVOCATION_POLL_MS,
    )?;
    let max_response_bytes = bounded(
        &f("max_response_bytes"),
        o.max_response_bytes,
        MAX_RESPONSE_BYTES,
    )? as usize;
    let retry_after_s = bounded(&f("retry_after_s"), o.retry_after_s, RETRY_AFTER_S)?;
    let cache = CachePolicy {
        positive_ttl_ms: bounded(&f("positive_ttl_s"), o.positive_ttl_s, POSITIVE_TTL_S)? * 1000,
        negative_ttl_ms: bounded(&f("negative_ttl_s"), o.negative_ttl_s, NEGATIVE_TTL_S)? * 1000,
        stale_ms: bounded(&f("stale_ttl_s"), o.stale_ttl_s, STALE_TTL_S)? * 1000,
        negative_entries: bounded(
            &f("negative_cache_entries"),
            o.negative_cache_entries,
            NEGATIVE_CACHE_ENTRIES,
        )? as usize,
        recheck_ms: bounded(
            &f("shared_recheck_ms"),
            o.shared_recheck_ms,
            SHARED_RECHECK_MS,
        )?,
        memo_entries: bounded(
            &f("worker_cache_entries"),
            o.worker_cache_entries,
            WORKER_CACHE_ENTRIES,
        )? as usize,
        hold_ms: timeout_ms.saturating_add(crate::cache::HOLD_MARGIN_MS),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::{field_of, p};
    use super::*;

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
}
