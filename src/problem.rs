//! RFC 9457 problem details for every denial, with stable `type` URIs (base + slug).
//!
//! Nothing here ever receives a secret: details are fixed phrases chosen by the caller, and
//! `instance` is the request path without its query string (which may hold `_apikey`).

/// An extension member of a problem: text (escaped) or a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra<'a> {
    Text(&'a str),
    Int(u64),
}

/// The kinds of denial, each with a stable slug documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    CredentialMissing,
    CredentialMalformed,
    CredentialTooLarge,
    CredentialConflict,
    CredentialInvalid,
    CredentialExpired,
    CredentialRevoked,
    CredentialDisabled,
    InsufficientScope,
    ResourceForbidden,
    RouteClosed,
    RequestAmbiguous,
    BodyUnchecked,
    RateLimited,
    AuthThrottled,
    KeyServiceUnavailable,
    RateLimitUnavailable,
    Internal,
}

/// One kind of denial: its slug (the `type` URI's end, stable), its title, and the extension
/// members keygate itself may add to its body (a configured member may not reuse their names).
struct Info {
    kind: Kind,
    slug: &'static str,
    title: &'static str,
    members: &'static [&'static str],
}

const fn info(
    kind: Kind,
    slug: &'static str,
    title: &'static str,
    members: &'static [&'static str],
) -> Info {
    Info {
        kind,
        slug,
        title,
        members,
    }
}

/// Every kind, in declaration order: the one table slugs, titles and members come from.
const KINDS: [Info; 18] = [
    info(
        Kind::CredentialMissing,
        "credential-missing",
        "Credential required",
        &[],
    ),
    info(
        Kind::CredentialMalformed,
        "credential-malformed",
        "Malformed credential",
        &[],
    ),
    info(
        Kind::CredentialTooLarge,
        "credential-too-large",
        "Credential too large",
        &[],
    ),
    info(
        Kind::CredentialConflict,
        "credential-conflict",
        "Conflicting credentials",
        &[],
    ),
    info(
        Kind::CredentialInvalid,
        "credential-invalid",
        "Invalid credential",
        &[],
    ),
    info(
        Kind::CredentialExpired,
        "credential-expired",
        "Credential expired",
        &[],
    ),
    info(
        Kind::CredentialRevoked,
        "credential-revoked",
        "Credential revoked",
        &[],
    ),
    info(
        Kind::CredentialDisabled,
        "credential-disabled",
        "Credential disabled",
        &[],
    ),
    info(
        Kind::InsufficientScope,
        "insufficient-scope",
        "Insufficient scope",
        &["missing_scope"],
    ),
    info(
        Kind::ResourceForbidden,
        "resource-forbidden",
        "Resource not accessible",
        &[],
    ),
    info(Kind::RouteClosed, "route-closed", "Route closed", &[]),
    info(
        Kind::RequestAmbiguous,
        "request-ambiguous",
        "Ambiguous request",
        &[],
    ),
    info(
        Kind::BodyUnchecked,
        "body-unchecked",
        "Body not checked",
        &[],
    ),
    info(
        Kind::RateLimited,
        "rate-limited",
        "Too many requests",
        &["policy", "limit", "remaining", "resetTime"],
    ),
    info(
        Kind::AuthThrottled,
        "auth-throttled",
        "Too many failed authentications",
        &[],
    ),
    info(
        Kind::KeyServiceUnavailable,
        "key-service-unavailable",
        "Key service unavailable",
        &[],
    ),
    info(
        Kind::RateLimitUnavailable,
        "rate-limit-unavailable",
        "Rate-limit engine unavailable",
        &[],
    ),
    info(Kind::Internal, "internal", "Gateway error", &[]),
];

impl Kind {
    fn info(self) -> &'static Info {
        // KINDS is in declaration order (checked by a test), so the discriminant indexes it
        &KINDS[self as usize]
    }

    pub fn slug(self) -> &'static str {
        self.info().slug
    }

    /// Every kind, in `index` order (from the table).
    pub const ALL: [Kind; KINDS.len()] = {
        let mut all = [Kind::Internal; KINDS.len()];
        let mut i = 0;
        while i < KINDS.len() {
            all[i] = KINDS[i].kind;
            i += 1;
        }
        all
    };

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_slug(slug: &str) -> Option<Kind> {
        KINDS.iter().find(|k| k.slug == slug).map(|k| k.kind)
    }

    /// The extension members keygate itself may add to this kind's body (a configured member
    /// may not reuse their names).
    pub fn own_members(self) -> &'static [&'static str] {
        self.info().members
    }

    pub fn title(self) -> &'static str {
        self.info().title
    }
}

/// A configured extension member's value (`problems.<slug>.members`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberValue {
    /// Any JSON value, serialized once at configuration time.
    Json(String),
    /// `"$title"`: the problem's title, as sent.
    Title,
    /// `"$detail"`: the problem's detail, as sent.
    Detail,
}

/// A configuration's wording and extension members for one kind of problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dialect {
    pub title: Option<String>,
    pub detail: Option<String>,
    pub members: Vec<(String, MemberValue)>,
}

/// Every kind's dialect (`Kind::index`), empty when the configuration sets none.
pub type Dialects = Vec<Dialect>;

/// The gRPC status for a problem sent to a gRPC client, from its HTTP status: what gRPC
/// clients and retry policies expect (RESOURCE_EXHAUSTED for limits, never UNAVAILABLE, which
/// they retry at once, except for the key service).
pub fn grpc_status(status: u32) -> i32 {
    match status {
        400 => 3,  // INVALID_ARGUMENT
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        404 => 5,  // NOT_FOUND
        408 => 4,  // DEADLINE_EXCEEDED
        413 => 8,  // RESOURCE_EXHAUSTED, as for a message over gRPC's own size limit
        429 => 8,  // RESOURCE_EXHAUSTED
        503 => 14, // UNAVAILABLE
        _ => 13,   // INTERNAL
    }
}

/// How a client reads a denial, from the request's `content-type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rpc {
    /// Anything else: an RFC 9457 problem.
    #[default]
    Http,
    /// `application/grpc`, alone or followed by `+` (also what Envoy's `grpc_web` filter turns a
    /// gRPC-Web request into when it runs before keygate).
    Grpc,
    /// `application/grpc-web`, alone or followed by `+`.
    GrpcWeb,
    /// `application/grpc-web-text`, alone or followed by `+` (base64 frames).
    GrpcWebText,
}

impl Rpc {
    /// As Envoy tells them apart (case counts): its gRPC test for `application/grpc`, its
    /// `grpc_web` filter's types for gRPC-Web (any `+` subtype read alike).
    pub fn of(content_type: &[u8]) -> Rpc {
        match content_type.strip_prefix(b"application/grpc") {
            Some(b"") => Rpc::Grpc,
            Some([b'+', ..]) => Rpc::Grpc,
            Some(web) => match web.strip_prefix(b"-web") {
                Some(b"" | [b'+', ..]) => Rpc::GrpcWeb,
                Some(text) => match text.strip_prefix(b"-text") {
                    Some(b"" | [b'+', ..]) => Rpc::GrpcWebText,
                    _ => Rpc::Http,
                },
                None => Rpc::Http,
            },
            None => Rpc::Http,
        }
    }

    /// The reply's `content-type`.
    fn content_type(self) -> &'static str {
        match self {
            Rpc::Http => "application/problem+json",
            Rpc::Grpc => "application/grpc",
            Rpc::GrpcWeb => "application/grpc-web+proto",
            Rpc::GrpcWebText => "application/grpc-web-text+proto",
        }
    }
}

/// A local reply ready for `send_http_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The problem's status (a gRPC or gRPC-Web reply goes out as HTTP 200, see `grpc_status`).
    pub status: u32,
    pub kind: Kind,
    pub headers: Vec<(String, String)>,
    /// The problem+json body; empty for a gRPC or gRPC-Web client (its message is `grpc-message`).
    pub body: String,
    /// For a gRPC or gRPC-Web client: the `grpc-status`. The reply is then a complete
    /// trailers-only gRPC response (HTTP 200, `grpc-status` and `grpc-message` among its headers,
    /// no body), built here rather than by Envoy: Envoy builds gRPC replies only for requests
    /// that were gRPC when they arrived, and its `grpc_web` filter maps any other status to a
    /// gRPC status of its own (429 to UNAVAILABLE, which clients retry at once).
    pub grpc_status: Option<i32>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// At most this many bytes of the path go into `instance`.
const MAX_INSTANCE: usize = 256;

/// The path part of `:path`, lossily decoded and bounded, never the query.
pub fn instance_of(path: &[u8]) -> String {
    let end = path
        .iter()
        .position(|&c| c == b'?' || c == b'#')
        .unwrap_or(path.len());
    let p = &path[..end.min(MAX_INSTANCE)];
    String::from_utf8_lossy(p).into_owned()
}

/// Appends `s` as the inside of a JSON string.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
}

/// gRPC's `grpc-message` encoding: bytes outside 0x20-0x7E, and `%`, percent-encoded.
fn grpc_percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

pub struct ProblemBuilder<'a> {
    pub type_base: &'a str,
    pub instance: String,
    pub request_id: Option<String>,
    /// The configuration's wording and members per kind (may be empty).
    pub dialects: &'a [Dialect],
    /// How the client reads a denial (gRPC, gRPC-Web or HTTP).
    pub rpc: Rpc,
}

/// At most this many bytes of detail go into `grpc-message`.
const MAX_GRPC_MESSAGE: usize = 256;

impl ProblemBuilder<'_> {
    pub fn reply(
        &self,
        status: u32,
        kind: Kind,
        detail: &str,
        extra: &[(&'static str, Extra<'_>)],
        mut headers: Vec<(String, String)>,
    ) -> Reply {
        let dialect = self.dialects.get(kind.index());
        let title = dialect
            .and_then(|d| d.title.as_deref())
            .unwrap_or(kind.title());
        let detail = dialect.and_then(|d| d.detail.as_deref()).unwrap_or(detail);
        if self.rpc != Rpc::Http {
            // trailers-only: HTTP 200, the status and message among the headers, no body; retry
            // hints stay, and gRPC's own is added
            let mut msg = String::with_capacity(detail.len().min(MAX_GRPC_MESSAGE));
            for c in detail.chars() {
                if msg.len() + c.len_utf8() > MAX_GRPC_MESSAGE {
                    break;
                }
                msg.push(if c.is_control() { ' ' } else { c });
            }
            let retry = headers
                .iter()
                .find(|(n, _)| n == "retry-after")
                .and_then(|(_, v)| v.parse::<u64>().ok());
            if let Some(s) = retry {
                headers.push((
                    "grpc-retry-pushback-ms".into(),
                    s.saturating_mul(1000).to_string(),
                ));
            }
            let code = grpc_status(status);
            headers.push(("content-type".into(), self.rpc.content_type().into()));
            headers.push((
                "grpc-status".into(),
                itoa::Buffer::new().format(code).into(),
            ));
            headers.push(("grpc-message".into(), grpc_percent_encode(&msg)));
            headers.push(("cache-control".into(), "no-store".into()));
            return Reply {
                status,
                kind,
                headers,
                body: String::new(),
                grpc_status: Some(code),
            };
        }
        // written directly (members in RFC 9457's order, then the extensions): a serde_json Map
        // sorts and allocates per member, several thousand instructions a denial in wasm
        let mut body = String::with_capacity(256);
        body.push_str("{\"type\":\"");
        escape_into(&mut body, self.type_base);
        escape_into(&mut body, kind.slug());
        body.push_str("\",\"title\":\"");
        escape_into(&mut body, title);
        body.push_str("\",\"status\":");
        body.push_str(itoa::Buffer::new().format(u64::from(status)));
        body.push_str(",\"detail\":\"");
        escape_into(&mut body, detail);
        body.push_str("\",\"instance\":\"");
        escape_into(&mut body, &self.instance);
        body.push('"');
        if let Some(id) = &self.request_id {
            body.push_str(",\"request_id\":\"");
            escape_into(&mut body, id);
            body.push('"');
        }
        for (k, v) in extra {
            body.push_str(",\"");
            escape_into(&mut body, k);
            body.push_str("\":");
            match v {
                Extra::Text(t) => {
                    body.push('"');
                    escape_into(&mut body, t);
                    body.push('"');
                }
                Extra::Int(n) => body.push_str(itoa::Buffer::new().format(*n)),
            }
        }
        for (k, v) in dialect.map_or(&[][..], |d| d.members.as_slice()) {
            body.push_str(",\"");
            escape_into(&mut body, k);
            body.push_str("\":");
            let text = match v {
                MemberValue::Json(j) => {
                    body.push_str(j);
                    continue;
                }
                MemberValue::Title => title,
                MemberValue::Detail => detail,
            };
            body.push('"');
            escape_into(&mut body, text);
            body.push('"');
        }
        body.push('}');
        headers.push(("content-type".into(), "application/problem+json".into()));
        headers.push(("cache-control".into(), "no-store".into()));
        Reply {
            status,
            kind,
            headers,
            body,
            grpc_status: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_kinds_table_is_in_declaration_order_with_unique_slugs() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.kind as usize, i, "{}", k.slug);
            assert_eq!(Kind::from_slug(k.slug), Some(k.kind));
        }
        let mut slugs: Vec<&str> = KINDS.iter().map(|k| k.slug).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), KINDS.len());
    }

    #[test]
    fn body_has_rfc9457_members_and_no_query() {
        let b = ProblemBuilder {
            type_base: "urn:keygate:problem:",
            instance: instance_of(b"/v1/x?_apikey=SECRET"),
            request_id: Some("r1".into()),
            dialects: &[],
            rpc: Rpc::Http,
        };
        let r = b.reply(
            401,
            Kind::CredentialInvalid,
            "d",
            &[("limit", Extra::Int(3))],
            vec![],
        );
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "urn:keygate:problem:credential-invalid");
        assert_eq!(v["title"], "Invalid credential");
        assert_eq!(v["status"], 401);
        assert_eq!(v["instance"], "/v1/x");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["limit"], 3);
        assert!(!r.body.contains("SECRET"));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    #[test]
    fn instance_is_bounded_and_escaped() {
        let long = vec![b'a'; 5000];
        assert_eq!(instance_of(&long).len(), 256);
        let b = ProblemBuilder {
            type_base: "x:",
            instance: instance_of(b"/\"\\\xff"),
            request_id: None,
            dialects: &[],
            rpc: Rpc::Http,
        };
        let r = b.reply(400, Kind::CredentialMalformed, "d", &[], vec![]);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["instance"], "/\"\\\u{fffd}");
    }

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Kind::from_slug(k.slug()), Some(k));
        }
        assert_eq!(Kind::from_slug("nope"), None);
    }

    #[test]
    fn a_dialect_rewords_and_adds_members() {
        let mut dialects = vec![Dialect::default(); Kind::ALL.len()];
        dialects[Kind::CredentialInvalid.index()] = Dialect {
            title: Some("Unauthorized".into()),
            detail: None,
            members: vec![
                (
                    "error".into(),
                    MemberValue::Json("\"Invalid API key\"".into()),
                ),
                ("message".into(), MemberValue::Detail),
                ("heading".into(), MemberValue::Title),
                ("errors".into(), MemberValue::Json("{}".into())),
            ],
        };
        let b = ProblemBuilder {
            type_base: "urn:x:",
            instance: "/p".into(),
            request_id: None,
            dialects: &dialects,
            rpc: Rpc::Http,
        };
        let r = b.reply(401, Kind::CredentialInvalid, "the \"key\"", &[], vec![]);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "urn:x:credential-invalid");
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["error"], "Invalid API key");
        assert_eq!(v["message"], "the \"key\"");
        assert_eq!(v["heading"], "Unauthorized");
        assert_eq!(v["errors"], serde_json::json!({}));
        // other kinds keep keygate's wording
        let r = b.reply(401, Kind::CredentialMissing, "d", &[], vec![]);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["title"], "Credential required");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn grpc_clients_get_a_status_and_a_short_message() {
        for (rpc, ct) in [
            (Rpc::Grpc, "application/grpc"),
            (Rpc::GrpcWeb, "application/grpc-web+proto"),
            (Rpc::GrpcWebText, "application/grpc-web-text+proto"),
        ] {
            let b = ProblemBuilder {
                type_base: "urn:x:",
                instance: "/p".into(),
                request_id: Some("r".into()),
                dialects: &[],
                rpc,
            };
            let h = vec![("retry-after".to_string(), "3".to_string())];
            let r = b.reply(429, Kind::RateLimited, &"x\ny%é".repeat(100), &[], h);
            assert_eq!(r.grpc_status, Some(8));
            assert!(r.body.is_empty(), "trailers-only: no body");
            let msg = r.header("grpc-message").unwrap();
            assert!(msg.starts_with("x y%25%C3%A9x y"), "{msg}");
            assert!(msg.bytes().all(|c| (0x20..0x7f).contains(&c)));
            assert_eq!(r.header("grpc-status"), Some("8"));
            assert_eq!(r.header("grpc-retry-pushback-ms"), Some("3000"));
            assert_eq!(r.header("content-type"), Some(ct));
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
        for (status, code) in [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 5),
            (408, 4),
            (413, 8),
            (429, 8),
            (503, 14),
            (500, 13),
        ] {
            assert_eq!(grpc_status(status), code);
        }
    }

    #[test]
    fn rpc_from_the_content_type() {
        for (ct, rpc) in [
            (&b"application/grpc"[..], Rpc::Grpc),
            (b"application/grpc+proto", Rpc::Grpc),
            (b"application/grpc+json", Rpc::Grpc),
            (b"Application/GRPC", Rpc::Http),
            (b"application/grpc-web", Rpc::GrpcWeb),
            (b"application/grpc-web+proto", Rpc::GrpcWeb),
            (b"application/grpc-web-text", Rpc::GrpcWebText),
            (b"application/grpc-web-text+proto", Rpc::GrpcWebText),
            (b"application/grpcx", Rpc::Http),
            (b"application/grpc-webx", Rpc::Http),
            (b"application/grpc-web-textx", Rpc::Http),
            (b"application/json", Rpc::Http),
            (b"", Rpc::Http),
        ] {
            assert_eq!(Rpc::of(ct), rpc, "{}", String::from_utf8_lossy(ct));
        }
    }

    proptest::proptest! {
        /// Whatever the strings, the body is JSON and says exactly what it was given.
        #[test]
        fn body_is_json_for_any_text(detail in ".*", instance in ".*", rid in proptest::option::of(".*"),
                                     extra in ".*") {
            let b = ProblemBuilder { type_base: "urn:x:", instance: instance.clone(), request_id: rid.clone(),
                                    dialects: &[], rpc: Rpc::Http };
            let r = b.reply(429, Kind::RateLimited, &detail, &[("policy", Extra::Text(&extra)),
                                                               ("limit", Extra::Int(7))], vec![]);
            let v: Value = serde_json::from_str(&r.body).unwrap();
            proptest::prop_assert_eq!(v["type"].as_str(), Some("urn:x:rate-limited"));
            proptest::prop_assert_eq!(v["status"].as_u64(), Some(429));
            proptest::prop_assert_eq!(v["detail"].as_str(), Some(detail.as_str()));
            proptest::prop_assert_eq!(v["instance"].as_str(), Some(instance.as_str()));
            proptest::prop_assert_eq!(v["request_id"].as_str(), rid.as_deref());
            proptest::prop_assert_eq!(v["policy"].as_str(), Some(extra.as_str()));
            proptest::prop_assert_eq!(v["limit"].as_u64(), Some(7));
        }
    }
}
