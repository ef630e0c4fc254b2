//! Bodies a check reads before the upstream may act on them (`crate::body`): what the check
//! needs, the check itself when the body is in, the denials when it cannot be checked, and the
//! request trailers that end such a body.

use super::*;

/// A check left for the request's body: the owner check (`owner.body: "read"`), a method
/// override (`_method`) on a route whose rules depend on the method, or both. Holds what a denial
/// needs, bounded (the problem's `instance`, at most 256 bytes, not the path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyCheck {
    pub(super) route: usize,
    pub(super) reading: Reading,
    /// The route's owner check reads the body.
    pub(super) owner: bool,
    /// The query named an owned resource already (else the body must name one).
    pub(super) named_in_query: bool,
    /// A `_method` field in the body is refused (`Gate::method_matters`).
    pub(super) method: bool,
    pub(super) instance: String,
    pub(super) request_id: Option<Vec<u8>>,
    pub(super) rpc: Rpc,
}

/// Why a held body could not be checked: its request is refused (`Gate::body_unchecked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unchecked {
    /// Still incomplete `bodies.timeout_ms` after keygate began to hold it: 408.
    TimedOut,
    /// `bodies.max_held` bodies are held already: 503 with `Retry-After`.
    NoRoom,
    /// The upstream answered before the body was complete: 502 instead of its answer.
    UpstreamFirst,
    /// The host did not hand over the body: 500.
    Unreadable,
    /// Trailers that would change how the body reads (a `content-type` after the body): 400.
    Trailers,
}

impl Gate {
    /// The owner check on a request's body (at most `body::MAX_OWNER_BODY` + 1 bytes of it:
    /// longer is refused with 413). `None`: the body may go on to the upstream.
    pub fn check_body(
        &self,
        c: &BodyCheck,
        id: Option<&Rc<Identity>>,
        body: &[u8],
    ) -> Option<Decision> {
        let pb = || self.problems(c.instance.clone(), c.request_id.as_deref(), c.rpc);
        let ambiguous = |status, why: &str| {
            Some(self.deny(
                &pb(),
                Problem::new(status, Kind::RequestAmbiguous, why),
                vec![],
                id,
            ))
        };
        if body.len() > body::MAX_OWNER_BODY {
            return ambiguous(
                413,
                if c.owner {
                    "the body is longer than keygate reads on a route that checks which resource the request names"
                } else {
                    "the body is longer than keygate reads of a form POST on a route whose rules depend on the method"
                },
            );
        }
        if c.method {
            match body::owner_values("_method", c.reading, body) {
                Ok(v) if v.is_empty() => {}
                Ok(_) => return ambiguous(400, "the body overrides the request's method (_method), which routes here tell apart"),
                Err(why) => return ambiguous(400, why),
            }
        }
        if !c.owner {
            return None;
        }
        let owner = self.cfg.routes.get(c.route).and_then(|r| r.owner.as_ref());
        let (Some(owner), Some(id)) = (owner, id) else {
            return Some(self.body_unchecked(c, id, Unchecked::Unreadable));
        };
        let OwnerSource::Query(name) = &owner.source else {
            return Some(self.body_unchecked(c, Some(id), Unchecked::Unreadable));
        };
        let values = match body::owner_values(name, c.reading, body) {
            Ok(v) => v,
            Err(why) => return ambiguous(400, why),
        };
        let owned = route::check_owner(owner, b"", None, Some(&values), id);
        let detail = match owned {
            Ownership::NotOwned => format!("no such {} for this account", quoted(&owner.resource)),
            Ownership::Unnamed if !c.named_in_query => {
                format!("the request does not name a {}", quoted(&owner.resource))
            }
            _ => return None,
        };
        Some(self.deny(
            &pb(),
            Problem::new(owner.status, Kind::ResourceForbidden, &detail),
            vec![],
            Some(id),
        ))
    }

    /// Whether a method override could move a request for `canon` from the route it matches
    /// as a POST (`post`) to another: a method some route names, or one none names, matches
    /// another route (or none).
    pub(super) fn method_matters(&self, canon: &[u8], post: Option<usize>) -> bool {
        let cs = self.cfg.case_sensitive_paths;
        let moves = |m: &[u8]| self.cfg.routes.iter().position(|r| r.matches(m, canon, cs)) != post;
        if moves(b"\0unnamed") {
            return true;
        }
        for r in &self.cfg.routes {
            for m in &r.methods {
                if moves(m.as_bytes()) {
                    return true;
                }
            }
        }
        false
    }

    /// The method-override check a form POST's body needs (`body::override_reading`).
    pub(super) fn method_check(
        &self,
        route: Option<usize>,
        reading: Reading,
        path: &[u8],
        request_id: Option<&[u8]>,
        rpc: Rpc,
    ) -> BodyCheck {
        BodyCheck {
            route: route.unwrap_or_default(),
            reading,
            owner: false,
            named_in_query: false,
            method: true,
            instance: instance_of(path),
            request_id: request_id.map(<[u8]>::to_vec),
            rpc,
        }
    }

    /// The denial of a request whose held body could not be checked.
    pub fn body_unchecked(
        &self,
        c: &BodyCheck,
        id: Option<&Rc<Identity>>,
        why: Unchecked,
    ) -> Decision {
        let pb = self.problems(c.instance.clone(), c.request_id.as_deref(), c.rpc);
        let (status, detail, headers) = match why {
            Unchecked::TimedOut => (
                408,
                "the body did not arrive in time: keygate checks it before the upstream may act on the request",
                vec![],
            ),
            Unchecked::NoRoom => (
                503,
                "keygate holds too many bodies for checking right now; retry shortly",
                vec![("retry-after".to_string(), "1".to_string())],
            ),
            Unchecked::UpstreamFirst => (
                502,
                "the upstream answered before keygate had checked the request's body",
                vec![],
            ),
            Unchecked::Unreadable => (500, "keygate could not read the request's body", vec![]),
            Unchecked::Trailers => (
                400,
                "the request's trailers would change how it reads (content-type, content-encoding, a method override, a cookie)",
                vec![],
            ),
        };
        let kind = if why == Unchecked::Trailers {
            Kind::RequestAmbiguous
        } else {
            Kind::BodyUnchecked
        };
        self.deny(&pb, Problem::new(status, kind, detail), headers, id)
    }

    /// Request trailers keygate acts on: the ones to remove before the upstream (identity
    /// headers and the fail-open marker in every spelling, and with `hide_from_upstream` the
    /// credential carriers, as in the headers: an upstream that merges trailers into headers,
    /// such as Apache httpd's `MergeTrailers`, would read them), and whether one would change how
    /// a held request reads (`content-type`, `content-encoding`, a method override, a `cookie`
    /// naming parameters).
    pub fn trailers<'a>(&self, pairs: &[(&'a str, &[u8])]) -> (Vec<&'a str>, bool) {
        let idh = self.cfg.identity_headers.names();
        let c = &self.cfg.credentials;
        let mut remove = Vec::new();
        let mut changes_body = false;
        for &(n, v) in pairs {
            let dashed = n.replace('_', "-");
            let d = dashed.as_str();
            let carrier = self.cfg.hide_credentials
                && (c.api_key_headers.iter().any(|h| h == d)
                    || (d == "authorization" && credential::is_our_scheme(c, v)));
            if idh.contains(&d) || d == FAIL_OPEN_HEADER || carrier {
                if !remove.contains(&n) {
                    remove.push(n);
                }
            } else if matches!(
                d,
                "content-type"
                    | "content-encoding"
                    | "content-length"
                    | "transfer-encoding"
                    // a cookie merged into the headers is a parameter to PHP's $_REQUEST
                    | "cookie"
            ) || is_method_override(d)
            {
                changes_body = true;
            }
        }
        (remove, changes_body)
    }
}

/// How the body of a request on an owner route reads, from its `content-type` and
/// `content-encoding` headers (`body::reading`).
pub(super) fn body_reading(headers: &[(&str, &[u8])]) -> Result<Reading, &'static str> {
    body::reading(
        &all(headers, "content-type"),
        &all(headers, "content-encoding"),
    )
}

/// How a POST's body is read for a `_method` field (`body::override_reading`).
pub(super) fn override_reading(headers: &[(&str, &[u8])]) -> Result<Option<Reading>, &'static str> {
    body::override_reading(
        &all(headers, "content-type"),
        &all(headers, "content-encoding"),
    )
}

fn all<'a>(headers: &[(&str, &'a [u8])], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|&&(n, _)| n == name)
        .map(|&(_, v)| v)
        .collect()
}
