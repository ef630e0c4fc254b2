//! `routes`, `default_access`, `paths` and `bodies`: which rule a request falls under, how its
//! path is read, and how the bodies owner checks read are held.

use serde::Deserialize;

use super::fields::{bounded, err, join, method_token, required, scope_token, Bound};
use super::ConfigError;
use crate::path::PathPolicy;
use crate::route::{Access, Owner, OwnerBody, OwnerSource, PathMatch, Route};

/// `bodies`: the bodies keygate holds until an owner check has read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bodies held at once per worker; past it a new one is refused (503), never one forgotten.
    pub max_held: usize,
    /// A body still incomplete this long after keygate began to hold it ends its request (408).
    pub timeout_ms: u64,
}

/// `bodies.max_held`: bodies a worker holds at once.
pub const MAX_HELD: Bound = Bound::new(4096, 1, 65_536);
/// `bodies.timeout_ms`: how long a body may take to arrive whole.
pub const BODY_TIMEOUT_MS: Bound = Bound::new(60_000, 100, 3_600_000);

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_held: MAX_HELD.default as usize,
            timeout_ms: BODY_TIMEOUT_MS.default,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RawRoute {
    pub(super) exact: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) access: Option<String>,
    pub(super) scopes: Option<Vec<String>>,
    pub(super) owner: Option<RawOwner>,
}

#[derive(Deserialize)]
pub(super) struct RawOwner {
    pub(super) query: Option<String>,
    pub(super) path_segment: Option<u64>,
    pub(super) resource: Option<String>,
    pub(super) status: Option<u64>,
    pub(super) body: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawPaths {
    pub(super) case_sensitive: Option<bool>,
    pub(super) allow_semicolon: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawBodies {
    pub(super) max_held: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
}

pub(super) fn parse_owner(path: &str, o: RawOwner) -> Result<Owner, ConfigError> {
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

pub(super) fn parse_access(
    field: &str,
    s: Option<&str>,
    default: Access,
) -> Result<Access, ConfigError> {
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

pub(super) fn parse_route(path: &str, r: RawRoute) -> Result<Route, ConfigError> {
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

/// The methods that only read. Any token is an HTTP method (`PROPPATCH`, `PURGE`, an API's own),
/// so a rule that lists others lets every method it does not list skip it.
pub(super) const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// Warns about a rule that lists write methods with no catch-all after it: every other method
/// (one the operator did not think of) skips the rule and falls to a later route or
/// `default_access`. The safe pattern lists the read methods and catches the rest with a route
/// for the same path without `methods`.
pub(super) fn warn_method_lists(routes: &[Route], w: &mut Vec<String>) {
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

/// `routes`, in order (the first that matches a request is its rule).
pub(super) fn build_routes(
    raw: Option<Vec<RawRoute>>,
    w: &mut Vec<String>,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    for (i, r) in raw.unwrap_or_default().into_iter().enumerate() {
        routes.push(parse_route(&format!("routes[{i}]"), r)?);
    }
    warn_method_lists(&routes, w);
    Ok(routes)
}

/// `paths`: how paths are read (semicolons refused, letter case ignored, unless set).
pub(super) fn build_paths(p: Option<RawPaths>) -> (PathPolicy, bool) {
    let p = p.unwrap_or_default();
    (
        PathPolicy {
            allow_semicolon: p.allow_semicolon.unwrap_or(false),
        },
        p.case_sensitive.unwrap_or(false),
    )
}

/// `bodies`
pub(super) fn build_bodies(b: Option<RawBodies>) -> Result<BodyLimits, ConfigError> {
    let b = b.unwrap_or_default();
    Ok(BodyLimits {
        max_held: bounded("bodies.max_held", b.max_held, MAX_HELD)? as usize,
        timeout_ms: bounded("bodies.timeout_ms", b.timeout_ms, BODY_TIMEOUT_MS)?,
    })
}
