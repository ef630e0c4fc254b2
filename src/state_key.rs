//! Names of rate-limit state: the shared-data keys of local counts (`limiter`), of fleet leases
//! and remembered denials (`fleet`), and the owner value of the descriptor sent to a rate-limit
//! engine. A name says everything that gives its value meaning, bar what the value carries
//! itself (a local count's algorithm and limit parameters, see `limiter`):
//!
//! - the **policy**: a plan of `rate_limit.plans` by name (after its length, so no plan name can
//!   spell another's key), the `rate_limit.default` policy, or a key's own limit. Two plans of
//!   one account are two counts; a key moved to another plan is counted by that plan.
//! - the **kind of owner** and the owner: `k` a key (by id), `s` a subject, `a` an account.
//!
//! Names from outside (accounts, subjects, key ids: a key service may let its users pick them)
//! never meet an internal fallback: a key without an account, or whose subject is its own id
//! (the default subject), is counted as that key, under kind `k`, never as an account or subject
//! of that name. In a descriptor the engine's limits file reads the entry the plan's `per`
//! names, so a fallback keeps the entry and takes a value no outside name is sent as:
//! `~key:<id>`; an outside name starting with `~` is sent with one more `~`.

use std::borrow::Cow;

use crate::ratelimit::Scope;
use crate::verdict::Identity;

/// Where a limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A plan of `rate_limit.plans` (by name).
    Plan,
    /// `rate_limit.default`.
    Default,
    /// The key's own limit (`keys[].rate_limit`, the key service's `ratelimit`).
    Key,
}

/// Which state a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This Envoy's count (a token bucket or a rolling window).
    Local,
    /// A fleet lease and a remembered OVER_LIMIT.
    Lease,
}

/// The owner a limit counts under, by the policy's `per`: the kind it is counted as, and its
/// name. A key with no account, or whose subject is its own id, is counted as the key.
pub fn owner(id: &Identity, per: Scope) -> (Scope, &str) {
    match per {
        Scope::Subject if !id.subject.is_empty() && id.subject != id.key_id => {
            (Scope::Subject, &id.subject)
        }
        Scope::Account if !id.account.is_empty() => (Scope::Account, &id.account),
        _ => (Scope::Key, &id.key_id),
    }
}

/// The start of the shared-data keys of the state of a policy (its name is read for plans
/// only): `{prefix}:l:{len}:{plan}:` (a plan's name after its length in bytes: no name can spell
/// another's key), `…:l:d:` (`rate_limit.default`), `…:l:o:` (a key's own limit), `:f:` instead
/// of `:l:` for the fleet tier. Computed once per policy. Kept short: every byte of a key is
/// hashed and compared twice a request.
pub fn stem(prefix: &str, tier: Tier, (origin, policy): (Origin, &str)) -> String {
    let mut out = String::with_capacity(prefix.len() + policy.len() + 12);
    out.push_str(prefix);
    out.push_str(match tier {
        Tier::Local => ":l:",
        Tier::Lease => ":f:",
    });
    match origin {
        Origin::Plan => {
            out.push_str(itoa::Buffer::new().format(policy.len()));
            out.push(':');
            out.push_str(policy);
        }
        Origin::Default => out.push('d'),
        Origin::Key => out.push('o'),
    }
    out.push(':');
    out
}

/// Appends the key of `owner`'s state (counted as `kind`) under the policy of `stem` to `out`:
/// `{stem}{kind}:{owner}`.
pub fn push(out: &mut String, stem: &str, kind: Scope, owner: &str) {
    out.push_str(stem);
    out.push(kind.letter());
    out.push(':');
    out.push_str(owner);
}

/// The descriptor value naming the owner of a limit whose `per` is `per`, counted as `kind`
/// (`owner`): the name, or `~key:<id>` for a key counted in place of an absent account or
/// subject; a name starting with `~` gets one more.
pub fn descriptor_value<'a>(per: Scope, kind: Scope, owner: &'a str) -> Cow<'a, str> {
    if per != kind {
        Cow::Owned(format!("~key:{owner}"))
    } else if owner.starts_with('~') {
        Cow::Owned(format!("~{owner}"))
    } else {
        Cow::Borrowed(owner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn id(key_id: &str, subject: &str, account: &str) -> Identity {
        Identity {
            key_id: key_id.into(),
            subject: subject.into(),
            account: account.into(),
            plan: "p".into(),
            scopes: vec![],
            expires_at: None,
            rate_limit: None,
            resources: vec![],
        }
    }

    fn key(origin: (Origin, &str), kind: Scope, owner: &str) -> String {
        let mut s = String::new();
        push(&mut s, &stem("kg", Tier::Local, origin), kind, owner);
        s
    }

    #[test]
    fn fallbacks_are_counted_as_the_key() {
        let k1 = id("k1", "k1", "");
        assert_eq!(owner(&k1, Scope::Account), (Scope::Key, "k1"));
        assert_eq!(owner(&k1, Scope::Subject), (Scope::Key, "k1"));
        // another key naming its account (or subject) after k1's id: another count
        let k2 = id("k2", "k1", "k1");
        assert_eq!(owner(&k2, Scope::Account), (Scope::Account, "k1"));
        assert_eq!(owner(&k2, Scope::Subject), (Scope::Subject, "k1"));
        assert_ne!(
            key((Origin::Plan, "team"), owner(&k1, Scope::Account).0, "k1"),
            key((Origin::Plan, "team"), owner(&k2, Scope::Account).0, "k1")
        );
    }

    #[test]
    fn keys_name_the_policy_and_cannot_be_spelled_twice() {
        assert_eq!(
            key((Origin::Plan, "free"), Scope::Account, "acme"),
            "kg:l:4:free:a:acme"
        );
        assert_eq!(
            key((Origin::Default, "default"), Scope::Key, "k"),
            "kg:l:d:k:k"
        );
        assert_eq!(key((Origin::Key, "key"), Scope::Key, "k"), "kg:l:o:k:k");
        // a plan name holding the separator, an owner holding it: still two keys
        assert_ne!(
            key((Origin::Plan, "p:a"), Scope::Account, "x"),
            key((Origin::Plan, "p"), Scope::Account, "a:x")
        );
        // a plan named `default` or `key` is not the default policy or a key's own limit
        assert_ne!(
            key((Origin::Plan, "default"), Scope::Key, "k"),
            key((Origin::Default, "default"), Scope::Key, "k")
        );
        let mut lease = String::new();
        let st = stem("kg", Tier::Lease, (Origin::Plan, "free"));
        push(&mut lease, &st, Scope::Account, "acme");
        assert_eq!(lease, "kg:f:4:free:a:acme");
    }

    #[test]
    fn descriptor_values_of_fallbacks_are_keygates_own() {
        assert_eq!(
            descriptor_value(Scope::Account, Scope::Account, "acme"),
            "acme"
        );
        assert_eq!(
            descriptor_value(Scope::Account, Scope::Key, "k1"),
            "~key:k1"
        );
        // an account that spells a fallback is sent escaped
        assert_eq!(
            descriptor_value(Scope::Account, Scope::Account, "~key:k1"),
            "~~key:k1"
        );
        assert_eq!(descriptor_value(Scope::Key, Scope::Key, "k1"), "k1");
    }

    proptest::proptest! {
        /// Two different (policy, kind, owner) never share a key; fallback and outside
        /// descriptor values never meet.
        #[test]
        fn names_are_injective(a in (0u8..3, "[a-z:~0-9]{0,6}", 0u8..3, "[a-z:~0-9]{0,6}"),
                               b in (0u8..3, "[a-z:~0-9]{0,6}", 0u8..3, "[a-z:~0-9]{0,6}")) {
            let origin = |o: u8| [Origin::Plan, Origin::Default, Origin::Key][o as usize];
            let kind = |k: u8| [Scope::Key, Scope::Subject, Scope::Account][k as usize];
            let norm = |(o, p, k, w): &(u8, String, u8, String)| {
                (*o, if *o == 0 { p.clone() } else { String::new() }, *k, w.clone())
            };
            let ka = key((origin(a.0), &a.1), kind(a.2), &a.3);
            let kb = key((origin(b.0), &b.1), kind(b.2), &b.3);
            proptest::prop_assert_eq!(ka == kb, norm(&a) == norm(&b));
            // one descriptor entry (per = account): a fallback for key a.3 vs an account b.3
            let fallback = descriptor_value(Scope::Account, Scope::Key, &a.3);
            let named = descriptor_value(Scope::Account, Scope::Account, &b.3);
            proptest::prop_assert_ne!(&fallback, &named);
            let (x, y) = (descriptor_value(Scope::Account, Scope::Account, &a.3), named);
            proptest::prop_assert_eq!(x == y, a.3 == b.3);
        }
    }
}
