//! Credential extraction: the four styles, duplicates and conflicts, malformed input.
//!
//! Precedence when several carriers are present: `Authorization` (Basic or Bearer), then the
//! API-key headers in configured order, then the query parameter. Several carriers holding the
//! *same* credential are accepted (the first by precedence names the style); different ones are a
//! 400 `credential-conflict`, as are two `Authorization` headers, two values of one API-key header
//! or two query parameters, even when equal (RFC 6750 §3.1 `invalid_request`).
//!
//! A disabled style is not a credential at all: an `Authorization: Basic` header with Basic off is
//! left for the upstream, and so is an `Authorization` header with an unknown scheme.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use crate::query;

/// RFC 7617 uses RFC 4648 §4 base64; clients disagree on padding, so both forms are accepted.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Debug)]
pub struct CredentialConfig {
    pub basic: bool,
    pub bearer: bool,
    /// Lower-case header names.
    pub api_key_headers: Vec<String>,
    pub query_param: Option<String>,
    /// Upper bound on a raw carrier value (header value or raw query value), in bytes.
    pub max_bytes: usize,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        CredentialConfig {
            basic: true,
            bearer: true,
            api_key_headers: vec!["x-api-key".into()],
            query_param: Some("_apikey".into()),
            max_bytes: 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Basic,
    Bearer,
    Header,
    Query,
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Basic => "basic",
            Style::Bearer => "bearer",
            Style::Header => "header",
            Style::Query => "query",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub style: Style,
    /// The Basic user; `None` for the other styles.
    pub user: Option<String>,
    pub secret: String,
}

/// Which carriers held a credential, so the host can hide them from the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carriers {
    pub authorization: bool,
    pub query: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredError {
    /// The value could not be read as a credential of its style (reason is safe to show).
    Malformed(Style, &'static str),
    TooLarge(Style),
    Conflict(&'static str),
}

#[derive(Debug, Default)]
pub struct Extraction {
    pub credential: Option<Credential>,
    pub carriers: Carriers,
    /// An `Authorization` header with a scheme keygate does not accept was seen.
    pub foreign_authorization: bool,
}

fn is_vchar_token(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| (0x21..=0x7e).contains(&c))
}

fn eq_ignore_case(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The scheme and the parameter of an `Authorization` value, optional whitespace trimmed. The one
/// place that splits it, so every reader agrees on what is a credential: the scheme is the
/// leading run of token characters, whatever follows it (a space, a tab, anything else).
fn split_authorization(value: &[u8]) -> (&[u8], &[u8]) {
    let value = trim_ows(value);
    let end = value
        .iter()
        .position(|&c| !is_tchar(c))
        .unwrap_or(value.len());
    (&value[..end], &value[end..])
}

fn scheme_is_ours(cfg: &CredentialConfig, scheme: &[u8]) -> bool {
    (cfg.basic && eq_ignore_case(scheme, "basic"))
        || (cfg.bearer && eq_ignore_case(scheme, "bearer"))
}

/// Whether an `Authorization` value holds a scheme keygate reads (Basic or Bearer, when on), as
/// its first credential or as any element of a comma-joined list (Envoy joins repeated
/// `Authorization` headers with commas).
pub fn is_our_scheme(cfg: &CredentialConfig, value: &[u8]) -> bool {
    value
        .split(|&c| c == b',')
        .any(|element| scheme_is_ours(cfg, split_authorization(element).0))
}

fn parse_authorization(
    cfg: &CredentialConfig,
    value: &[u8],
) -> Result<Option<Credential>, CredError> {
    let (scheme, rest) = split_authorization(value);
    let param = trim_ows(rest);
    if scheme_is_ours(cfg, scheme) && !rest.is_empty() && rest[0] != b' ' && rest[0] != b'\t' {
        let style = if eq_ignore_case(scheme, "basic") {
            Style::Basic
        } else {
            Style::Bearer
        };
        return Err(CredError::Malformed(
            style,
            "the Authorization scheme is not followed by a space",
        ));
    }
    // Envoy folds repeated `Authorization` headers into one comma-joined value; neither base64
    // nor a b64token holds a comma, so a comma next to one of keygate's schemes, in whichever
    // position (`Digest x,Bearer KEY` too), means several credentials.
    if value.contains(&b',') && is_our_scheme(cfg, value) {
        return Err(CredError::Conflict(
            "the request has more than one Authorization header (or a list of credentials)",
        ));
    }
    if cfg.basic && eq_ignore_case(scheme, "basic") {
        if value.len() > cfg.max_bytes {
            return Err(CredError::TooLarge(Style::Basic));
        }
        return parse_basic(param).map(Some);
    }
    if cfg.bearer && eq_ignore_case(scheme, "bearer") {
        if value.len() > cfg.max_bytes {
            return Err(CredError::TooLarge(Style::Bearer));
        }
        if param.is_empty() {
            return Err(CredError::Malformed(
                Style::Bearer,
                "the Bearer token is empty",
            ));
        }
        if !is_vchar_token(param) {
            return Err(CredError::Malformed(
                Style::Bearer,
                "the Bearer token holds spaces, control characters or non-ASCII bytes",
            ));
        }
        return Ok(Some(Credential {
            style: Style::Bearer,
            user: None,
            secret: ascii_string(param),
        }));
    }
    Ok(None)
}

fn parse_basic(param: &[u8]) -> Result<Credential, CredError> {
    const S: Style = Style::Basic;
    if param.is_empty() {
        return Err(CredError::Malformed(S, "the Basic credentials are empty"));
    }
    let decoded = B64
        .decode(param)
        .map_err(|_| CredError::Malformed(S, "the Basic credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| CredError::Malformed(S, "the Basic credentials are not valid UTF-8"))?;
    if text.chars().any(char::is_control) {
        return Err(CredError::Malformed(
            S,
            "the Basic credentials hold control characters",
        ));
    }
    let Some((user, token)) = text.split_once(':') else {
        return Err(CredError::Malformed(
            S,
            "the Basic credentials have no ':' between user and token",
        ));
    };
    if user.is_empty() {
        return Err(CredError::Malformed(S, "the Basic user is empty"));
    }
    if token.is_empty() {
        return Err(CredError::Malformed(S, "the Basic token is empty"));
    }
    Ok(Credential {
        style: S,
        user: Some(user.to_string()),
        secret: token.to_string(),
    })
}

/// `b` without leading and trailing optional whitespace (RFC 9110 OWS: spaces and tabs).
pub(crate) fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Callers have checked the bytes are VCHAR, so this never replaces anything.
fn ascii_string(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Reads the credential of a request from its headers (lower-case names, raw values) and `:path`.
pub fn extract(
    cfg: &CredentialConfig,
    headers: &[(&str, &[u8])],
    path: &[u8],
) -> Result<Extraction, CredError> {
    let mut out = Extraction::default();
    let mut found: [Option<Credential>; 3] = [None, None, None];
    let auth_is_ours = cfg.basic || cfg.bearer;
    let mut seen_auth = false;
    let mut seen_header: u64 = 0; // bit i: api_key_headers[i] seen

    for &(name, value) in headers {
        if auth_is_ours && name == "authorization" {
            if seen_auth {
                return Err(CredError::Conflict(
                    "the request has more than one Authorization header",
                ));
            }
            seen_auth = true;
            match parse_authorization(cfg, value)? {
                Some(c) => {
                    out.carriers.authorization = true;
                    found[0] = Some(c);
                }
                None => out.foreign_authorization = true,
            }
            continue;
        }
        if let Some(i) = cfg.api_key_headers.iter().position(|h| h == name) {
            let bit = 1u64 << (i.min(63));
            if seen_header & bit != 0 {
                return Err(CredError::Conflict(
                    "the request has the API-key header more than once",
                ));
            }
            seen_header |= bit;
            if value.len() > cfg.max_bytes {
                return Err(CredError::TooLarge(Style::Header));
            }
            let v = trim_ows(value);
            if v.is_empty() {
                return Err(CredError::Malformed(
                    Style::Header,
                    "the API-key header is empty",
                ));
            }
            if !is_vchar_token(v) {
                return Err(CredError::Malformed(
                    Style::Header,
                    "the API-key header holds spaces, control characters or non-ASCII bytes",
                ));
            }
            let c = Credential {
                style: Style::Header,
                user: None,
                secret: ascii_string(v),
            };
            match &found[1] {
                Some(prev) if prev.secret != c.secret => {
                    return Err(CredError::Conflict(
                        "the request carries different API keys",
                    ))
                }
                Some(_) => {}
                None => found[1] = Some(c),
            }
        }
    }

    if let Some(param) = &cfg.query_param {
        if let (_, Some(q)) = query::split_path(path) {
            for p in query::params(q) {
                if !query::name_is(p.name, param) {
                    continue;
                }
                if found[2].is_some() {
                    return Err(CredError::Conflict(
                        "the query string has the API-key parameter more than once",
                    ));
                }
                let raw = p.value.unwrap_or(b"");
                if raw.len() > cfg.max_bytes {
                    return Err(CredError::TooLarge(Style::Query));
                }
                let decoded = query::percent_decode(raw).ok_or(CredError::Malformed(
                    Style::Query,
                    "the API-key parameter has a bad percent-encoding",
                ))?;
                if decoded.is_empty() {
                    return Err(CredError::Malformed(
                        Style::Query,
                        "the API-key parameter is empty",
                    ));
                }
                if !is_vchar_token(&decoded) {
                    return Err(CredError::Malformed(
                        Style::Query,
                        "the API-key parameter holds spaces, control characters or non-ASCII bytes",
                    ));
                }
                out.carriers.query = true;
                found[2] = Some(Credential {
                    style: Style::Query,
                    user: None,
                    secret: ascii_string(&decoded),
                });
            }
        }
    }

    let mut chosen: Option<Credential> = None;
    for c in found.into_iter().flatten() {
        match &chosen {
            None => chosen = Some(c),
            Some(first) => {
                if first.secret != c.secret || first.user.is_some() {
                    return Err(CredError::Conflict(
                        "the request carries more than one credential and they differ",
                    ));
                }
            }
        }
    }
    out.credential = chosen;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn h<'a>(pairs: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, *v)).collect()
    }

    fn ex(pairs: &[(&str, &[u8])], path: &str) -> Result<Extraction, CredError> {
        extract(&CredentialConfig::default(), &h(pairs), path.as_bytes())
    }

    fn basic(s: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(s)).into_bytes()
    }

    #[test]
    fn four_styles() {
        let c = ex(&[("authorization", &basic("alice:tok"))], "/").unwrap();
        let c = c.credential.unwrap();
        assert_eq!(
            (c.style, c.user.as_deref(), c.secret.as_str()),
            (Style::Basic, Some("alice"), "tok")
        );

        let c = ex(&[("authorization", b"bEaReR  abc.DEF_1-~+/=")], "/")
            .unwrap()
            .credential
            .unwrap();
        assert_eq!(
            (c.style, c.secret.as_str()),
            (Style::Bearer, "abc.DEF_1-~+/=")
        );

        let c = ex(&[("x-api-key", b"k1")], "/")
            .unwrap()
            .credential
            .unwrap();
        assert_eq!((c.style, c.secret.as_str()), (Style::Header, "k1"));

        let e = ex(&[], "/a?x=1&_apikey=k%2B1+&y").unwrap();
        assert!(e.carriers.query);
        let c = e.credential.unwrap();
        assert_eq!((c.style, c.secret.as_str()), (Style::Query, "k+1+"));
    }

    #[test]
    fn basic_splits_at_first_colon_and_accepts_missing_padding() {
        let c = ex(&[("authorization", &basic("u:a:b"))], "/")
            .unwrap()
            .credential
            .unwrap();
        assert_eq!((c.user.as_deref(), c.secret.as_str()), (Some("u"), "a:b"));
        // "u:tok" without '=' padding
        let unpadded = format!("Basic {}", STANDARD.encode("u:tok").trim_end_matches('='));
        let c = ex(&[("authorization", unpadded.as_bytes())], "/")
            .unwrap()
            .credential
            .unwrap();
        assert_eq!(c.secret, "tok");
    }

    #[test]
    fn malformed_basic() {
        for (v, want) in [
            (b"Basic !!!!".to_vec(), "base64"),
            (b"Basic".to_vec(), "empty"),
            (basic("nocolon"), "':'"),
            (basic(":tok"), "user is empty"),
            (basic("u:"), "token is empty"),
            (basic("u:t\u{7}x"), "control"),
            (
                format!("Basic {}", STANDARD.encode([b'u', b':', 0xff, 0xfe])).into_bytes(),
                "UTF-8",
            ),
        ] {
            match ex(&[("authorization", &v)], "/") {
                Err(CredError::Malformed(Style::Basic, why)) => {
                    assert!(why.contains(want), "{why}")
                }
                other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(&v)),
            }
        }
    }

    #[test]
    fn malformed_other_styles() {
        assert!(matches!(
            ex(&[("authorization", b"Bearer")], "/"),
            Err(CredError::Malformed(Style::Bearer, _))
        ));
        assert!(matches!(
            ex(&[("authorization", b"Bearer a b")], "/"),
            Err(CredError::Malformed(Style::Bearer, _))
        ));
        assert!(matches!(
            ex(&[("authorization", b"Bearer \xc3\xa9")], "/"),
            Err(CredError::Malformed(Style::Bearer, _))
        ));
        assert!(matches!(
            ex(&[("x-api-key", b"")], "/"),
            Err(CredError::Malformed(Style::Header, _))
        ));
        assert!(matches!(
            ex(&[("x-api-key", b"a\x01b")], "/"),
            Err(CredError::Malformed(Style::Header, _))
        ));
        assert!(matches!(
            ex(&[], "/?_apikey="),
            Err(CredError::Malformed(Style::Query, _))
        ));
        assert!(matches!(
            ex(&[], "/?_apikey"),
            Err(CredError::Malformed(Style::Query, _))
        ));
        assert!(matches!(
            ex(&[], "/?_apikey=%zz"),
            Err(CredError::Malformed(Style::Query, _))
        ));
        assert!(matches!(
            ex(&[], "/?_apikey=a%20b"),
            Err(CredError::Malformed(Style::Query, _))
        ));
        let big = vec![b'a'; 2000];
        assert!(matches!(
            ex(&[("x-api-key", &big)], "/"),
            Err(CredError::TooLarge(Style::Header))
        ));
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(&big);
        assert!(matches!(
            ex(&[("authorization", &bearer)], "/"),
            Err(CredError::TooLarge(Style::Bearer))
        ));
    }

    #[test]
    fn duplicates_and_conflicts() {
        assert!(matches!(
            ex(
                &[
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer a")
                ],
                "/"
            ),
            Err(CredError::Conflict(_))
        ));
        assert!(matches!(
            ex(&[("x-api-key", b"a"), ("x-api-key", b"a")], "/"),
            Err(CredError::Conflict(_))
        ));
        assert!(matches!(
            ex(&[], "/?_apikey=a&_apikey=a"),
            Err(CredError::Conflict(_))
        ));
        assert!(matches!(
            ex(&[("authorization", b"Bearer a"), ("x-api-key", b"b")], "/"),
            Err(CredError::Conflict(_))
        ));
        assert!(matches!(
            ex(&[("x-api-key", b"a")], "/?_apikey=b"),
            Err(CredError::Conflict(_))
        ));
        // The same key in two carriers is one credential; Authorization names the style.
        let e = ex(
            &[("x-api-key", b"a"), ("authorization", b"Bearer a")],
            "/?_apikey=a",
        )
        .unwrap();
        assert_eq!(e.credential.unwrap().style, Style::Bearer);
        assert!(e.carriers.authorization && e.carriers.query);
        // Basic carries a user: never merged with a user-less credential.
        assert!(matches!(
            ex(
                &[("authorization", &basic("u:a")), ("x-api-key", b"a")],
                "/"
            ),
            Err(CredError::Conflict(_))
        ));
    }

    #[test]
    fn leading_whitespace_does_not_change_what_is_a_credential() {
        let c = CredentialConfig::default();
        for v in [
            &b"\tBearer k"[..],
            b"  Bearer k",
            b"Bearer   k",
            b" basic Zm9vOmJhcg==",
        ] {
            assert!(is_our_scheme(&c, v), "{:?}", String::from_utf8_lossy(v));
            assert!(
                ex(&[("authorization", v)], "/")
                    .unwrap()
                    .carriers
                    .authorization
            );
        }
        assert!(!is_our_scheme(&c, b"\tDigest x"));
    }

    #[test]
    fn disabled_styles_and_foreign_schemes_are_not_credentials() {
        let cfg = CredentialConfig {
            basic: false,
            query_param: None,
            ..Default::default()
        };
        let e = extract(
            &cfg,
            &h(&[("authorization", &basic("u:t"))]),
            b"/?_apikey=x",
        )
        .unwrap();
        assert!(e.credential.is_none() && e.foreign_authorization && !e.carriers.authorization);
        let e = ex(&[("authorization", b"Digest abc")], "/").unwrap();
        assert!(e.credential.is_none() && e.foreign_authorization);
        let cfg = CredentialConfig {
            basic: false,
            bearer: false,
            ..Default::default()
        };
        // Authorization not ours at all: two of them are the upstream's business.
        let e = extract(
            &cfg,
            &h(&[("authorization", b"Bearer a"), ("authorization", b"x")]),
            b"/",
        )
        .unwrap();
        assert!(e.credential.is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(v in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                        p in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut auth = b"Basic ".to_vec();
            auth.extend_from_slice(&v);
            let _ = ex(&[("authorization", &auth)], "/");
            let _ = ex(&[("authorization", &v), ("x-api-key", &v)], "/");
            let mut path = b"/x?_apikey=".to_vec();
            path.extend_from_slice(&p);
            let _ = ex(&[], &String::from_utf8_lossy(&path));
            let _ = extract(&CredentialConfig::default(), &[], &p);
        }
    }
}
