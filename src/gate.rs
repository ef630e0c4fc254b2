//! The decision for one request: route policy, credential, verdict, scopes, ownership, rate
//! limit, and what reaches the upstream. Pure: the host hands in headers, time and a store.
//!
//! Order: identity headers from the client are always removed; the route decides whether a
//! credential is needed; a credential is parsed (400 on malformed/conflicting input, 401 when
//! missing); the verdict comes from a store (401 when refused); scopes (403), ownership (403/404)
//! are checked before the rate limiter, so a request refused for those spends no token; then the
//! bucket (429). Only then are carriers hidden and identity headers set.

use std::rc::Rc;

use crate::config::{Algorithm, Config, ResetStyle};
use crate::credential::{self, Carriers, CredError, Credential, Style};
use crate::problem::{instance_of, Extra, Kind, ProblemBuilder, Reply};
use crate::query;
use crate::ratelimit::{self, RateDecision, RateError, Scope};
use crate::route::{self, Access, OwnerBody, OwnerSource, Ownership, Route};
use crate::store::SharedStore;
use crate::verdict::{Identity, Refusal, Verdict};
use crate::window;

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

/// An owner check left for the request's body (`owner.body: "read"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyCheck {
    route: usize,
    content_type: Vec<u8>,
    /// The query named an owned resource already (else the body must name one).
    named_in_query: bool,
    path: Vec<u8>,
    request_id: Option<Vec<u8>>,
    grpc: bool,
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
    path: Vec<u8>,
    /// The client's `x-request-id` as sent: checked (`printable_id`) only if a problem is built.
    request_id: Option<Vec<u8>>,
    /// Identity / API-key headers the client sent (to remove).
    strip: Vec<String>,
    /// A gRPC request: denials go out as gRPC statuses.
    grpc: bool,
    /// The route's owner check reads the body (`owner.body: "read"`): its content type.
    body_check: Option<Vec<u8>>,
}

pub enum Step {
    Done(Decision),
    Verify(Pending),
}

pub struct Gate {
    pub cfg: Config,
    /// The token bucket's shared-data key is built here, reused across requests.
    bucket_key: std::cell::Cell<String>,
    /// A rolling window's new value is built here, reused across requests.
    window_buf: std::cell::Cell<Vec<u8>>,
}

fn quoted(s: &str) -> String {
    // Only fixed ASCII phrases and config-checked text reach here; quotes are dropped defensively.
    s.chars().filter(|&c| c != '"' && c != '\\').collect()
}

impl Gate {
    pub fn new(cfg: Config) -> Self {
        Gate {
            cfg,
            bucket_key: std::cell::Cell::new(String::new()),
            window_buf: std::cell::Cell::new(Vec::new()),
        }
    }

    fn problems(
        &self,
        instance: String,
        request_id: Option<&[u8]>,
        grpc: bool,
    ) -> ProblemBuilder<'_> {
        ProblemBuilder {
            type_base: &self.cfg.problem_base,
            instance,
            request_id: request_id.and_then(printable_id),
            dialects: &self.cfg.problems,
            grpc,
        }
    }

    /// `WWW-Authenticate` challenges for a 401 (and for 400 `invalid_request`).
    fn challenges(&self, bearer_error: Option<(&str, &str)>) -> Vec<(String, String)> {
        let c = &self.cfg.credentials;
        let realm = &self.cfg.realm;
        let mut out = Vec::with_capacity(2);
        let token_styles = c.bearer || !c.api_key_headers.is_empty() || c.query_param.is_some();
        if token_styles {
            let scheme = if c.bearer { "Bearer" } else { "APIKey" };
            let v = match bearer_error {
                Some((code, desc)) => format!(
                    "{scheme} realm=\"{realm}\", error=\"{code}\", error_description=\"{}\"",
                    quoted(desc)
                ),
                None => format!("{scheme} realm=\"{realm}\""),
            };
            out.push(("www-authenticate".to_string(), v));
        }
        if c.basic {
            out.push((
                "www-authenticate".to_string(),
                format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            ));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn deny(
        &self,
        pb: &ProblemBuilder<'_>,
        status: u32,
        kind: Kind,
        detail: &str,
        extra: &[(&'static str, Extra<'_>)],
        headers: Vec<(String, String)>,
        id: Option<&Rc<Identity>>,
    ) -> Decision {
        let reply = pb.reply(status, kind, detail, extra, headers);
        Decision::Deny(reply, LogFields::of(Outcome::Denied(kind), id))
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
        let mut grpc = false;
        let mut strip: Vec<String> = Vec::new();
        let mut ambiguous: Option<&'static str> = None;
        let mut content_type: &[u8] = b"";
        let idh = self.cfg.identity_headers.names();
        for &(name, value) in headers {
            match name {
                ":method" => method = value,
                ":path" => path = value,
                // kept only when it could be echoed (at most 128 bytes): a huge one is not copied
                "x-request-id" => request_id = (value.len() <= 128).then_some(value),
                "content-type" => {
                    content_type = value;
                    grpc = is_grpc(value);
                }
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
        let pb = || self.problems(instance_of(path), request_id, grpc);
        let ambiguous_reply = |detail: &str| {
            Step::Done(self.deny(
                &pb(),
                400,
                Kind::RequestAmbiguous,
                detail,
                &[],
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
                (OwnerBody::Read, OwnerSource::Query(_)) => body_check = Some(content_type.to_vec()),
                // a path segment names the resource; `unchecked`: the operator's word
                _ => {}
            }
        }

        match access {
            Access::Closed => {
                return Step::Done(self.deny(
                    &pb(),
                    403,
                    Kind::RouteClosed,
                    "this route is closed",
                    &[],
                    vec![],
                    None,
                ))
            }
            Access::Public => return Step::Done(self.public(headers, path, strip)),
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
                401,
                Kind::CredentialMissing,
                detail,
                &[],
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
            grpc,
            body_check,
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

    fn credential_error(&self, pb: &ProblemBuilder<'_>, e: CredError) -> Decision {
        let (kind, detail) = match e {
            CredError::Malformed(_, why) => (Kind::CredentialMalformed, why),
            CredError::TooLarge(_) => (
                Kind::CredentialTooLarge,
                "the credential is longer than allowed",
            ),
            CredError::Conflict(why) => (Kind::CredentialConflict, why),
        };
        // `credentials.malformed_status` 401: a malformed or oversized credential is answered
        // like an invalid one (RFC 6750 `invalid_token`, every challenge); a conflict stays 400
        let status = match kind {
            Kind::CredentialConflict => 400,
            _ => self.cfg.malformed_status,
        };
        let h = if status == 401 {
            self.challenges(Some(("invalid_token", detail)))
        } else if self.cfg.credentials.bearer {
            self.challenges(Some(("invalid_request", detail)))
        } else {
            Vec::new()
        };
        self.deny(pb, status, kind, detail, &[], h, None)
    }

    fn public(&self, headers: &[(&str, &[u8])], path: &[u8], mut strip: Vec<String>) -> Decision {
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

    /// Too many failed authentications from this client: 429 without verifying anything.
    pub fn throttled(&self, p: &Pending, retry_after_ms: u64) -> Decision {
        let pb = self.problems(instance_of(&p.path), p.request_id.as_deref(), p.grpc);
        let retry = retry_after_ms.div_ceil(1000).max(1);
        let h = vec![("retry-after".to_string(), retry.to_string())];
        let detail =
            format!("too many failed authentications from this client; retry in {retry} s");
        self.deny(&pb, 429, Kind::AuthThrottled, &detail, &[], h, None)
    }

    /// The key service failed and no stale verdict may serve: 503, fail closed.
    pub fn unavailable(&self, p: &Pending, retry_after_s: u64) -> Decision {
        let pb = self.problems(instance_of(&p.path), p.request_id.as_deref(), p.grpc);
        let h = vec![("retry-after".to_string(), retry_after_s.to_string())];
        let detail = "the key service could not verify the credential; retry shortly";
        self.deny(&pb, 503, Kind::KeyServiceUnavailable, detail, &[], h, None)
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
        now_us: u64,
    ) -> Decision {
        match self.admit(p, verdict) {
            Ok(a) => self.limit_local(a, store, now_us),
            Err(d) => d,
        }
    }

    /// The verdict, scopes and ownership: a denial, or a request left only with its rate limit
    /// (this Envoy's bucket: `limit_local`; or a fleet engine's, see `crate::fleet`).
    // the Err is the (rarer) denial, moved once: boxing would allocate on every denial
    #[allow(clippy::result_large_err)]
    pub fn admit(&self, p: Pending, verdict: Verdict) -> Result<Admitted, Decision> {
        // built only on a denial: the allowed path allocates no problem
        let problems = || self.problems(instance_of(&p.path), p.request_id.as_deref(), p.grpc);
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
                return Err(self.deny(&problems(), 401, kind, detail, &[], h, None));
            }
        };

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
                    403,
                    Kind::InsufficientScope,
                    &detail,
                    &extra,
                    h,
                    Some(&id),
                ));
            }
            if let Some(owner) = &route.owner {
                let (raw_path, raw_query) = query::split_path(&p.path);
                let owned = match crate::path::canonical(raw_path, &self.cfg.paths) {
                    Ok(canon) => route::check_owner(owner, &canon, raw_query, None, &id),
                    Err(_) => Ownership::NotOwned, // refused in phase one already
                };
                // a body the upstream may take the owner from is checked when it is in
                // (`Gate::check_body`); a request that names the resource only there is fine
                if p.body_check.is_some() && owned != Ownership::NotOwned {
                    body = Some(BodyCheck {
                        route: p.route.unwrap_or_default(),
                        content_type: p.body_check.clone().unwrap_or_default(),
                        named_in_query: owned == Ownership::Owned,
                        path: p.path.clone(),
                        request_id: p.request_id.clone(),
                        grpc: p.grpc,
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
                        owner.status,
                        Kind::ResourceForbidden,
                        &detail,
                        &[],
                        vec![],
                        Some(&id),
                    ));
                }
            }
        }

        Ok(Admitted {
            pending: p,
            id,
            body,
        })
    }

    /// This Envoy's own token bucket for an admitted request (the local tier).
    pub fn limit_local(&self, a: Admitted, store: &dyn SharedStore, now_us: u64) -> Decision {
        let Admitted {
            pending: p,
            id,
            body,
        } = a;
        let problems = || self.problems(instance_of(&p.path), p.request_id.as_deref(), p.grpc);
        let mut rate = None;
        if let Some((policy_name, limit, scope, algorithm)) = self.limit_for(&id) {
            let owner = owner_of(&id, scope);
            let mut key = self.bucket_key.take();
            key.clear();
            key.push_str(&self.cfg.shared_prefix);
            let taken = match algorithm {
                Algorithm::TokenBucket => {
                    key.push_str(":rl:");
                    key.push(scope.letter());
                    key.push(':');
                    key.push_str(owner);
                    ratelimit::take(store, &key, &limit, now_us)
                }
                Algorithm::RollingWindow => {
                    key.push_str(":rw:");
                    key.push(scope.letter());
                    key.push(':');
                    key.push_str(owner);
                    let mut buf = self.window_buf.take();
                    let t = window::take(
                        store,
                        &key,
                        limit.requests,
                        limit.window_s,
                        now_us,
                        &mut buf,
                    );
                    self.window_buf.set(buf);
                    t
                }
            };
            self.bucket_key.set(key);
            match taken {
                Ok(d) => {
                    if !d.allowed {
                        let h = self.rate_headers(&d, policy_name, &limit, now_us);
                        return self.over_limit(
                            &problems(),
                            &d,
                            h,
                            (policy_name, &limit, algorithm),
                            now_us,
                            &id,
                        );
                    }
                    if self.cfg.rate.headers {
                        rate = Some(self.rate_headers(&d, policy_name, &limit, now_us));
                    }
                }
                Err(e) => {
                    let detail = match e {
                        RateError::Contended => "the rate limiter is contended; retry shortly",
                        RateError::StoreFailed => "the rate limiter could not record the request",
                    };
                    let h = vec![("retry-after".to_string(), "1".to_string())];
                    return self.deny(
                        &problems(),
                        429,
                        Kind::RateLimited,
                        detail,
                        &[],
                        h,
                        Some(&id),
                    );
                }
            }
        }

        let mut remove = p.strip;
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

    /// The owner check on a request's body (at most `route::MAX_OWNER_BODY` + 1 bytes of it:
    /// longer is refused with 413). `None`: the body may go on to the upstream.
    pub fn check_body(&self, c: &BodyCheck, id: &Rc<Identity>, body: &[u8]) -> Option<Decision> {
        let owner = self
            .cfg
            .routes
            .get(c.route)
            .and_then(|r| r.owner.as_ref())?;
        let OwnerSource::Query(name) = &owner.source else {
            return None;
        };
        let pb = self.problems(instance_of(&c.path), c.request_id.as_deref(), c.grpc);
        if body.len() > route::MAX_OWNER_BODY {
            return Some(self.deny(
                &pb,
                413,
                Kind::RequestAmbiguous,
                "the body is longer than keygate reads on a route that checks which resource the request names",
                &[],
                vec![],
                Some(id),
            ));
        }
        let values = match route::owner_values_in_body(name, &c.content_type, body) {
            Ok(v) => v,
            Err(why) => {
                return Some(self.deny(
                    &pb,
                    400,
                    Kind::RequestAmbiguous,
                    why,
                    &[],
                    vec![],
                    Some(id),
                ))
            }
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
            &pb,
            owner.status,
            Kind::ResourceForbidden,
            &detail,
            &[],
            vec![],
            Some(id),
        ))
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

    /// The 429 of a request over its limit: the rate-limit headers (whatever
    /// `rate_limit.headers` says: the client needs them to back off) and `Retry-After`.
    #[allow(clippy::too_many_arguments)]
    fn over_limit(
        &self,
        pb: &ProblemBuilder<'_>,
        d: &RateDecision,
        rate: RateHeaders,
        (policy_name, limit, algorithm): (&str, &ratelimit::Limit, Algorithm),
        now_us: u64,
        id: &Rc<Identity>,
    ) -> Decision {
        let retry = d.retry_after_ms.div_ceil(1000).max(1);
        let mut h: Vec<(String, String)> = rate
            .pairs()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        h.push(("retry-after".into(), retry.to_string()));
        let extra = [
            ("policy", Extra::Text(policy_name)),
            ("limit", Extra::Int(d.limit)),
            ("remaining", Extra::Int(0)),
            ("resetTime", Extra::Int(unix_reset(now_us, d.reset_ms))),
        ];
        // "the `p` policy allows N requests per W s (burst B); retry in R s", without the
        // formatting machinery (a 429 flood is the hot path then)
        let mut detail = String::with_capacity(96);
        detail.push_str("the `");
        detail.push_str(&quoted(policy_name));
        let parts: &[(&str, u64)] = match algorithm {
            Algorithm::TokenBucket => &[
                ("` policy allows ", limit.requests),
                (" requests per ", limit.window_s),
                (" s (burst ", limit.burst),
                ("); retry in ", retry),
            ],
            Algorithm::RollingWindow => &[
                ("` policy allows ", limit.requests),
                (" requests in any ", limit.window_s),
                (" s; retry in ", retry),
            ],
        };
        for &(text, n) in parts {
            detail.push_str(text);
            detail.push_str(itoa::Buffer::new().format(n));
        }
        detail.push_str(" s");
        self.deny(pb, 429, Kind::RateLimited, &detail, &extra, h, Some(id))
    }

    #[allow(clippy::type_complexity)]
    fn limit_for<'a>(
        &'a self,
        id: &'a Identity,
    ) -> Option<(&'a str, ratelimit::Limit, Scope, Algorithm)> {
        if let Some(l) = id.rate_limit {
            return Some(("key", l, Scope::Key, Algorithm::TokenBucket));
        }
        self.cfg
            .rate
            .policy_for(&id.plan)
            .map(|p| (p.name.as_str(), p.limit, p.scope, p.algorithm))
    }

    fn rate_headers(
        &self,
        d: &RateDecision,
        policy: &str,
        limit: &ratelimit::Limit,
        now_us: u64,
    ) -> RateHeaders {
        let reset_s = d.reset_ms.div_ceil(1000);
        let reset = match self.cfg.rate.reset_style() {
            ResetStyle::Seconds => reset_s,
            ResetStyle::Unix => unix_reset(now_us, d.reset_ms),
        };
        RateHeaders {
            limit: d.limit,
            remaining: d.remaining,
            reset,
            ietf: self.cfg.rate.ietf_headers.then(|| IetfRate {
                policy: quoted(policy),
                quota: limit.requests,
                window_s: limit.window_s,
                reset_s,
            }),
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
}

/// Who a bucket (or a fleet limit) belongs to: the key, its subject, or its account (the key when
/// it has no account).
fn owner_of(id: &Identity, scope: Scope) -> &str {
    match scope {
        Scope::Key => &id.key_id,
        Scope::Subject => &id.subject,
        Scope::Account if !id.account.is_empty() => &id.account,
        Scope::Account => &id.key_id,
    }
}

/// The limit an admitted request falls under: policy name, the configured limit, its scope and
/// owner.
pub struct Target<'a> {
    pub policy: &'a str,
    pub limit: ratelimit::Limit,
    pub scope: Scope,
    pub owner: &'a str,
}

/// The fleet tier (`crate::fleet`): decisions from a rate-limit engine's answer, with the same
/// headers and the same 429 as the local tier.
impl Gate {
    /// The limit `a` falls under (`None`: unlimited).
    pub fn target<'a>(&'a self, a: &'a Admitted) -> Option<Target<'a>> {
        self.limit_for(&a.id)
            .map(|(policy, limit, scope, _)| Target {
                policy,
                limit,
                scope,
                owner: owner_of(&a.id, scope),
            })
    }

    /// Allowed by the engine: `limit` (the engine's, else the configured one), `remaining`, and
    /// ms until the engine's window resets (`None`: no rate-limit headers, the engine did not say).
    pub fn fleet_allowed(
        &self,
        a: Admitted,
        limit: u64,
        remaining: Option<(u64, u64)>,
        now_us: u64,
    ) -> Decision {
        let rate = match (remaining, self.target(&a)) {
            (Some((remaining, reset_ms)), Some(t)) if self.cfg.rate.headers => {
                let d = RateDecision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_ms,
                    retry_after_ms: 0,
                };
                // the IETF policy names the engine's limit, over the plan's window
                let shown = ratelimit::Limit {
                    requests: limit,
                    window_s: t.limit.window_s,
                    burst: limit,
                };
                Some(self.rate_headers(&d, t.policy, &shown, now_us))
            }
            _ => None,
        };
        let Admitted {
            pending: p,
            id,
            body,
        } = a;
        let mut remove = p.strip;
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

    /// Refused by the engine (OVER_LIMIT, now or remembered): the same 429 as the local tier,
    /// `limit` being the engine's and `retry_ms` the time until its window resets.
    pub fn fleet_over_limit(
        &self,
        a: &Admitted,
        limit: u64,
        retry_ms: u64,
        now_us: u64,
    ) -> Decision {
        let Some(t) = self.target(a) else {
            return self.fleet_unavailable(a, 1);
        };
        let d = RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            reset_ms: retry_ms,
            retry_after_ms: retry_ms,
        };
        let shown = ratelimit::Limit {
            requests: limit,
            window_s: t.limit.window_s,
            burst: limit,
        };
        let h = self.rate_headers(&d, t.policy, &shown, now_us);
        let pb = self.problems(
            instance_of(&a.pending.path),
            a.pending.request_id.as_deref(),
            a.pending.grpc,
        );
        let policy = (t.policy, &shown, Algorithm::TokenBucket);
        self.over_limit(&pb, &d, h, policy, now_us, &a.id)
    }

    /// The engine failed and `fleet.on_failure` is `closed`: 503 `rate-limit-unavailable`.
    pub fn fleet_unavailable(&self, a: &Admitted, retry_after_s: u64) -> Decision {
        let pb = self.problems(
            instance_of(&a.pending.path),
            a.pending.request_id.as_deref(),
            a.pending.grpc,
        );
        let h = vec![("retry-after".to_string(), retry_after_s.to_string())];
        let detail = "the rate-limit engine could not count the request; retry shortly";
        self.deny(
            &pb,
            503,
            Kind::RateLimitUnavailable,
            detail,
            &[],
            h,
            Some(&a.id),
        )
    }
}

/// The rate-limit headers of one response, kept as numbers until they are written: the allowed
/// path allocates nothing for them (`for_each` formats on the stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// `X-RateLimit-Reset` as configured: seconds, or a unix time.
    pub reset: u64,
    /// `RateLimit-Policy` and `RateLimit` (`rate_limit.ietf_headers`).
    pub ietf: Option<IetfRate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IetfRate {
    /// Quote-free (`quoted`).
    pub policy: String,
    pub quota: u64,
    pub window_s: u64,
    pub reset_s: u64,
}

impl RateHeaders {
    /// Calls `f` with each header's name and value, in order.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, &str)) {
        f("x-ratelimit-limit", itoa::Buffer::new().format(self.limit));
        f(
            "x-ratelimit-remaining",
            itoa::Buffer::new().format(self.remaining),
        );
        f("x-ratelimit-reset", itoa::Buffer::new().format(self.reset));
        if let Some(i) = &self.ietf {
            let policy = format!("\"{}\";q={};w={}", i.policy, i.quota, i.window_s);
            f("ratelimit-policy", &policy);
            let now = format!("\"{}\";r={};t={}", i.policy, self.remaining, i.reset_s);
            f("ratelimit", &now);
        }
    }

    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::with_capacity(5);
        self.for_each(|n, val| v.push((n, val.to_string())));
        v
    }
}

/// A gRPC content type as Envoy decides it for local replies: `application/grpc`, alone or
/// followed by `+` (`application/grpc-web` is not gRPC: Envoy would answer it over HTTP).
fn is_grpc(content_type: &[u8]) -> bool {
    match content_type.strip_prefix(b"application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with(b"+"),
        None => false,
    }
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

/// A request id fit to echo in a problem: printable ASCII, at most 128 bytes.
fn printable_id(v: &[u8]) -> Option<String> {
    if v.is_empty() || v.len() > 128 || !v.iter().all(|c| (0x21..0x7f).contains(c)) {
        return None;
    }
    std::str::from_utf8(v).ok().map(str::to_owned)
}

/// The unix second at which the bucket is full again, rounded up: a client that waits until
/// then is never early.
fn unix_reset(now_us: u64, reset_ms: u64) -> u64 {
    now_us
        .saturating_add(reset_ms.saturating_mul(1000))
        .div_ceil(1_000_000)
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
    query::params_lenient(q).any(|p| {
        p.name.len() >= name.len() && query::lenient_name(p.name).is_some_and(|n| n == name)
    })
}

fn has_param(path: &[u8], name: &str) -> bool {
    match query::split_path(path) {
        (_, Some(q)) => query::params(q).any(|p| query::name_is(p.name, name)),
        _ => false,
    }
}

/// Convenience for a store-only gate: phase one, the embedded verdict, phase two.
pub fn decide(
    gate: &Gate,
    headers: &[(&str, &[u8])],
    store: &dyn SharedStore,
    now_us: u64,
) -> Decision {
    decide_with_body(gate, headers, b"", store, now_us)
}

/// `decide` for a request with this body: the owner check on it runs when the route reads it.
pub fn decide_with_body(
    gate: &Gate,
    headers: &[(&str, &[u8])],
    body: &[u8],
    store: &dyn SharedStore,
    now_us: u64,
) -> Decision {
    let d = match gate.begin(headers) {
        Step::Done(d) => d,
        Step::Verify(p) => {
            let digest = crate::hash::sha256(p.credential.secret.as_bytes());
            let v = gate
                .embedded_verdict(&p, &digest, now_us / 1_000_000)
                .unwrap_or(Verdict::Refused(Refusal::Unknown));
            gate.finish(p, v, store, now_us)
        }
    };
    match &d {
        Decision::Allow(Allow {
            body: Some(c),
            identity: Some(id),
            ..
        }) => gate.check_body(c, id, body).unwrap_or(d),
        _ => d,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config;
    use crate::store::memory::MemoryStore;
    use serde_json::Value;

    const NOW_US: u64 = 1_800_000_000_400_000; // .4 s past a whole second

    fn gate(json: &str) -> Gate {
        Gate::new(config::parse(json.as_bytes(), &mut Vec::new()).unwrap())
    }

    fn key_json(extra: &str) -> String {
        format!(
            r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p","scopes":["read"]}}]{extra}}}"#,
            crate::hash::to_hex(&crate::hash::sha256(b"secret-1"))
        )
    }

    fn run(g: &Gate, st: &MemoryStore, h: &[(&str, &[u8])]) -> Decision {
        decide(g, h, st, NOW_US)
    }

    #[test]
    fn allowed_request_sets_identity_and_hides_the_carrier() {
        let g = gate(&key_json(""));
        let st = MemoryStore::default();
        let d = run(
            &g,
            &st,
            &[
                (":method", b"GET"),
                (":path", b"/a?x=1&_apikey=secret-1"),
                ("x-keygate-plan", b"forged"),
            ],
        );
        let Decision::Allow(a) = d else {
            panic!("{d:?}")
        };
        assert_eq!(a.path.as_deref(), Some(&b"/a?x=1"[..]));
        assert!(a.remove.contains(&"x-keygate-plan".to_string()));
        let id = a.identity.as_deref().unwrap();
        let h = g.identity_headers(id);
        assert_eq!((h[0].0, h[0].1.as_ref()), ("x-keygate-key-id", "k1"));
        assert_eq!((h[4].0, h[4].1.as_ref()), ("x-keygate-scopes", "read"));
        assert_eq!(a.log.key_id(), "k1");
        assert_eq!(a.log.decision, "allowed");
    }

    #[test]
    fn rolling_window_plan_refuses_until_the_oldest_is_a_window_old() {
        let g = gate(&key_json(
            r#","rate_limit":{"plans":{"p":{"requests":3,"window_s":60,"algorithm":"rolling_window"}}}"#,
        ));
        let st = MemoryStore::default();
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
        let s = 1_000_000;
        for (i, at) in [0, 10 * s, 20 * s].into_iter().enumerate() {
            let Decision::Allow(a) = decide(&g, h, &st, NOW_US + at) else {
                panic!()
            };
            let r = a.rate.unwrap();
            assert_eq!((r.limit, r.remaining, r.reset), (3, 2 - i as u64, 60));
        }
        // 30 s later: the oldest is 30 s old, so 30 s to wait; the window is empty 50 s later
        let Decision::Deny(r, _) = decide(&g, h, &st, NOW_US + 30 * s) else {
            panic!()
        };
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("30"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("x-ratelimit-reset"), Some("50"));
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["limit"], 3);
        assert!(v["detail"]
            .as_str()
            .unwrap()
            .contains("allows 3 requests in any 60 s; retry in 30 s"));
        // its own shared-data key, 12 + 4 x 3 bytes
        assert_eq!(st.map.borrow()["keygate.v1:rw:k:k1"].0.len(), 24);
        assert!(matches!(
            decide(&g, h, &st, NOW_US + 60 * s),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn malformed_credentials_can_be_401() {
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer a b")];
        let g = gate(&key_json(""));
        let Decision::Deny(r, _) = run(&g, &MemoryStore::default(), h) else {
            panic!()
        };
        assert_eq!(r.status, 400);
        assert!(r.headers.iter().any(|(_, v)| v.contains("invalid_request")));
        let g = gate(&key_json(r#","credentials":{"malformed_status":401}"#));
        let Decision::Deny(r, l) = run(&g, &MemoryStore::default(), h) else {
            panic!()
        };
        assert_eq!(
            (r.status, l.decision.as_str()),
            (401, "credential-malformed")
        );
        let challenges: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(challenges[0].starts_with("Bearer realm=\"keygate\", error=\"invalid_token\""));
        assert!(challenges[1].starts_with("Basic "));
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status"], 401);
        // a conflict is a request error whatever the setting
        let h: &[(&str, &[u8])] = &[(":path", b"/a?_apikey=x"), ("authorization", b"Bearer y")];
        let Decision::Deny(r, _) = run(&g, &MemoryStore::default(), h) else {
            panic!()
        };
        assert_eq!(r.status, 400);
    }

    #[test]
    fn grpc_requests_get_grpc_statuses() {
        let g = gate(&key_json(
            r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":60}}},"routes":[{"prefix":"/closed","access":"closed"}]"#,
        ));
        let st = MemoryStore::default();
        let grpc =
            |path: &'static [u8], key: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
                vec![
                    (":path", path),
                    ("content-type", b"application/grpc+proto"),
                    ("x-api-key", key),
                ]
            };
        let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/svc/M", b"nope")) else {
            panic!()
        };
        assert_eq!((r.status, r.grpc_status), (401, Some(16)));
        assert_eq!(r.body, "the credential is not valid");
        assert!(r.header("content-type").is_none());
        let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/closed/M", b"secret-1")) else {
            panic!()
        };
        assert_eq!(r.grpc_status, Some(7));
        assert!(matches!(
            run(&g, &st, &grpc(b"/svc/M", b"secret-1")),
            Decision::Allow(_)
        ));
        let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/svc/M", b"secret-1")) else {
            panic!()
        };
        assert_eq!(r.grpc_status, Some(8));
        assert_eq!(r.header("retry-after"), Some("60"));
        assert_eq!(r.header("grpc-retry-pushback-ms"), Some("60000"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        // not gRPC (as Envoy decides it): problem+json as ever
        for ct in [
            &b"application/json"[..],
            b"application/grpc-web",
            b"application/grpcx",
            b"",
        ] {
            let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("content-type", ct)];
            let Decision::Deny(r, _) = run(&g, &st, h) else {
                panic!()
            };
            assert_eq!(r.grpc_status, None);
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
        }
        assert!(is_grpc(b"application/grpc") && is_grpc(b"application/grpc+json"));
    }

    #[test]
    fn identity_headers_turned_off_are_neither_set_nor_removed() {
        let g = gate(&key_json(r#","identity_headers":{"plan":false}"#));
        let st = MemoryStore::default();
        let d = run(
            &g,
            &st,
            &[
                (":path", b"/a?_apikey=secret-1"),
                ("x-keygate-plan", b"client's"),
            ],
        );
        let Decision::Allow(a) = d else {
            panic!("{d:?}")
        };
        assert!(!a.remove.contains(&"x-keygate-plan".to_string()));
        let h = g.identity_headers(a.identity.as_deref().unwrap());
        assert_eq!(h[3].0, "");
    }

    #[test]
    fn refusals_are_problems_with_challenges() {
        let g = gate(&key_json(""));
        let st = MemoryStore::default();
        let Decision::Deny(r, log) = run(&g, &st, &[(":path", b"/a"), ("x-api-key", b"wrong")])
        else {
            panic!()
        };
        assert_eq!(
            (r.status, log.decision.as_str()),
            (401, "credential-invalid")
        );
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
        assert!(!r.body.contains("wrong"));
        let Decision::Deny(r, _) = run(&g, &st, &[(":path", b"/a")]) else {
            panic!()
        };
        assert_eq!(r.status, 401);
        let Decision::Deny(r, _) =
            run(&g, &st, &[(":path", b"/a"), ("authorization", b"Basic %%")])
        else {
            panic!()
        };
        assert_eq!(r.status, 400);
    }

    fn status_of(d: &Decision) -> (u32, &'static str) {
        match d {
            Decision::Allow(a) => (200, a.log.decision.as_str()),
            Decision::Deny(r, l) => (r.status, l.decision.as_str()),
        }
    }

    #[test]
    fn spellings_upstreams_read_alike_cannot_dodge_a_rule() {
        let g = gate(&key_json(
            r#","routes":[{"prefix":"/public/","access":"public"},{"prefix":"/admin","access":"closed"},
                {"prefix":"/o","methods":["GET"],"scopes":["read"]},{"prefix":"/o","scopes":["write"]},
                {"prefix":"/e","owner":{"query":"_id","resource":"agg"}},
                {"prefix":"/j","owner":{"query":"_id","resource":"agg","body":"reject"}}]"#,
        ));
        let st = MemoryStore::default();
        let k: (&str, &[u8]) = ("x-api-key", b"secret-1");
        const FORM: &[(&str, &[u8])] = &[
            ("content-length", b"2"),
            ("content-type", b"application/x-www-form-urlencoded"),
        ];
        const MULTI: &[(&str, &[u8])] = &[
            ("content-length", b"2"),
            ("content-type", b"multipart/form-data; boundary=x"),
        ];
        const JSON: &[(&str, &[u8])] = &[
            ("content-length", b"2"),
            ("content-type", b"Application/JSON; charset=utf-8"),
        ];
        const PJSON: &[(&str, &[u8])] = &[
            ("content-length", b"2"),
            ("content-type", b"application/problem+json"),
        ];
        type Case<'a> = (
            &'a [u8],
            &'a [u8],
            &'a [(&'a str, &'a [u8])],
            (u32, &'a str),
        );
        let cases: &[Case] = &[
            (b"GET", b"/ADMIN/x", &[], (403, "route-closed")),
            (b"GET", b"/%61dmin", &[], (403, "route-closed")),
            (b"GET", b"/x//admin", &[], (200, "allowed")),
            (b"GET", b"/public//admin", &[], (200, "public")),
            (b"GET", b"/%2Fadmin/x", &[], (400, "request-ambiguous")),
            (
                b"GET",
                b"/public/..%2Fadmin",
                &[],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/public/%2e%2e/admin",
                &[],
                (400, "request-ambiguous"),
            ),
            (b"GET", b"/admin;x/y", &[], (400, "request-ambiguous")),
            (b"GET", b"//admin", &[], (400, "request-ambiguous")),
            (b"GET", b"/o", &[], (200, "allowed")),
            (b"post", b"/o", &[], (403, "insufficient-scope")),
            (b"Get", b"/o", &[], (200, "allowed")),
            (
                b"GET",
                b"/o",
                &[("x-http-method-override", b"DELETE")],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/o",
                &[("x_http_method_override", b"DELETE")],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/o?_method=DELETE",
                &[],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/o?_METHOD=DELETE",
                &[],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/o",
                &[("x_api_key", b"other")],
                (400, "request-ambiguous"),
            ),
            (
                b"GET",
                b"/e?_id=x",
                &[("content-length", b"5")],
                (404, "resource-forbidden"), // the query is checked first; the body when in
            ),
            (
                b"GET",
                b"/e?_id=x",
                &[("content-length", b"0")],
                (404, "resource-forbidden"),
            ),
            (b"POST", b"/j?_id=x", FORM, (400, "request-ambiguous")),
            (b"POST", b"/j?_id=x", MULTI, (400, "request-ambiguous")),
            (
                b"POST",
                b"/j?_id=x",
                &[("content-length", b"2")],
                (400, "request-ambiguous"),
            ),
            (b"POST", b"/j?_id=x", JSON, (400, "request-ambiguous")),
            (b"POST", b"/j?_id=x", PJSON, (400, "request-ambiguous")),
        ];
        for (m, path, extra, want) in cases {
            let mut h: Vec<(&str, &[u8])> = vec![(":method", m), (":path", path), k];
            h.extend_from_slice(extra);
            let d = run(&g, &st, &h);
            assert_eq!(
                status_of(&d),
                *want,
                "{} {}",
                String::from_utf8_lossy(m),
                String::from_utf8_lossy(path)
            );
        }
        // forged identity in underscore spellings is removed, like the dashed one
        let d = run(
            &g,
            &st,
            &[
                (":method", b"GET"),
                (":path", b"/x"),
                k,
                ("x_keygate_key_id", b"forged"),
                ("x_keygate_fail_open", b"forged"),
            ],
        );
        let Decision::Allow(a) = d else {
            panic!("{d:?}")
        };
        assert!(a.remove.contains(&"x_keygate_key_id".to_string()));
        assert!(a.remove.contains(&"x_keygate_fail_open".to_string()));
    }

    #[test]
    fn owner_routes_read_form_and_json_bodies() {
        let g = gate(&format!(
            r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p","resources":{{"agg":["a1"]}}}}],
                "routes":[{{"prefix":"/e","owner":{{"query":"_id","resource":"agg"}}}}]}}"#,
            crate::hash::to_hex(&crate::hash::sha256(b"secret-1"))
        ));
        let st = MemoryStore::default();
        let form: &[u8] = b"application/x-www-form-urlencoded";
        let json: &[u8] = b"application/json";
        for (path, ct, body, want) in [
            (&b"/e?_id=a1"[..], form, &b"name=x"[..], (200, "allowed")),
            (b"/e", form, b"_id=a1&name=x", (200, "allowed")),
            (
                b"/e?_id=a1",
                form,
                b"_id=victim",
                (404, "resource-forbidden"),
            ),
            (
                b"/e?_id=a1",
                form,
                b"x=1;_ID=victim",
                (404, "resource-forbidden"),
            ),
            (b"/e?_id=a1", json, br#"{"name":"x"}"#, (200, "allowed")),
            (
                b"/e?_id=a1",
                json,
                br#"{"_id":"victim"}"#,
                (404, "resource-forbidden"),
            ),
            (
                b"/e?_id=a1",
                json,
                br#"{"_id":{"$ne":"a1"}}"#,
                (404, "resource-forbidden"),
            ),
            (b"/e?_id=a1", json, b"{not json", (400, "request-ambiguous")),
            (
                b"/e?_id=a1",
                b"multipart/form-data; boundary=z",
                b"--z--",
                (400, "request-ambiguous"),
            ),
            (
                b"/e?_id=a1",
                b"text/plain",
                b"_id=victim",
                (400, "request-ambiguous"),
            ),
            (b"/e", json, b"{}", (404, "resource-forbidden")),
        ] {
            let h: &[(&str, &[u8])] = &[
                (":method", b"POST"),
                (":path", path),
                ("x-api-key", b"secret-1"),
                ("content-type", ct),
                ("content-length", b"1"),
            ];
            let d = decide_with_body(&g, h, body, &st, NOW_US);
            assert_eq!(status_of(&d), want, "{}", String::from_utf8_lossy(body));
        }
        let big = vec![b'a'; route::MAX_OWNER_BODY + 1];
        let h: &[(&str, &[u8])] = &[
            (":method", b"POST"),
            (":path", b"/e?_id=a1"),
            ("x-api-key", b"secret-1"),
            ("content-type", form),
            ("content-length", b"1"),
        ];
        assert_eq!(
            status_of(&decide_with_body(&g, h, &big, &st, NOW_US)).0,
            413
        );
    }

    #[test]
    fn authorization_lists_in_any_order_are_a_conflict() {
        let g = gate(&key_json(""));
        let st = MemoryStore::default();
        for v in [
            &b"Digest x,Bearer secret-1"[..],
            b"Bearer secret-1, Digest x",
            b"Digest x, bearer\tsecret-1",
            b"Negotiate abc,Basic YTpi",
        ] {
            let h: &[(&str, &[u8])] = &[
                (":path", b"/a"),
                ("authorization", v),
                ("x-api-key", b"secret-1"),
            ];
            assert_eq!(
                status_of(&run(&g, &st, h)),
                (400, "credential-conflict"),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        // a tab after the scheme is a separator; anything else glued to it is malformed
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer\tsecret-1")];
        assert_eq!(status_of(&run(&g, &st, h)), (200, "allowed"));
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer=secret-1")];
        assert_eq!(status_of(&run(&g, &st, h)), (400, "credential-malformed"));
        // a foreign scheme alone is the upstream's business
        let h: &[(&str, &[u8])] = &[
            (":path", b"/a"),
            ("authorization", b"Digest x"),
            ("x-api-key", b"secret-1"),
        ];
        assert_eq!(status_of(&run(&g, &st, h)), (200, "allowed"));
    }

    #[test]
    fn log_values_read_one_way_only() {
        let mut v = String::new();
        for (val, want) in [
            ("k1", "k1"),
            ("", "-"),
            ("a b=c", "a_b_c"),
            ("x\"y\\z\n", "x_y_z_"),
            ("caf\u{e9}", "caf_"),
        ] {
            v.clear();
            push_log_value(&mut v, val);
            assert_eq!(v, want);
        }
    }

    #[test]
    fn unix_reset_is_never_early() {
        let g = gate(&key_json(
            r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":2}},"reset":"unix"}"#,
        ));
        let st = MemoryStore::default();
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
        let Decision::Allow(a) = run(&g, &st, h) else {
            panic!()
        };
        let reset: u64 = a
            .rate
            .unwrap()
            .pairs()
            .into_iter()
            .find(|(n, _)| *n == "x-ratelimit-reset")
            .unwrap()
            .1
            .parse()
            .unwrap();
        // full again at now + 2 s = ...2.4 s: the header must say ...3, not ...2
        assert_eq!(reset, 1_800_000_003);
        assert_eq!(unix_reset(NOW_US, 2000), 1_800_000_003);
        assert_eq!(unix_reset(1_800_000_000_000_000, 2000), 1_800_000_002);
        let Decision::Deny(r, _) = run(&g, &st, h) else {
            panic!()
        };
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["resetTime"], 1_800_000_003u64);
        assert_eq!(
            body["detail"],
            "the `p` policy allows 1 requests per 2 s (burst 1); retry in 2 s"
        );
        assert_eq!(body["policy"], "p");
        assert_eq!(r.header("retry-after"), Some("2"));
    }

    #[test]
    fn rate_headers_turned_off_leave_allowed_responses_alone_but_not_the_429() {
        let g = gate(&key_json(
            r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":60}},"headers":false,"ietf_headers":true}"#,
        ));
        let st = MemoryStore::default();
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
        let Decision::Allow(a) = run(&g, &st, h) else {
            panic!()
        };
        assert_eq!(a.rate, None);
        // the token was still taken: the next request is over the limit
        let Decision::Deny(r, log) = run(&g, &st, h) else {
            panic!()
        };
        assert_eq!((r.status, log.decision.as_str()), (429, "rate-limited"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("ratelimit-policy"), Some("\"p\";q=1;w=60"));
        assert!(r.header("retry-after").is_some());
    }

    #[test]
    fn problems_echo_only_a_printable_request_id_of_at_most_128_bytes() {
        let g = gate(&key_json(""));
        let st = MemoryStore::default();
        let long = "r".repeat(128);
        let too_long = "r".repeat(129);
        for (id, echoed) in [
            ("abc-123", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("has space", false),
            ("", false),
        ] {
            // a 400 from phase one (bad percent-encoding), a 401 from phase two (unknown key)
            for (path, key, status) in [
                (&b"/a?_apikey=%zz"[..], &b"secret-1"[..], 400),
                (&b"/a"[..], &b"wrong"[..], 401),
            ] {
                let h: &[(&str, &[u8])] = &[
                    (":path", path),
                    ("x-request-id", id.as_bytes()),
                    ("x-api-key", key),
                ];
                let Decision::Deny(r, _) = run(&g, &st, h) else {
                    panic!()
                };
                assert_eq!(r.status, status);
                let body: Value = serde_json::from_str(&r.body).unwrap();
                assert_eq!(body.get("request_id").is_some(), echoed, "{id:?}");
                if echoed {
                    assert_eq!(body["request_id"], id);
                }
            }
        }
    }

    #[test]
    fn rate_headers_are_on_by_default() {
        let g = gate(&key_json(
            r#","rate_limit":{"plans":{"p":{"requests":5,"window_s":60}}}"#,
        ));
        let st = MemoryStore::default();
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
        let Decision::Allow(a) = run(&g, &st, h) else {
            panic!()
        };
        let names: Vec<&str> = a.rate.unwrap().pairs().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset"
            ]
        );
    }

    #[test]
    fn public_routes_strip_but_do_not_verify() {
        let g = gate(&key_json(
            r#","routes":[{"exact":"/health","access":"public"}]"#,
        ));
        let st = MemoryStore::default();
        let d = run(
            &g,
            &st,
            &[
                (":path", b"/health?_apikey=zzz"),
                ("x-api-key", b"not-checked"),
                ("x-keygate-key-id", b"f"),
            ],
        );
        let Decision::Allow(a) = d else { panic!() };
        assert_eq!(a.log.decision, "public");
        assert_eq!(a.path.as_deref(), Some(&b"/health"[..]));
        assert!(
            a.remove.contains(&"x-api-key".to_string())
                && a.remove.contains(&"x-keygate-key-id".to_string())
        );
        assert!(a.set.is_empty() && a.identity.is_none());
    }

    #[test]
    fn fail_open_and_throttled_and_unavailable() {
        let g = gate(&key_json(r#","key_service":{"cluster":"ks"}"#));
        let Step::Verify(p) = g.begin(&[
            (":path", b"/a?_apikey=unknown"),
            (FAIL_OPEN_HEADER, b"forged"),
        ]) else {
            panic!()
        };
        let digest = crate::hash::sha256(p.credential.secret.as_bytes());
        assert!(g
            .embedded_verdict(&p, &digest, NOW_US / 1_000_000)
            .is_none()); // defers to the service
        let Decision::Deny(r, _) = g.unavailable(&p, 3) else {
            panic!()
        };
        assert_eq!((r.status, r.header("retry-after")), (503, Some("3")));
        let Decision::Deny(r, _) = g.throttled(&p, 1500) else {
            panic!()
        };
        assert_eq!((r.status, r.header("retry-after")), (429, Some("2")));
        let Decision::Allow(a) = g.fail_open(p, "timeout") else {
            panic!()
        };
        assert_eq!(
            a.set,
            vec![(FAIL_OPEN_HEADER.to_string(), "timeout".to_string())]
        );
        assert!(a.remove.contains(&FAIL_OPEN_HEADER.to_string()));
        assert_eq!(a.path.as_deref(), Some(&b"/a"[..]));
    }

    fn admitted(g: &Gate) -> Admitted {
        let Step::Verify(p) = g.begin(&[
            (":method", b"GET"),
            (":path", b"/a?_apikey=secret-1"),
            ("x-request-id", b"r-1"),
        ]) else {
            panic!("expected a credential")
        };
        let digest = crate::hash::sha256(p.credential.secret.as_bytes());
        let v = g.embedded_verdict(&p, &digest, NOW_US / 1_000_000).unwrap();
        g.admit(p, v).unwrap()
    }

    const FLEET: &str = r#","rate_limit":{"plans":{"p":{"requests":5,"window_s":60,"per":"account"}}},
        "fleet":{"cluster":"rls","plans":{"p":"request"}}"#;

    #[test]
    fn the_fleet_tier_targets_the_policy_owner() {
        let g = gate(&key_json(FLEET));
        let a = admitted(&g);
        let t = g.target(&a).unwrap();
        assert_eq!((t.policy, t.owner, t.scope), ("p", "acme", Scope::Account));
        assert_eq!(
            g.cfg.fleet.as_ref().unwrap().mode_for(t.policy),
            crate::fleet::Mode::Request
        );
    }

    #[test]
    fn a_fleet_allow_carries_the_engines_count_and_hides_the_carrier() {
        let g = gate(&key_json(FLEET));
        let d = g.fleet_allowed(admitted(&g), 30, Some((12, 41_500)), NOW_US);
        let Decision::Allow(a) = d else {
            panic!("{d:?}")
        };
        let r = a.rate.unwrap();
        assert_eq!((r.limit, r.remaining, r.reset), (30, 12, 42));
        assert_eq!(a.path.as_deref(), Some(&b"/a"[..]));
        assert_eq!(a.log.decision, "allowed");
        // the engine said nothing about its count: no headers rather than made-up ones
        let Decision::Allow(a) = g.fleet_allowed(admitted(&g), 30, None, NOW_US) else {
            panic!()
        };
        assert!(a.rate.is_none());
    }

    #[test]
    fn a_fleet_429_is_the_same_problem_as_a_local_one() {
        let g = gate(&key_json(FLEET));
        let Decision::Deny(r, log) = g.fleet_over_limit(&admitted(&g), 30, 41_500, NOW_US) else {
            panic!()
        };
        assert_eq!(r.status, 429);
        assert_eq!(log.decision, "rate-limited");
        assert_eq!(r.header("retry-after"), Some("42"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("30"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["type"], "urn:keygate:problem:rate-limited");
        assert_eq!(body["limit"], 30);
        assert_eq!(body["policy"], "p");
        assert_eq!(body["request_id"], "r-1");
        assert_eq!(body["instance"], "/a");
    }

    #[test]
    fn an_engine_failure_refused_closed_is_a_503_problem() {
        let g = gate(&key_json(FLEET));
        let Decision::Deny(r, log) = g.fleet_unavailable(&admitted(&g), 3) else {
            panic!()
        };
        assert_eq!(r.status, 503);
        assert_eq!(log.decision, "rate-limit-unavailable");
        assert_eq!(r.header("retry-after"), Some("3"));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        // and the local tier still decides when asked (the `local` fallback)
        let st = MemoryStore::default();
        for _ in 0..5 {
            assert!(matches!(
                g.limit_local(admitted(&g), &st, NOW_US),
                Decision::Allow(_)
            ));
        }
        assert!(matches!(
            g.limit_local(admitted(&g), &st, NOW_US),
            Decision::Deny(..)
        ));
    }

    #[test]
    fn fleet_config_refusals_name_the_field() {
        let bad = |extra: &str| {
            config::parse(key_json(extra).as_bytes(), &mut Vec::new())
                .unwrap_err()
                .field
        };
        assert_eq!(
            bad(r#","fleet":{"cluster":"rls","plans":{"nope":"request"}}"#),
            "fleet.plans.nope"
        );
        assert_eq!(
            bad(r#","fleet":{"cluster":"rls","plans":{"key":"sometimes"}}"#),
            "fleet.plans.key"
        );
        assert_eq!(bad(r#","fleet":{}"#), "fleet.cluster");
        assert_eq!(
            bad(r#","fleet":{"cluster":"rls","on_failure":"open"}"#),
            "fleet.on_failure"
        );
        assert_eq!(
            bad(r#","fleet":{"cluster":"rls","lease":{"percent":0}}"#),
            "fleet.lease.percent"
        );
        assert_eq!(
            bad(r#","fleet":{"cluster":"rls","timeout_ms":0}"#),
            "fleet.timeout_ms"
        );
    }
}
