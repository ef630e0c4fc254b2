//! Route policy: which requests need a key, which scopes, and which resources the key must own.
//!
//! Routes are matched on method and path (without the query), first match wins. Prefixes are
//! plain string prefixes, as in Envoy's own route `prefix`; turn on the connection manager's
//! `normalize_path` and `merge_slashes` so `/a/../b` and `//b` cannot dodge a rule.

use crate::query;
use crate::verdict::Identity;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential needed (login, health checks, CORS preflight).
    Public,
    /// A valid key is needed (the default).
    Key,
    /// Nobody gets through.
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    Query(String),
    /// 1-based: in `/v1/aggregators/a1`, segment 3 is `a1`.
    PathSegment(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub source: OwnerSource,
    /// The verdict's resource list to check against.
    pub resource: String,
    /// 403 or 404 (404 hides that the resource exists).
    pub status: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Upper-case; empty matches every method.
    pub methods: Vec<String>,
    pub matcher: PathMatch,
    pub access: Access,
    pub scopes: Vec<String>,
    pub owner: Option<Owner>,
}

impl Route {
    pub fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.as_bytes() == method) {
            return false;
        }
        match &self.matcher {
            PathMatch::Exact(p) => path == p.as_bytes(),
            PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
        }
    }
}

pub fn find<'a>(routes: &'a [Route], method: &[u8], path: &[u8]) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(method, path))
}

/// The first required scope the identity lacks.
pub fn missing_scope<'a>(route: &'a Route, id: &Identity) -> Option<&'a str> {
    route
        .scopes
        .iter()
        .find(|s| !id.scopes.iter().any(|have| have == *s))
        .map(String::as_str)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ownership {
    Owned,
    /// The request does not name the resource at all.
    Unnamed,
    NotOwned,
}

/// Checks every value the request gives for the owner attribute against the identity's list.
pub fn check_owner(owner: &Owner, path: &[u8], id: &Identity) -> Ownership {
    let owned = id.resource(&owner.resource).unwrap_or(&[]);
    let is_owned = |raw: &[u8]| -> bool {
        query::percent_decode(raw)
            .is_some_and(|v| owned.iter().any(|o| o.as_bytes() == v.as_slice()))
    };
    let (base, q) = query::split_path(path);
    match &owner.source {
        OwnerSource::Query(name) => {
            let mut named = false;
            for p in q.map(query::params).into_iter().flatten() {
                if query::name_is(p.name, name) {
                    named = true;
                    if !is_owned(p.value.unwrap_or(b"")) {
                        return Ownership::NotOwned;
                    }
                }
            }
            if named {
                Ownership::Owned
            } else {
                Ownership::Unnamed
            }
        }
        OwnerSource::PathSegment(n) => match base.split(|&c| c == b'/').nth(*n) {
            Some(seg) if !seg.is_empty() => {
                if is_owned(seg) {
                    Ownership::Owned
                } else {
                    Ownership::NotOwned
                }
            }
            _ => Ownership::Unnamed,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            key_id: "k".into(),
            subject: "s".into(),
            account: "a".into(),
            plan: "p".into(),
            scopes: vec!["read".into()],
            expires_at: None,
            rate_limit: None,
            resources: vec![("aggregator".into(), vec!["a1".into(), "a 2".into()])],
        }
    }

    fn route(m: PathMatch, methods: &[&str]) -> Route {
        Route {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            matcher: m,
            access: Access::Public,
            scopes: vec![],
            owner: None,
        }
    }

    #[test]
    fn first_match_wins_on_method_and_path() {
        let rs = vec![
            route(PathMatch::Exact("/login".into()), &["POST"]),
            route(PathMatch::Prefix("/v1/".into()), &[]),
        ];
        assert_eq!(
            find(&rs, b"POST", b"/login").unwrap().matcher,
            rs[0].matcher
        );
        assert!(find(&rs, b"GET", b"/login").is_none());
        assert!(find(&rs, b"POST", b"/login/x").is_none());
        assert_eq!(find(&rs, b"GET", b"/v1/x").unwrap().matcher, rs[1].matcher);
    }

    #[test]
    fn ownership_by_query_and_segment() {
        let q = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "aggregator".into(),
            status: 404,
        };
        assert_eq!(check_owner(&q, b"/e?_id=a1&x=1", &id()), Ownership::Owned);
        assert_eq!(check_owner(&q, b"/e?_id=a%202", &id()), Ownership::Owned);
        assert_eq!(check_owner(&q, b"/e?_id=zz", &id()), Ownership::NotOwned);
        assert_eq!(
            check_owner(&q, b"/e?_id=a1&_id=zz", &id()),
            Ownership::NotOwned
        );
        assert_eq!(check_owner(&q, b"/e?x=1", &id()), Ownership::Unnamed);
        assert_eq!(check_owner(&q, b"/e", &id()), Ownership::Unnamed);
        let s = Owner {
            source: OwnerSource::PathSegment(3),
            resource: "aggregator".into(),
            status: 403,
        };
        assert_eq!(
            check_owner(&s, b"/v1/aggregators/a1?x", &id()),
            Ownership::Owned
        );
        assert_eq!(
            check_owner(&s, b"/v1/aggregators/a9", &id()),
            Ownership::NotOwned
        );
        assert_eq!(
            check_owner(&s, b"/v1/aggregators", &id()),
            Ownership::Unnamed
        );
        let other = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "nope".into(),
            status: 404,
        };
        assert_eq!(
            check_owner(&other, b"/e?_id=a1", &id()),
            Ownership::NotOwned
        );
    }
}
