//! Denials as problems: the builder, challenges, and the replies of each kind of refusal.

use super::rate::unix_reset;
use super::*;

impl Gate {
    pub(super) fn problems(
        &self,
        instance: String,
        request_id: Option<&[u8]>,
        rpc: Rpc,
    ) -> ProblemBuilder<'_> {
        ProblemBuilder {
            type_base: &self.cfg.problem_base,
            instance,
            request_id: request_id.and_then(printable_id),
            dialects: &self.cfg.problems,
            rpc,
        }
    }

    /// `WWW-Authenticate` challenges for a 401 (and for 400 `invalid_request`).
    pub(super) fn challenges(&self, bearer_error: Option<(&str, &str)>) -> Vec<(String, String)> {
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

    pub(super) fn deny(
        &self,
        pb: &ProblemBuilder<'_>,
        p: Problem<'_>,
        headers: Vec<(String, String)>,
        id: Option<&Rc<Identity>>,
    ) -> Decision {
        let reply = pb.reply(p.status, p.kind, p.detail, p.extra, headers);
        Decision::Deny(reply, LogFields::of(Outcome::Denied(p.kind), id))
    }

    pub(super) fn credential_error(&self, pb: &ProblemBuilder<'_>, e: CredError) -> Decision {
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
        self.deny(pb, Problem::new(status, kind, detail), h, None)
    }

    /// Too many failed authentications from this client: 429 without verifying anything.
    pub fn throttled(&self, p: &Pending, retry_after_ms: u64) -> Decision {
        let pb = self.problems(instance_of(&p.path), p.request_id.as_deref(), p.rpc);
        let retry = retry_after_ms.div_ceil(1000).max(1);
        let h = vec![("retry-after".to_string(), retry.to_string())];
        let detail =
            format!("too many failed authentications from this client; retry in {retry} s");
        self.deny(
            &pb,
            Problem::new(429, Kind::AuthThrottled, &detail),
            h,
            None,
        )
    }

    /// The key service failed and no stale verdict may serve: 503, fail closed.
    pub fn unavailable(&self, p: &Pending, retry_after_s: u64) -> Decision {
        let pb = self.problems(instance_of(&p.path), p.request_id.as_deref(), p.rpc);
        let h = vec![("retry-after".to_string(), retry_after_s.to_string())];
        let detail = "the key service could not verify the credential; retry shortly";
        self.deny(
            &pb,
            Problem::new(503, Kind::KeyServiceUnavailable, detail),
            h,
            None,
        )
    }

    /// The 429 of a request over its limit: the rate-limit headers (whatever
    /// `rate_limit.headers` says: the client needs them to back off) and `Retry-After`.
    pub(super) fn over_limit(
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
        self.deny(
            pb,
            Problem::new(429, Kind::RateLimited, &detail).with(&extra),
            h,
            Some(id),
        )
    }
}

/// What a denial says: its status, kind, detail and extension members.
pub(super) struct Problem<'a> {
    status: u32,
    kind: Kind,
    detail: &'a str,
    extra: &'a [(&'static str, Extra<'a>)],
}

impl<'a> Problem<'a> {
    pub(super) fn new(status: u32, kind: Kind, detail: &'a str) -> Self {
        Problem {
            status,
            kind,
            detail,
            extra: &[],
        }
    }

    /// With extension members of this kind (`policy`, `limit`, `scopes`, ...).
    pub(super) fn with(self, extra: &'a [(&'static str, Extra<'a>)]) -> Self {
        Problem { extra, ..self }
    }
}

/// A request id fit to echo in a problem: printable ASCII, at most 128 bytes.
pub(super) fn printable_id(v: &[u8]) -> Option<String> {
    if v.is_empty() || v.len() > 128 || !v.iter().all(|c| (0x21..0x7f).contains(c)) {
        return None;
    }
    std::str::from_utf8(v).ok().map(str::to_owned)
}
