//! `keys`: the embedded store, keys declared by their SHA-256.

use std::rc::Rc;

use serde::Deserialize;

use super::fields::{err, join, log_token, parse_time, plain_text, required, scope_token};
use super::rate::parse_limit;
use super::ConfigError;
use crate::hash::parse_hex32;
use crate::json::{Entries, Loose};
use crate::keystore::{KeyEntry, KeyStore};
use crate::ratelimit::RateConfig;
use crate::verdict::Identity;

#[derive(Deserialize)]
pub(super) struct RawKey {
    pub(super) id: Option<String>,
    sha256: Option<String>,
    pub(super) user: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) account: Option<String>,
    pub(super) plan: Option<String>,
    pub(super) scopes: Option<Vec<String>>,
    /// Unix seconds or an RFC 3339 UTC timestamp.
    pub(super) expires_at: Option<Loose>,
    pub(super) disabled: Option<bool>,
    pub(super) rate_limit: Option<RawLimit>,
    /// Every member is a resource name: nothing is unknown there.
    pub(super) resources: Option<Entries<Vec<String>>>,
}

#[derive(Deserialize)]
pub(super) struct RawLimit {
    pub(super) requests: Option<u64>,
    pub(super) window_s: Option<u64>,
    pub(super) burst: Option<u64>,
}

pub(super) fn parse_key(
    path: &str,
    k: RawKey,
) -> Result<(crate::hash::Digest32, KeyEntry), ConfigError> {
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

/// Every embedded key's plan must be declared when anything is limited: a key naming a plan
/// the table lacks would fall to the default, or be unlimited without one, so a typo would be
/// an unlimited key. A key naming no plan needs a `default`.
pub(super) fn check_key_plans(
    plans: &[Option<String>],
    rate: &RateConfig,
) -> Result<(), ConfigError> {
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

/// `keys`: the embedded store, and each key's plan as written (`None`: the default), checked by
/// [`check_key_plans`] once the plans are known.
pub(super) fn build_keys(
    raw: Option<Vec<RawKey>>,
) -> Result<(KeyStore, Vec<Option<String>>), ConfigError> {
    let mut keys = KeyStore::default();
    let mut key_plans = Vec::new();
    let Some(arr) = raw else {
        return Ok((keys, key_plans));
    };
    // key id -> its index: duplicates found in linear time (a scan per key was quadratic)
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
    Ok((keys, key_plans))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::{p, SHA};
    use crate::ratelimit::{ResetStyle, Scope};

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
}
