//! Route policy: which requests need a key, which scopes, and which resources the key must own.
//!
//! Routes are matched on method (ignoring case) and on the canonical path (`path::canonical`:
//! decoded, slashes merged, ambiguous spellings refused before any route is looked at), first
//! match wins. Prefixes are plain string prefixes, as in Envoy's own route `prefix`; letter case
//! counts only with `paths.case_sensitive` (the default assumes an upstream that may ignore it).

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

/// What an owner check does with a request that carries a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerBody {
    /// keygate reads the body (up to [`crate::body::MAX_OWNER_BODY`] bytes): a form's fields and
    /// a JSON object's top-level members are what PHP, Rack, Rails, Express and others merge into
    /// the same parameters as the query, so every spelling of the owner parameter there must name
    /// an owned resource too; what could be read otherwise is refused (400 `request-ambiguous`,
    /// see `crate::body`). The default.
    Read,
    /// Refused (400 `request-ambiguous`), whatever it holds.
    Reject,
    /// Let through unread: the operator states the upstream never takes the owner from a body.
    Unchecked,
}

/// The values the cookies give for the owner parameter `name`, read as the frameworks that merge
/// cookies into request parameters read them (PHP's `$_REQUEST` under its default
/// `variables_order`, classic ASP.NET's `Request[...]`): pairs split at `;` and `,` and at `;`
/// alone, names as the
/// query's (`query::lenient_is`), each value literally, percent-decoded (with `+` as a space, as
/// PHP's `urldecode`), and without surrounding quotes (Go, Python). Every one must be owned.
pub fn owner_values_in_cookies(name: &str, cookies: &[u8]) -> Vec<Vec<u8>> {
    let want = query::lenient_name(name.as_bytes());
    let mut out = Vec::new();
    // split at `;` and `,` (PHP 5, classic ASP.NET), and at `;` alone (PHP 7+, Go, Python): a
    // value holding `,` is another value to the second
    let either = cookies.split(|&c| c == b';' || c == b',').chain(
        cookies
            .split(|&c| c == b';')
            .filter(|pair| pair.contains(&b',')),
    );
    for pair in either {
        let (n, v) = match pair.iter().position(|&c| c == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if !query::lenient_is(n.trim_ascii(), &want) {
            continue;
        }
        let v = v.trim_ascii();
        let unquoted = v
            .strip_prefix(b"\"")
            .and_then(|x| x.strip_suffix(b"\""))
            .unwrap_or(v);
        let spaced: Vec<u8> = v
            .iter()
            .map(|&c| if c == b'+' { b' ' } else { c })
            .collect();
        out.push(v.to_vec());
        out.push(unquoted.to_vec());
        for d in [query::percent_decode(v), query::percent_decode(&spaced)] {
            out.push(d.unwrap_or_else(|| b"\0undecodable".to_vec()));
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub source: OwnerSource,
    /// The verdict's resource list to check against.
    pub resource: String,
    /// 403 or 404 (404 hides that the resource exists).
    pub status: u32,
    pub body: OwnerBody,
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
    /// `path` is the canonical path (`path::canonical`, no query). Methods compare ignoring ASCII
    /// case: over HTTP/2 a client can send `post`, and many frameworks read it as `POST`.
    pub fn matches(&self, method: &[u8], path: &[u8], case_sensitive: bool) -> bool {
        if !self.methods.is_empty()
            && !self
                .methods
                .iter()
                .any(|m| m.as_bytes().eq_ignore_ascii_case(method))
        {
            return false;
        }
        let eq = |a: &[u8], b: &[u8]| {
            if case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        match &self.matcher {
            PathMatch::Exact(p) => eq(path, p.as_bytes()),
            PathMatch::Prefix(p) => path.len() >= p.len() && eq(&path[..p.len()], p.as_bytes()),
        }
    }
}

pub fn find<'a>(
    routes: &'a [Route],
    method: &[u8],
    path: &[u8],
    case_sensitive: bool,
) -> Option<&'a Route> {
    routes
        .iter()
        .find(|r| r.matches(method, path, case_sensitive))
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
///
/// `path` is the canonical path (decoded), `query` the raw query string. The query is read the
/// way every upstream may read it (`query::params_either`, `query::lenient_is`): every spelling
/// of the parameter an upstream may take for it (`_ID`, ` _id`, `_id[]`, `;_id=`, `_id%00x`)
/// must name an owned resource, under both decodings of `+` (literal, and a space as in forms),
/// and split at `;` or not (`_id=a1;x` is `a1` to Rack, `a1;x` to PHP).
pub fn check_owner(
    owner: &Owner,
    path: &[u8],
    query: Option<&[u8]>,
    body: Option<&[Vec<u8>]>,
    id: &Identity,
) -> Ownership {
    let owned = id.resource(&owner.resource).unwrap_or(&[]);
    let has = |v: &[u8]| owned.iter().any(|o| o.as_bytes() == v);
    match &owner.source {
        OwnerSource::Query(name) => {
            let want = query::lenient_name(name.as_bytes());
            // what the body gives for it (`body::owner_values`) must be owned as well
            let from_body = body.unwrap_or_default();
            if from_body.iter().any(|v| !has(v)) {
                return Ownership::NotOwned;
            }
            let mut named = !from_body.is_empty();
            for p in query.into_iter().flat_map(query::params_either) {
                if !query::name_is(p.name, name) && !query::lenient_is(p.name, &want) {
                    continue;
                }
                named = true;
                let raw = p.value.unwrap_or(b"");
                let literal = query::percent_decode(raw);
                let owned_here = match &literal {
                    Some(v) if has(v) => {
                        // `+` read as a space (form decoding) must name an owned resource too
                        !raw.contains(&b'+')
                            || query::percent_decode(
                                &raw.iter()
                                    .map(|&c| if c == b'+' { b' ' } else { c })
                                    .collect::<Vec<u8>>(),
                            )
                            .is_some_and(|v| has(&v))
                    }
                    _ => false,
                };
                if !owned_here {
                    return Ownership::NotOwned;
                }
            }
            if named {
                Ownership::Owned
            } else {
                Ownership::Unnamed
            }
        }
        OwnerSource::PathSegment(n) => match path.split(|&c| c == b'/').nth(*n) {
            Some(seg) if !seg.is_empty() => {
                if has(seg) {
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
    use crate::query;

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

    fn owns(o: &Owner, full: &[u8]) -> Ownership {
        let (base, q) = query::split_path(full);
        let canon = crate::path::canonical(
            base,
            &crate::path::PathPolicy {
                allow_semicolon: false,
            },
        )
        .unwrap();
        check_owner(o, &canon, q, None, &id())
    }

    fn find<'a>(rs: &'a [Route], m: &[u8], p: &[u8]) -> Option<&'a Route> {
        super::find(rs, m, p, true)
    }

    #[test]
    fn methods_match_in_any_case_and_paths_per_policy() {
        let rs = [route(PathMatch::Prefix("/Admin".into()), &["POST"])];
        assert!(rs[0].matches(b"post", b"/Admin/x", true));
        assert!(rs[0].matches(b"PoSt", b"/Admin", true));
        assert!(!rs[0].matches(b"POST", b"/admin/x", true));
        assert!(rs[0].matches(b"POST", b"/ADMIN/x", false));
        assert!(!rs[0].matches(b"GET", b"/Admin", false));
        assert!(!rs[0].matches(b"POST", b"/Adm", false));
        let e = route(PathMatch::Exact("/health".into()), &[]);
        assert!(e.matches(b"GET", b"/HEALTH", false) && !e.matches(b"GET", b"/HEALTH", true));
    }

    #[test]
    fn owner_parameter_in_every_spelling_an_upstream_reads() {
        let q = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "aggregator".into(),
            status: 404,
            body: OwnerBody::Read,
        };
        for p in [
            "/e?_id=a1&_ID=victim",
            "/e?_id=a1&%20_id=victim",
            "/e?_id=a1&+_id=victim",
            "/e?_id=a1;_id=victim",
            "/e?x=1;_id=victim&_id=a1",
            "/e?_id[]=a1&_id[]=victim",
            "/e?_id=a1&_id[0]=victim",
            "/e?_id=a1&%5Fid=victim",
            "/e?_id=a1&.id=victim",
            "/e?_id=a1&_id%00=victim",
            "/e?_id=a1&_id%00x=victim",
            "/e?_id=a1&%00_id=victim",
            "/e?_id=a1&_%C4%B1d=victim",
            "/e?_ID=victim",
            "/e?_id=a+2",
            // PHP decodes what decodes and cuts at the NUL: `_id`
            "/e?_id=a1&_id%00%zz=victim",
            "/e?_id=a1&_id%00%=victim",
            // `a1;x` to readers that split at `&` only (PHP, Go, Python, Node)
            "/e?_id=a1;x",
            "/e?_id=a1;_id=a1",
        ] {
            assert_eq!(owns(&q, p.as_bytes()), Ownership::NotOwned, "{p}");
        }
        for p in ["/e?_id=a1&_ID=a1", "/e?_id[]=a1", "/e?_id=a%202&x=_id"] {
            assert_eq!(owns(&q, p.as_bytes()), Ownership::Owned, "{p}");
        }
        assert_eq!(owns(&q, b"/e?_idx=victim&id=v"), Ownership::Unnamed);
    }

    #[test]
    fn cookies_that_name_the_owner_are_read_every_way() {
        let v = |c: &str| owner_values_in_cookies("_id", c.as_bytes());
        assert!(v("session=abc; theme=dark").is_empty());
        let got = v("session=abc; _id=a%202, _ID=\"a1\"");
        assert!(got.contains(&b"a 2".to_vec()) && got.contains(&b"a1".to_vec()));
        assert!(
            got.contains(&b"\"a1\"".to_vec()),
            "the quoted value as PHP keeps it"
        );
        assert!(v("_id%00=x").contains(&b"x".to_vec()));
        // PHP 7+ splits cookies at `;` only: `a1,x` is one value to it
        assert!(v("_id=a1,x").contains(&b"a1,x".to_vec()));
        assert!(v("_id=a1, theme=dark").contains(&b"a1, theme=dark".to_vec()));
        assert!(v(" _id=a+2").contains(&b"a 2".to_vec()));
        let q = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "aggregator".into(),
            status: 404,
            body: OwnerBody::Read,
        };
        let c = v("_id=zz");
        assert_eq!(
            check_owner(&q, b"/e", Some(b"_id=a1"), Some(&c), &id()),
            Ownership::NotOwned
        );
        let c = v("_id=a1");
        assert_eq!(
            check_owner(&q, b"/e", None, Some(&c), &id()),
            Ownership::Owned
        );
        // a quoted owned value reads as `"a1"` to PHP: not owned
        let c = v("_id=\"a1\"");
        assert_eq!(
            check_owner(&q, b"/e", None, Some(&c), &id()),
            Ownership::NotOwned
        );
    }

    #[test]
    fn owner_values_from_a_body_must_be_owned_too() {
        let q = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "aggregator".into(),
            status: 404,
            body: OwnerBody::Read,
        };
        let owned = [b"a1".to_vec()];
        let victim = [b"a1".to_vec(), b"zz".to_vec()];
        assert_eq!(
            check_owner(&q, b"/e", Some(b"_id=a1"), Some(&owned), &id()),
            Ownership::Owned
        );
        assert_eq!(
            check_owner(&q, b"/e", None, Some(&owned), &id()),
            Ownership::Owned
        );
        assert_eq!(
            check_owner(&q, b"/e", Some(b"_id=a1"), Some(&victim), &id()),
            Ownership::NotOwned
        );
        assert_eq!(
            check_owner(&q, b"/e", None, Some(&[]), &id()),
            Ownership::Unnamed
        );
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
            body: OwnerBody::Read,
        };
        assert_eq!(owns(&q, b"/e?_id=a1&x=1"), Ownership::Owned);
        assert_eq!(owns(&q, b"/e?_id=a%202"), Ownership::Owned);
        assert_eq!(owns(&q, b"/e?_id=zz"), Ownership::NotOwned);
        assert_eq!(owns(&q, b"/e?_id=a1&_id=zz"), Ownership::NotOwned);
        assert_eq!(owns(&q, b"/e?x=1"), Ownership::Unnamed);
        assert_eq!(owns(&q, b"/e"), Ownership::Unnamed);
        let s = Owner {
            source: OwnerSource::PathSegment(3),
            resource: "aggregator".into(),
            status: 403,
            body: OwnerBody::Reject,
        };
        assert_eq!(owns(&s, b"/v1/aggregators/a1?x"), Ownership::Owned);
        assert_eq!(owns(&s, b"/v1/aggregators/a9"), Ownership::NotOwned);
        assert_eq!(owns(&s, b"/v1/aggregators"), Ownership::Unnamed);
        let other = Owner {
            source: OwnerSource::Query("_id".into()),
            resource: "nope".into(),
            status: 404,
            body: OwnerBody::Reject,
        };
        assert_eq!(owns(&other, b"/e?_id=a1"), Ownership::NotOwned);
    }
}
