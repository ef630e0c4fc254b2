//! `credentials`, `identity_headers` and `auth_throttle`: how a credential is read, the identity
//! headers sent upstream, and the failed-authentication throttle.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::fields::{bounded, err, header_name, join, Bound};
use super::ConfigError;
use crate::credential::CredentialConfig;
use crate::json::Loose;
use crate::throttle::ThrottleConfig;

/// `auth_throttle.failures`: failed authentications a client address may make per window.
pub const THROTTLE_FAILURES: Bound = Bound::new(100, 1, 1_000_000);
/// `auth_throttle.window_s`
pub const THROTTLE_WINDOW_S: Bound = Bound::new(60, 1, 86_400);
/// `auth_throttle.clients`: client addresses a worker tracks (the fullest are kept).
pub const THROTTLE_CLIENTS: Bound = Bound::new(10_000, 16, 1_000_000);

#[derive(Clone, Debug)]
/// Header names for the identity sent upstream; `""` when the operator turned one off (`false`).
pub struct IdentityHeaders {
    pub key_id: String,
    pub subject: String,
    pub account: String,
    pub plan: String,
    pub scopes: String,
}

impl IdentityHeaders {
    pub fn names(&self) -> [&str; 5] {
        [
            &self.key_id,
            &self.subject,
            &self.account,
            &self.plan,
            &self.scopes,
        ]
    }
}

#[derive(Deserialize)]
pub(super) struct RawCredentials {
    pub(super) basic: Option<bool>,
    pub(super) bearer: Option<bool>,
    pub(super) api_key_headers: Option<Vec<String>>,
    /// A parameter name, `""` or `false`.
    pub(super) query_param: Option<Loose>,
    pub(super) max_bytes: Option<u64>,
    pub(super) hide_from_upstream: Option<bool>,
    pub(super) malformed_status: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct RawIdentityHeaders {
    pub(super) key_id: Option<Loose>,
    pub(super) subject: Option<Loose>,
    pub(super) account: Option<Loose>,
    pub(super) plan: Option<Loose>,
    pub(super) scopes: Option<Loose>,
}

/// `auth_throttle`: `true`, `false` or an object.
pub(super) enum RawThrottle {
    Switch(bool),
    Tuned(RawThrottleFields),
}

#[derive(Deserialize, Default)]
pub(super) struct RawThrottleFields {
    pub(super) failures: Option<u64>,
    pub(super) window_s: Option<u64>,
    pub(super) clients: Option<u64>,
}

impl<'de> Deserialize<'de> for RawThrottle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawThrottle;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or an object {failures, window_s, clients}")
            }
            fn visit_bool<E>(self, b: bool) -> Result<RawThrottle, E> {
                Ok(RawThrottle::Switch(b))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawThrottle, A::Error> {
                RawThrottleFields::deserialize(MapAccessDeserializer::new(m))
                    .map(RawThrottle::Tuned)
            }
            // the field recorder (`known_fields`)
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<RawThrottle, D::Error> {
                RawThrottleFields::deserialize(d).map(RawThrottle::Tuned)
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn parse_credentials(
    c: Option<RawCredentials>,
) -> Result<(CredentialConfig, bool, u32), ConfigError> {
    let mut credentials = CredentialConfig::default();
    let mut hide_credentials = true;
    let mut malformed_status = 400;
    if let Some(c) = c {
        credentials.basic = c.basic.unwrap_or(true);
        credentials.bearer = c.bearer.unwrap_or(true);
        if let Some(names) = c.api_key_headers {
            let f = "credentials.api_key_headers";
            credentials.api_key_headers = names
                .iter()
                .map(|n| header_name(f, n))
                .collect::<Result<_, _>>()?;
            if credentials
                .api_key_headers
                .iter()
                .any(|n| n == "authorization")
            {
                return Err(err(
                    f,
                    "`authorization` is configured by `basic` and `bearer`",
                ));
            }
            if credentials.api_key_headers.len() > 16 {
                return Err(err(f, "at most 16 header names"));
            }
        }
        let qf = "credentials.query_param";
        match c.query_param {
            None => {}
            Some(Loose::Bool(false)) => credentials.query_param = None,
            Some(Loose::Str(s)) if s.is_empty() => credentials.query_param = None,
            Some(Loose::Str(s)) => {
                let ok = s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok {
                    return Err(err(
                        qf,
                        "must be unreserved characters (A-Z a-z 0-9 - . _ ~)",
                    ));
                }
                credentials.query_param = Some(s);
            }
            Some(_) => return Err(err(qf, "expected a parameter name, \"\" or false")),
        }
        if let Some(n) = c.max_bytes {
            if !(16..=16_384).contains(&n) {
                return Err(err("credentials.max_bytes", "must be 16 to 16384"));
            }
            credentials.max_bytes = n as usize;
        }
        hide_credentials = c.hide_from_upstream.unwrap_or(true);
        if let Some(n) = c.malformed_status {
            if n != 400 && n != 401 {
                return Err(err("credentials.malformed_status", "must be 400 or 401"));
            }
            malformed_status = n as u32;
        }
    }
    if !credentials.basic
        && !credentials.bearer
        && credentials.api_key_headers.is_empty()
        && credentials.query_param.is_none()
    {
        return Err(err("credentials", "every credential style is switched off"));
    }
    Ok((credentials, hide_credentials, malformed_status))
}

pub(super) fn parse_identity_headers(
    ih: Option<RawIdentityHeaders>,
    credentials: &CredentialConfig,
) -> Result<IdentityHeaders, ConfigError> {
    let mut identity_headers = IdentityHeaders {
        key_id: "x-keygate-key-id".into(),
        subject: "x-keygate-subject".into(),
        account: "x-keygate-account".into(),
        plan: "x-keygate-plan".into(),
        scopes: "x-keygate-scopes".into(),
    };
    if let Some(ih) = ih {
        for (name, slot, v) in [
            ("key_id", &mut identity_headers.key_id, ih.key_id),
            ("subject", &mut identity_headers.subject, ih.subject),
            ("account", &mut identity_headers.account, ih.account),
            ("plan", &mut identity_headers.plan, ih.plan),
            ("scopes", &mut identity_headers.scopes, ih.scopes),
        ] {
            let f = join("identity_headers", name);
            match v {
                None => {}
                // not sent, and a client's header of the default name is left alone
                Some(Loose::Bool(false)) => slot.clear(),
                Some(Loose::Str(s)) => *slot = header_name(&f, &s)?,
                Some(other) => {
                    return Err(err(
                        &f,
                        format!("expected a string, got {}", other.type_name()),
                    ))
                }
            }
        }
    }
    let spelled = |n: &str| n.replace('_', "-");
    let idn: Vec<&str> = identity_headers
        .names()
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    for (i, a) in idn.iter().enumerate() {
        if idn[..i].iter().any(|b| spelled(a) == spelled(b)) {
            return Err(err(
                "identity_headers",
                format!("`{a}` names two identity headers (upstreams read `_` as `-`)"),
            ));
        }
    }
    for (i, a) in credentials.api_key_headers.iter().enumerate() {
        if credentials.api_key_headers[..i]
            .iter()
            .any(|b| spelled(a) == spelled(b))
        {
            return Err(err(
                "credentials.api_key_headers",
                format!("`{a}` is listed twice (upstreams read `_` as `-`)"),
            ));
        }
    }
    for n in idn {
        // headers keygate reads or Envoy manages cannot carry identity: a client could forge them
        let reserved = [
            "authorization",
            "x-request-id",
            "host",
            "content-length",
            "transfer-encoding",
            "x-keygate-fail-open",
        ];
        if reserved.contains(&spelled(n).as_str())
            || credentials
                .api_key_headers
                .iter()
                .any(|h| spelled(h) == spelled(n))
            || n.starts_with(':')
        {
            return Err(err(
                "identity_headers",
                format!("`{n}` is a header keygate reads or Envoy manages"),
            ));
        }
    }
    Ok(identity_headers)
}

/// `auth_throttle`: on by default; `false` switches it off; an object tunes it.
pub(super) fn build_throttle(
    t: Option<RawThrottle>,
) -> Result<Option<ThrottleConfig>, ConfigError> {
    let t = match t {
        Some(RawThrottle::Switch(false)) => return Ok(None),
        None | Some(RawThrottle::Switch(true)) => RawThrottleFields::default(),
        Some(RawThrottle::Tuned(t)) => t,
    };
    Ok(Some(ThrottleConfig {
        failures: bounded("auth_throttle.failures", t.failures, THROTTLE_FAILURES)?,
        window_s: bounded("auth_throttle.window_s", t.window_s, THROTTLE_WINDOW_S)?,
        clients: bounded("auth_throttle.clients", t.clients, THROTTLE_CLIENTS)? as usize,
    }))
}
