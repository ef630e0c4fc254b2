//! The decision for one request: route policy, credential, verdict, scopes, ownership, rate
//! limit, and what reaches the upstream. Pure: the host hands in headers, time and a store.
//!
//! Order: identity headers from the client are always removed; the route decides whether a
//! credential is needed; a credential is parsed (400 on malformed/conflicting input, 401 when
//! missing); the verdict comes from a store (401 when refused); scopes (403), ownership (403/404)
//! and a check on the body (its owner, a `_method` in a form: `Gate::before_body`, the request's
//! headers going on first) are checked before the rate limiter, so a request refused for those
//! spends no token; then the bucket (429). Carriers are hidden and identity headers set only for
//! a request let on.
//!
//! Split by concern: this module holds the decision (both phases); `bodies` the checks on bodies;
//! `replies` builds denials (problems, challenges); `rate` is the local rate-limit tier and its
//! headers; `fleet` decides from a rate-limit engine's answer; `whole` the whole decision in one
//! call; `tests` the unit tests.

use std::rc::Rc;

use crate::body::{self, Reading};
use crate::config::{Algorithm, Config, ResetStyle, BODYLESS};
use crate::credential::{self, Carriers, CredError, Credential, Style};
use crate::limiter;
use crate::problem::{instance_of, Extra, Kind, ProblemBuilder, Reply, Rpc};
use crate::query;
use crate::ratelimit::{self, RateDecision, RateError, Scope};
use crate::route::{self, Access, OwnerBody, OwnerSource, Ownership, Route};
use crate::state_key::{self, Origin, Tier};
use crate::store::SharedStore;
use crate::verdict::{Identity, Refusal, Verdict};

mod bodies;
mod fleet;
mod rate;
mod replies;
mod whole;
use replies::Problem;

use bodies::{body_reading, override_reading};
pub use bodies::{BodyCheck, Unchecked};
pub use fleet::Target;
pub use rate::{IetfRate, LimitOf, RateHeaders};
pub use whole::{decide, decide_with_body};

/// Marks a request let through by `on_failure: open` while the key service was failing.
pub const FAIL_OPEN_HEADER: &str = "x-keygate-fail-open";

/// What became of a request: a new outcome is a compile error wherever outcomes are told apart
/// (metrics, the throttle), not a silent `other`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Allowed,
    Public,
    FailOpen,
    Denied(Kind),
}

impl Outcome {
    /// `allowed`, `public`, `fail-open`, or the problem slug (the access log's `decision=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Public => "public",
            Outcome::FailOpen => "fail-open",
            Outcome::Denied(k) => k.slug(),
        }
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What the access log learns about a request (never the secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFields {
    /// `allowed`, `public`, or the problem slug of the denial.
    pub decision: Outcome,
    /// Who, when the credential was verified (key id, account and plan go to the access log).
    pub identity: Option<Rc<Identity>>,
}

impl LogFields {
    fn of(decision: Outcome, identity: Option<&Rc<Identity>>) -> Self {
        LogFields {
            decision,
            identity: identity.cloned(),
        }
    }

    pub fn key_id(&self) -> &str {
        self.identity.as_deref().map_or("", |i| i.key_id.as_str())
    }

    pub fn account(&self) -> &str {
        self.identity.as_deref().map_or("", |i| i.account.as_str())
    }

    pub fn plan(&self) -> &str {
        self.identity.as_deref().map_or("", |i| i.plan.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// Request headers to remove (forged identity headers, hidden credential carriers).
    pub remove: Vec<String>,
    /// Request headers to set besides identity (the fail-open marker).
    pub set: Vec<(String, String)>,
    /// The verified identity, sent upstream in the configured identity headers.
    pub identity: Option<Rc<Identity>>,
    /// A new `:path` (the credential parameter removed).
    pub path: Option<Vec<u8>>,
    /// Rate-limit headers to add to the upstream's response.
    pub rate: Option<RateHeaders>,
    pub log: LogFields,
    /// The owner check still to run on the body ([`Gate::check_body`]): the request goes on,
    /// its body held until it is in and checked.
    pub body: Option<BodyCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Reply, LogFields),
}

impl Decision {
    pub fn log(&self) -> &LogFields {
        match self {
            Decision::Allow(a) => &a.log,
            Decision::Deny(_, l) => l,
        }
    }
}

/// A request that needs a verdict before it can be decided.
#[derive(Clone, Debug)]
pub struct Pending {
    pub credential: Credential,
    carriers: Carriers,
    route: Option<usize>,
    pub(crate) path: Vec<u8>,
    /// The client's `x-request-id` as sent: checked (`printable_id`) only if a problem is built.
    pub(crate) request_id: Option<Vec<u8>>,
    /// Identity / API-key headers the client sent (to remove).
    strip: Vec<String>,
    /// How the client reads a denial (gRPC, gRPC-Web or HTTP).
    rpc: Rpc,
    /// The route's owner check reads the body (`owner.body: "read"`), this way.
    body_check: Option<Reading>,
    /// A form POST on a route whose rules depend on the method: its body is read for `_method`.
    method_scan: bool,
    /// The request's cookies, on a route whose owner is a query parameter (PHP's `$_REQUEST`
    /// and classic ASP.NET's `Request[...]` merge cookies into the parameters).
    cookies: Option<Vec<u8>>,
}

pub enum Step {
    Done(Decision),
    Verify(Pending),
}

pub struct Gate {
    pub cfg: Config,
    /// The rate-limit entry's shared-data key is built here, reused across requests.
    bucket_key: std::cell::Cell<String>,
    /// The start of the local state keys of keys' own limits (`state_key::stem`).
    key_stem: String,
    /// A bucket's or a rolling window's new value is built here, reused across requests.
    value_buf: std::cell::Cell<Vec<u8>>,
    /// The rest of a slotted step's scratch (`limiter::take_in`).
    slot_bufs: std::cell::Cell<crate::limiter::Bufs>,
    /// The shared-data tables (verdicts, local counts) of this configuration's prefix.
    pub tables: crate::slots::Tables,
}

fn quoted(s: &str) -> String {
    // Only fixed ASCII phrases and config-checked text reach here; quotes are dropped defensively.
    s.chars().filter(|&c| c != '"' && c != '\\').collect()
}

impl Gate {
    /// A gate whose tables are its own (seeded at random unless the configuration names a seed):
    /// for tests and tools. In Envoy, [`Gate::with_tables`] with the prefix's shared tables.
    pub fn new(cfg: Config) -> Self {
        let tables = crate::slots::own(&cfg.shared_prefix, &cfg.slots);
        Gate::with_tables(cfg, tables)
    }

    pub fn with_tables(cfg: Config, tables: crate::slots::Tables) -> Self {
        let key_stem = state_key::stem(&cfg.shared_prefix, Tier::Local, (Origin::Key, "key"));
        Gate {
            cfg,
            key_stem,
            bucket_key: std::cell::Cell::new(String::new()),
            value_buf: std::cell::Cell::new(Vec::new()),
            slot_bufs: std::cell::Cell::new(crate::limiter::Bufs::default()),
            tables,
        }
    }

    /// The identity headers for the upstream: (configured name, value).
    pub fn identity_headers<'a>(
        &'a self,
        id: &'a Identity,
    ) -> [(&'a str, std::borrow::Cow<'a, str>); 5] {
        let ih = &self.cfg.identity_headers;
        let scopes = match id.scopes.as_slice() {
            [one] => std::borrow::Cow::Borrowed(one.as_str()),
            many => std::borrow::Cow::Owned(many.join(" ")),
        };
        [
            (ih.key_id.as_str(), id.key_id.as_str().into()),
            (ih.subject.as_str(), id.subject.as_str().into()),
            (ih.account.as_str(), id.account.as_str().into()),
            (ih.plan.as_str(), id.plan.as_str().into()),
            (ih.scopes.as_str(), scopes),
        ]
    }

    /// Phase one from the headers alone: whether a body follows is read from `content-length`
    /// and `transfer-encoding` (the host knows better: [`Gate::begin_request`]).
    pub fn begin(&self, headers: &[(&str, &[u8])]) -> Step {
        let has_body = headers.iter().any(|&(n, v)| {
            (n == "content-length" && v.iter().any(|&c| c != b'0')) || n == "transfer-encoding"
        });
        self.begin_request(headers, has_body)
    }

    /// Phase one: everything that needs no verdict. `headers` have lower-case names;
    /// `has_body`: the request carries a body (the headers did not end the stream).
    pub fn begin_request(&self, headers: &[(&str, &[u8])], has_body: bool) -> Step {
        let mut method: &[u8] = b"";
        let mut path: &[u8] = b"/";
        let mut request_id = None;
        let mut rpc = Rpc::Http;
        let mut strip: Vec<String> = Vec::new();
        let mut ambiguous: Option<&'static str> = None;
        let idh = self.cfg.identity_headers.names();
        for &(name, value) in headers {
            match name {
                ":method" => method = value,
                ":path" => path = value,
                // kept only when it could be echoed (at most 128 bytes): a huge one is not copied
                "x-request-id" => request_id = (value.len() <= 128).then_some(value),
                "content-type" => rpc = Rpc::of(value),
                n => {
                    // identity headers and the fail-open marker are keygate's to set, never the
                    // client's; API-key headers present are noted so only they get removed
                    let ours = idh.contains(&n)
                        || n == FAIL_OPEN_HEADER
                        || (self.cfg.hide_credentials
                            && self.cfg.credentials.api_key_headers.iter().any(|h| h == n));
                    if ours {
                        if !strip.iter().any(|s| s == n) {
                            strip.push(n.to_string());
                        }
                    } else if n.contains('_') {
                        // CGI, WSGI, PHP and Rack read `x_keygate_key_id` as `x-keygate-key-id`
                        if let Some(why) = self.underscored(n, &mut strip) {
                            ambiguous = Some(why);
                        }
                    } else if self.cfg.method_rules && is_method_override(n) {
                        ambiguous = Some(
                            "the request overrides its method (X-HTTP-Method-Override and the like), which routes here tell apart",
                        );
                    }
                }
            }
        }
        let (raw_path, raw_query) = query::split_path(path);
        // the problem builder (and its `instance` string) only on a denial
        let pb = || self.problems(instance_of(path), request_id, rpc);
        let ambiguous_reply = |detail: &str| {
            Step::Done(self.deny(
                &pb(),
                Problem::new(400, Kind::RequestAmbiguous, detail),
                vec![],
                None,
            ))
        };
        let canon = match crate::path::canonical(raw_path, &self.cfg.paths) {
            Ok(c) => c,
            Err(why) => return ambiguous_reply(why),
        };
        let route_idx = self
            .cfg
            .routes
            .iter()
            .position(|r| r.matches(method, &canon, self.cfg.case_sensitive_paths));
        let route = route_idx.and_then(|i| self.cfg.routes.get(i));
        let access = route.map_or(self.cfg.default_access, |r| r.access);

        if access != Access::Closed {
            if self.cfg.method_rules && raw_query.is_some_and(|q| has_lenient_param(q, b"_method"))
            {
                ambiguous = Some(
                    "the request overrides its method (_method), which routes here tell apart",
                );
            }
            if let Some(why) = ambiguous {
                return ambiguous_reply(why);
            }
        }
        // an owner route reads the body the upstream may take the owner from (or refuses it)
        let mut body_check = None;
        if let (true, Some(owner)) = (has_body, route.and_then(|r| r.owner.as_ref())) {
            match (owner.body, &owner.source) {
                (OwnerBody::Reject, _) => {
                    return ambiguous_reply(
                        "this route checks which resource the request names and takes no body: send the request without one",
                    )
                }
                (OwnerBody::Read, OwnerSource::Query(_)) => {
                    // decided from the headers: what reaches the upstream before the body is read
                    if BODYLESS.iter().any(|m| m.as_bytes().eq_ignore_ascii_case(method)) {
                        return ambiguous_reply("a GET, HEAD, OPTIONS, DELETE or TRACE request carries a body on a route that checks which resource it names: upstreams disagree whether to read it; send it without one");
                    }
                    match body_reading(headers) {
                        Ok(r) => body_check = Some(r),
                        Err(why) => return ambiguous_reply(why),
                    }
                }
                // a path segment names the resource; `unchecked`: the operator's word
                _ => {}
            }
        }

        // a form POST may name another method in its body (`_method`: Rack, Laravel, Symfony,
        // Spring, Express turn it into that method): read where that could move it to another
        // route (the upstream acts on the method the body names)
        let mut method_scan = None;
        if has_body
            && access != Access::Closed
            && self.cfg.method_rules
            && method.eq_ignore_ascii_case(b"POST")
            && self.method_matters(&canon, route_idx)
        {
            match override_reading(headers) {
                Ok(r) => method_scan = r,
                Err(why) => return ambiguous_reply(why),
            }
        }

        let cookies = match route.and_then(|r| r.owner.as_ref()) {
            Some(o) if matches!(o.source, OwnerSource::Query(_)) => cookie_header(headers),
            _ => None,
        };

        match access {
            Access::Closed => {
                return Step::Done(self.deny(
                    &pb(),
                    Problem::new(403, Kind::RouteClosed, "this route is closed"),
                    vec![],
                    None,
                ))
            }
            Access::Public => {
                let scan =
                    method_scan.map(|r| self.method_check(route_idx, r, path, request_id, rpc));
                return Step::Done(self.public(headers, path, strip, scan));
            }
            Access::Key => {}
        }

        let ex = match credential::extract(&self.cfg.credentials, headers, path) {
            Ok(ex) => ex,
            Err(e) => return Step::Done(self.credential_error(&pb(), e)),
        };
        let Some(credential) = ex.credential else {
            let detail = if ex.foreign_authorization {
                "the Authorization scheme is not accepted here; send an API key"
            } else {
                "this endpoint needs an API key"
            };
            let h = self.challenges(None);
            return Step::Done(self.deny(
                &pb(),
                Problem::new(401, Kind::CredentialMissing, detail),
                h,
                None,
            ));
        };
        Step::Verify(Pending {
            credential,
            carriers: ex.carriers,
            route: route_idx,
            path: path.to_vec(),
            request_id: request_id.map(<[u8]>::to_vec),
            strip,
            rpc,
            body_check,
            method_scan: method_scan.is_some(),
            cookies,
        })
    }

    /// A header spelled with underscores that upstreams read as one keygate sets or reads:
    /// identity headers and the fail-open marker are removed (added to `strip`); a credential
    /// header makes the request ambiguous (the reason is returned).
    fn underscored(&self, name: &str, strip: &mut Vec<String>) -> Option<&'static str> {
        let dashed = name.replace('_', "-");
        let d = dashed.as_str();
        if self.cfg.identity_headers.names().contains(&d) || d == FAIL_OPEN_HEADER {
            if !strip.iter().any(|s| s == name) {
                strip.push(name.to_string());
            }
            return None;
        }
        if self.cfg.credentials.api_key_headers.iter().any(|h| h == d) {
            return Some("a credential header is spelled with underscores");
        }
        if self.cfg.method_rules && is_method_override(d) {
            return Some(
                "the request overrides its method (X-HTTP-Method-Override and the like), which routes here tell apart",
            );
        }
        None
    }

    fn public(
        &self,
        headers: &[(&str, &[u8])],
        path: &[u8],
        mut strip: Vec<String>,
        body: Option<BodyCheck>,
    ) -> Decision {
        let mut new_path = None;
        if self.cfg.hide_credentials {
            let c = &self.cfg.credentials;
            for &(name, value) in headers {
                let carrier = c.api_key_headers.iter().any(|h| h == name)
                    || (name == "authorization" && credential::is_our_scheme(c, value));
                if carrier && !strip.iter().any(|s| s == name) {
                    strip.push(name.to_string());
                }
            }
            if let Some(p) = &c.query_param {
                if has_param(path, p) {
                    new_path = Some(query::strip_param(path, p));
                }
            }
        }
        Decision::Allow(Allow {
            remove: strip,
            path: new_path,
            log: LogFields::of(Outcome::Public, None),
            body,
            ..Default::default()
        })
    }

    /// The embedded store's verdict, or `None` when the key is not declared there.
    /// `secret_sha256`: the SHA-256 of the credential's secret.
    pub fn embedded_verdict(
        &self,
        p: &Pending,
        secret_sha256: &crate::hash::Digest32,
        now_s: u64,
    ) -> Option<Verdict> {
        match self.cfg.keys.verify(&p.credential, secret_sha256, now_s) {
            Verdict::Refused(Refusal::Unknown) if self.has_remote() => None,
            v => Some(v),
        }
    }

    /// Whether a key service is configured behind the embedded store.
    pub fn has_remote(&self) -> bool {
        self.cfg.key_service.is_some()
    }

    /// The key service failed and the operator opted into fail-open: the request goes upstream
    /// without identity, marked `x-keygate-fail-open`, credentials still hidden.
    pub fn fail_open(&self, p: Pending, reason: &str) -> Decision {
        let mut remove = p.strip;
        let path = self.hide_carriers(&p.carriers, &p.path, &mut remove);
        Decision::Allow(Allow {
            remove,
            set: vec![(FAIL_OPEN_HEADER.to_string(), reason.to_string())],
            identity: None,
            path,
            rate: None,
            log: LogFields::of(Outcome::FailOpen, None),
            body: None,
        })
    }

    /// Phase two: the verdict is known.
    pub fn finish(
        &self,
        p: Pending,
        verdict: Verdict,
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> Decision {
        match self.admit(p, verdict) {
            Ok(a) => self.limit_local(a, store, now_ns),
            Err(d) => d,
        }
    }

    /// The verdict, scopes and ownership: a denial, or a request left only with its rate limit
    /// (this Envoy's bucket: `limit_local`; or a fleet engine's, see `crate::fleet`).
    // the Err is the (rarer) denial, moved once: boxing would allocate on every denial
    #[allow(clippy::result_large_err)]
    pub fn admit(&self, p: Pending, verdict: Verdict) -> Result<Admitted, Decision> {
        // built only on a denial: the allowed path allocates no problem
        let problems = || self.problems(instance_of(&p.path), p.request_id.as_deref(), p.rpc);
        let presented_token = p.credential.style != Style::Basic;
        let id = match verdict {
            Verdict::Valid(id) => id,
            Verdict::Refused(r) => {
                let (kind, detail) = match r {
                    Refusal::Unknown => (Kind::CredentialInvalid, "the credential is not valid"),
                    Refusal::Expired => (Kind::CredentialExpired, "the credential has expired"),
                    Refusal::Revoked => {
                        (Kind::CredentialRevoked, "the credential has been revoked")
                    }
                    Refusal::Disabled => (Kind::CredentialDisabled, "the credential is disabled"),
                };
                let h = self.challenges(presented_token.then_some(("invalid_token", detail)));
                return Err(self.deny(&problems(), Problem::new(401, kind, detail), h, None));
            }
        };
        if !self.cfg.rate.declares(&id.plan) {
            // a plan this gateway does not know (a key service ahead of the config, or a
            // cached verdict of a plan since removed): never an unlimited key
            let (mut key_id, mut plan) = (String::new(), String::new());
            push_log_value(&mut key_id, &id.key_id);
            push_log_value(&mut plan, &id.plan);
            log::warn!("keygate: key {key_id} has plan {plan}, which rate_limit.plans does not declare (and there is no rate_limit.default): refused with 503");
            let retry = self.cfg.key_service.as_ref().map_or(1, |k| k.retry_after_s);
            return Err(self.deny(
                &problems(),
                Problem::new(
                    503,
                    Kind::KeyServiceUnavailable,
                    "the key's plan is not one this gateway declares",
                ),
                vec![("retry-after".to_string(), retry.to_string())],
                None,
            ));
        }

        let route: Option<&Route> = p.route.and_then(|i| self.cfg.routes.get(i));
        let mut body = None;
        if let Some(route) = route {
            if let Some(missing) = route::missing_scope(route, &id) {
                let mut h = Vec::new();
                if p.credential.style == Style::Bearer {
                    let scopes = route.scopes.join(" ");
                    h.push((
                        "www-authenticate".to_string(),
                        format!(
                            "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
                            self.cfg.realm,
                            quoted(&scopes)
                        ),
                    ));
                }
                let detail = format!("the key lacks the scope `{}`", quoted(missing));
                let extra = [("missing_scope", Extra::Text(missing))];
                return Err(self.deny(
                    &problems(),
                    Problem::new(403, Kind::InsufficientScope, &detail).with(&extra),
                    h,
                    Some(&id),
                ));
            }
            if let Some(owner) = &route.owner {
                let (raw_path, raw_query) = query::split_path(&p.path);
                let owned = match crate::path::canonical(raw_path, &self.cfg.paths) {
                    Ok(canon) => {
                        let from_cookies = match (&owner.source, p.cookies.as_deref()) {
                            (OwnerSource::Query(name), Some(c)) => {
                                route::owner_values_in_cookies(name, c)
                            }
                            _ => Vec::new(),
                        };
                        route::check_owner(owner, &canon, raw_query, Some(&from_cookies), &id)
                    }
                    Err(_) => Ownership::NotOwned, // refused in phase one already
                };
                // a body the upstream may take the owner from is checked when it is in
                // (`Gate::check_body`); a request that names the resource only there is fine
                if let (Some(reading), true) = (p.body_check, owned != Ownership::NotOwned) {
                    body = Some(BodyCheck {
                        route: p.route.unwrap_or_default(),
                        reading,
                        owner: true,
                        named_in_query: owned == Ownership::Owned,
                        method: p.method_scan,
                        instance: instance_of(&p.path),
                        request_id: p.request_id.clone(),
                        rpc: p.rpc,
                    });
                }
                let detail = match owned {
                    Ownership::Owned => None,
                    Ownership::Unnamed if body.is_some() => None,
                    Ownership::Unnamed => Some(format!(
                        "the request does not name a {}",
                        quoted(&owner.resource)
                    )),
                    Ownership::NotOwned => Some(format!(
                        "no such {} for this account",
                        quoted(&owner.resource)
                    )),
                };
                if let Some(detail) = detail {
                    return Err(self.deny(
                        &problems(),
                        Problem::new(owner.status, Kind::ResourceForbidden, &detail),
                        vec![],
                        Some(&id),
                    ));
                }
            }
        }

        if p.method_scan && body.is_none() {
            let path = &p.path;
            body = Some(self.method_check(
                p.route,
                Reading::Form,
                path,
                p.request_id.as_deref(),
                p.rpc,
            ));
        }
        Ok(Admitted {
            pending: p,
            id,
            body,
            headers_sent: false,
        })
    }

    /// An admitted request whose body a check still reads (`Admitted::body`): the check comes
    /// before its limit, so a request refused from its body spends nothing. Its headers go on
    /// now (the decision returned: carriers hidden, identity set, the body held), and `a` keeps
    /// what its limit needs; the decisions of that limit change no header (`headers_sent`).
    /// `None`: no body check, the limit comes now.
    pub fn before_body(&self, a: &mut Admitted) -> Option<Decision> {
        let body = a.body.take()?;
        a.headers_sent = true;
        Some(self.let_on(&mut a.pending, a.id.clone(), Some(body), None))
    }

    /// An admitted request within its limit (either tier): carriers hidden, identity to set.
    fn allowed(&self, a: Admitted, rate: Option<RateHeaders>) -> Decision {
        let Admitted {
            mut pending,
            id,
            body,
            headers_sent,
        } = a;
        if headers_sent {
            // decided once the body passed: what the upstream gets was set with the headers
            return Decision::Allow(Allow {
                rate,
                log: LogFields::of(Outcome::Allowed, Some(&id)),
                ..Default::default()
            });
        }
        self.let_on(&mut pending, id, body, rate)
    }

    /// What the upstream gets of a request let on: forged identity headers and hidden carriers
    /// removed (taken from `p`), the identity to set.
    fn let_on(
        &self,
        p: &mut Pending,
        id: Rc<Identity>,
        body: Option<BodyCheck>,
        rate: Option<RateHeaders>,
    ) -> Decision {
        let mut remove = std::mem::take(&mut p.strip);
        let path = self.hide_carriers(&p.carriers, &p.path, &mut remove);
        Decision::Allow(Allow {
            remove,
            path,
            rate,
            log: LogFields::of(Outcome::Allowed, Some(&id)),
            identity: Some(id),
            body,
            ..Default::default()
        })
    }

    /// With `hide_from_upstream`: adds `authorization` to `remove` when it carried the
    /// credential, and returns `:path` without the query parameter when that did.
    fn hide_carriers(
        &self,
        carriers: &Carriers,
        path: &[u8],
        remove: &mut Vec<String>,
    ) -> Option<Vec<u8>> {
        if !self.cfg.hide_credentials {
            return None;
        }
        if carriers.authorization {
            remove.push("authorization".into());
        }
        match &self.cfg.credentials.query_param {
            Some(param) if carriers.query => Some(query::strip_param(path, param)),
            _ => None,
        }
    }
}

/// A request whose credential, scopes and ownership passed: only its rate limit is left.
#[derive(Clone, Debug)]
pub struct Admitted {
    pending: Pending,
    pub id: Rc<Identity>,
    /// The owner check left for the body (`Allow::body`).
    body: Option<BodyCheck>,
    /// Its headers went on before its body was checked (`Gate::before_body`): the decisions of
    /// its limit change no header.
    headers_sent: bool,
}

impl Admitted {
    /// Whether its limit is counted after its body was checked (`Gate::before_body`).
    pub fn headers_sent(&self) -> bool {
        self.headers_sent
    }
}

/// Every `cookie` header of the request, joined (`None` without one).
fn cookie_header(headers: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for &(n, v) in headers {
        if n == "cookie" {
            let o = out.get_or_insert_with(Vec::new);
            if !o.is_empty() {
                o.push(b';');
            }
            o.extend_from_slice(v);
        }
    }
    out
}

/// A logfmt value that reads one way only: `-` when empty, and any byte that could split or
/// fake a field (space, `=`, quote, backslash, control, non-ASCII) as `_`. Configured values are
/// refused with such bytes; a key service's answers are not, so they are cleaned here.
pub fn push_log_value(v: &mut String, val: &str) {
    if val.is_empty() {
        v.push('-');
    } else if val
        .bytes()
        .all(|c| (0x21..0x7f).contains(&c) && !matches!(c, b'=' | b'"' | b'\\'))
    {
        v.push_str(val);
    } else {
        v.extend(val.chars().map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '=' | '"' | '\\') {
                c
            } else {
                '_'
            }
        }));
    }
}

/// Headers through which frameworks let a client replace the request's method (Rails, Express's
/// method-override, ASP.NET, Symfony).
fn is_method_override(name: &str) -> bool {
    matches!(
        name,
        "x-http-method-override" | "x-http-method" | "x-method-override"
    )
}

/// Whether the query names `name` in any spelling a lenient upstream reads as it.
fn has_lenient_param(q: &[u8], name: &[u8]) -> bool {
    query::params_lenient(q).any(|p| query::lenient_is(p.name, name))
}

fn has_param(path: &[u8], name: &str) -> bool {
    match query::split_path(path) {
        (_, Some(q)) => query::params(q).any(|p| query::name_is(p.name, name)),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
