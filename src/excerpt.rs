//! Body excerpts for the request history, as the excerpt filter (`envoy/excerpt`, a second
//! small wasm module configured only on the routes where bodies are recorded) takes them: the
//! first bytes of a request and a response body, only of the media types the operator chose,
//! with credentials and operator-named fields redacted before anything leaves the filter.
//!
//! What is redacted, in every chosen media type alike (a body is read as every upstream might
//! read it, not as its `Content-Type` says):
//! - **the request's own credential**: the values of `Authorization`, the API-key headers and
//!   the key's query parameter, wherever they appear, raw, percent-encoded or JSON-escaped;
//! - **named fields**: the value after any name that contains a credential word (`password`,
//!   `secret`, `token`, `apikey`, `authorization`, `cookie`, `credential`, `privatekey`,
//!   `signature`, `session`) or is one of the operator's `redact_fields`, compared without case
//!   and without `_`, `-`, `.` and other punctuation, after JSON escapes and percent-encoding are
//!   decoded; followed by `:`, `=` or `>` (JSON members, forms and query strings, headers and
//!   logfmt written into a body, XML elements); the value is a JSON string, object or array
//!   whole, or everything up to the end of its line or field;
//! - **key-shaped tokens**: a configured key prefix (`kgb_`, …) at a word's start and what
//!   follows it.
//!
//! A body is not recorded (only why) when its media type is not chosen, it names a charset other
//! than UTF-8, it is compressed (`Content-Encoding`), or it is not UTF-8 text (a NUL, invalid
//! bytes): redaction could not read it. Everything is bounded: at most `max_bytes` are kept, and
//! the filter holds at most that plus a margin per stream.

use serde::{Deserialize, Serialize};

/// Words that make a field a credential (compared with normalised names: they match any name
/// that contains them).
pub const CREDENTIAL_WORDS: [&str; 10] = [
    "password",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "privatekey",
    "signature",
    "session",
];

/// Bounds of the configuration.
pub const MAX_BYTES_LIMIT: usize = 65_536;
const MAX_LIST: usize = 64;
const MAX_NAME: usize = 64;
/// The longest secret scrubbed by value (a longer one is not a credential keygate reads).
const MAX_SECRET: usize = 4096;

fn default_max_bytes() -> usize {
    4096
}

fn default_types() -> Vec<String> {
    [
        "application/json",
        "application/*+json",
        "application/x-www-form-urlencoded",
        "text/plain",
    ]
    .map(String::from)
    .to_vec()
}

fn default_true() -> bool {
    true
}

fn default_headers() -> Vec<String> {
    vec!["x-api-key".into()]
}

fn default_query() -> String {
    "_apikey".into()
}

/// Which carriers hold the credential (as keygate's own `credentials` section names them).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Carriers {
    #[serde(default = "default_headers")]
    pub api_key_headers: Vec<String>,
    #[serde(default = "default_query")]
    pub query_param: String,
}

impl Default for Carriers {
    fn default() -> Carriers {
        Carriers {
            api_key_headers: default_headers(),
            query_param: default_query(),
        }
    }
}

/// The excerpt filter's configuration (its plugin configuration, JSON).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bytes kept of each body.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Media types recorded: `type/subtype`, `type/*`, or `type/*+suffix`.
    #[serde(default = "default_types")]
    pub content_types: Vec<String>,
    /// More names whose values are redacted (besides `CREDENTIAL_WORDS`).
    #[serde(default)]
    pub redact_fields: Vec<String>,
    #[serde(default = "default_true")]
    pub request: bool,
    #[serde(default = "default_true")]
    pub response: bool,
    #[serde(default)]
    pub credentials: Carriers,
    /// Prefixes of the API's keys: a token starting with one is masked wherever it appears.
    #[serde(default)]
    pub key_prefixes: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_bytes: default_max_bytes(),
            content_types: default_types(),
            redact_fields: Vec::new(),
            request: true,
            response: true,
            credentials: Carriers::default(),
            key_prefixes: Vec::new(),
        }
    }
}

/// A configuration ready to use: names normalised, bounds checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub max_bytes: usize,
    types: Vec<String>,
    names: Vec<String>,
    pub request: bool,
    pub response: bool,
    headers: Vec<String>,
    query: String,
    prefixes: Vec<String>,
}

/// Parses and checks a configuration (empty: the defaults); the error names the field.
pub fn configure(raw: &[u8]) -> Result<Settings, String> {
    let cfg: Config = if raw.iter().all(u8::is_ascii_whitespace) {
        Config::default()
    } else {
        serde_json::from_slice(raw).map_err(|e| format!("excerpt configuration refused: {e}"))?
    };
    if !(1..=MAX_BYTES_LIMIT).contains(&cfg.max_bytes) {
        return Err(format!("`max_bytes` must be 1 to {MAX_BYTES_LIMIT}"));
    }
    let list_ok =
        |l: &[String]| l.len() <= MAX_LIST && l.iter().all(|s| (1..=MAX_NAME).contains(&s.len()));
    for (name, l) in [
        ("content_types", &cfg.content_types),
        ("redact_fields", &cfg.redact_fields),
        (
            "credentials.api_key_headers",
            &cfg.credentials.api_key_headers,
        ),
        ("key_prefixes", &cfg.key_prefixes),
    ] {
        if !list_ok(l) {
            return Err(format!(
                "`{name}` holds at most {MAX_LIST} names of 1 to {MAX_NAME} bytes"
            ));
        }
    }
    let mut types = Vec::new();
    for t in &cfg.content_types {
        let t = t.trim().to_ascii_lowercase();
        match t.split_once('/') {
            Some((a, b))
                if !a.is_empty() && !b.is_empty() && a != "*" && !t.contains([';', ',', ' ']) =>
            {
                types.push(t)
            }
            _ => return Err(format!("`content_types`: `{t}` is not type/subtype")),
        }
    }
    let mut names: Vec<String> = CREDENTIAL_WORDS.iter().map(|w| w.to_string()).collect();
    for f in &cfg.redact_fields {
        let n = normalise(f.as_bytes());
        if n.is_empty() {
            return Err(format!("`redact_fields`: `{f}` has no letter or digit"));
        }
        names.push(n);
    }
    // the carriers' own names are credentials too (`X-API-Key: …` written into a body)
    for h in &cfg.credentials.api_key_headers {
        names.push(normalise(h.as_bytes()));
    }
    let q = normalise(cfg.credentials.query_param.as_bytes());
    if !q.is_empty() {
        names.push(q);
    }
    names.sort();
    names.dedup();
    Ok(Settings {
        max_bytes: cfg.max_bytes,
        types,
        names,
        request: cfg.request,
        response: cfg.response,
        headers: cfg
            .credentials
            .api_key_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        query: cfg.credentials.query_param,
        prefixes: cfg
            .key_prefixes
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

/// A name as compared: ASCII letters and digits only, lower case, after JSON escapes (`\u0070`)
/// and percent-encoding are decoded and `+` read as a space.
pub fn normalise(name: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    let hex =
        |b: &[u8]| -> Option<u32> { u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok() };
    while i < name.len() {
        let (c, used) = match name[i] {
            b'\\' if name.get(i + 1) == Some(&b'u') => match name.get(i + 2..i + 6).and_then(hex) {
                Some(v) => (char::from_u32(v).unwrap_or(' '), 6),
                None => (' ', 1),
            },
            b'\\' => (name.get(i + 1).map_or(' ', |c| char::from(*c)), 2),
            b'%' => match name.get(i + 1..i + 3).and_then(hex) {
                Some(v) => (char::from_u32(v).unwrap_or(' '), 3),
                None => ('%', 1),
            },
            c => (char::from(c), 1),
        };
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        }
        i += used;
    }
    out
}

impl Settings {
    fn sensitive(&self, name: &[u8]) -> bool {
        let n = normalise(name);
        !n.is_empty()
            && self.names.iter().any(|w| {
                // a short name only whole (`pin`, `key`), a longer one anywhere in the name
                if w.len() < 5 {
                    n == *w
                } else {
                    n.contains(w.as_str())
                }
            })
    }

    /// Whether a body of this `Content-Type` (and `Content-Encoding`) is recorded, or why not.
    pub fn admit(
        &self,
        content_type: Option<&[u8]>,
        encoding: Option<&[u8]>,
    ) -> Result<String, &'static str> {
        if encoding.is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity")) {
            return Err("compressed (content-encoding)");
        }
        let Some(ct) = content_type else {
            return Err("no content type");
        };
        let ct = std::str::from_utf8(ct).map_err(|_| "content type not recorded")?;
        let mut parts = ct.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("charset") {
                    let v = v.trim().trim_matches('"').to_ascii_lowercase();
                    if !matches!(v.as_str(), "utf-8" | "utf8" | "us-ascii") {
                        return Err("charset not UTF-8");
                    }
                }
            }
        }
        let (ty, sub) = media.split_once('/').ok_or("content type not recorded")?;
        let chosen = self.types.iter().any(|t| {
            let Some((a, b)) = t.split_once('/') else {
                return false;
            };
            a == ty
                && (b == sub
                    || b == "*"
                    || b.strip_prefix("*+").is_some_and(|suffix| {
                        sub.rsplit_once('+').is_some_and(|(_, s)| s == suffix)
                    }))
        });
        if chosen {
            Ok(media.chars().take(MAX_NAME).collect())
        } else {
            Err("content type not recorded")
        }
    }

    /// `admit` for a request's headers: two `Content-Type` (or `Content-Encoding`) headers are
    /// read differently by upstreams, so such a body is not recorded.
    pub fn admit_headers(&self, headers: &[(&str, &[u8])]) -> Result<String, &'static str> {
        let one = |name: &str| {
            let mut it = headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v);
            let first = it.next();
            match it.next() {
                Some(_) => Err("two content types or codings"),
                None => Ok(first),
            }
        };
        self.admit(one("content-type")?, one("content-encoding")?)
    }

    /// The request's credentials, as found in its headers: every value that must not appear in
    /// an excerpt.
    pub fn secrets(&self, headers: &[(&str, &[u8])]) -> Vec<Vec<u8>> {
        presented(headers, &self.headers, &self.query)
    }

    /// How many bytes of a body the filter holds: enough past `max_bytes` that a secret, a
    /// field's name or a key token that starts in the excerpt is seen whole.
    pub fn window(&self, secrets: &[Vec<u8>]) -> usize {
        let longest = secrets.iter().map(Vec::len).max().unwrap_or(0);
        self.max_bytes + 3 * longest + 256
    }

    /// The excerpt of a body's first bytes (`window` of them at most), redacted; `total` is
    /// the body's length when known.
    pub fn excerpt(
        &self,
        media: String,
        head: &[u8],
        total: Option<u64>,
        secrets: &[Vec<u8>],
    ) -> Excerpt {
        let omitted = |why: &str| Excerpt {
            content_type: media.clone(),
            bytes: total,
            text: String::new(),
            truncated: false,
            omitted: Some(why.to_string()),
        };
        // a multi-byte character cut by the window is not an error
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
            }
            Err(_) => return omitted("not UTF-8 text"),
        };
        if text.contains('\0') {
            return omitted("not UTF-8 text");
        }
        let redacted = self.redact(text, secrets);
        let mut cut = redacted.len() > self.max_bytes;
        let mut end = redacted.len().min(self.max_bytes);
        while !redacted.is_char_boundary(end) {
            end -= 1;
        }
        if total.is_none_or(|t| t > head.len() as u64) {
            cut = true;
        }
        Excerpt {
            content_type: media,
            bytes: total,
            text: redacted[..end].to_string(),
            truncated: cut,
            omitted: None,
        }
    }

    /// Redacts named fields, the request's credentials and key-shaped tokens.
    pub fn redact(&self, text: &str, secrets: &[Vec<u8>]) -> String {
        let fields = redact_fields(text, |n| self.sensitive(n));
        let values = scrub_values(&fields, secrets);
        mask_prefixed(&values, &self.prefixes).into_owned()
    }
}

/// The credentials a request presents, as found in its headers (`key_headers`: the API-key
/// headers; `query`: the key's query parameter): every value that must not appear in what is
/// recorded of it (an excerpt, keygate's access-log path and request id).
pub fn presented(headers: &[(&str, &[u8])], key_headers: &[String], query: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut add = |v: &[u8]| {
        let v = v.trim_ascii();
        if (4..=MAX_SECRET).contains(&v.len()) && !out.iter().any(|s: &Vec<u8>| s == v) {
            out.push(v.to_vec());
        }
    };
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("authorization") {
            add(value);
            let whole: &[u8] = value;
            for part in std::iter::once(whole).chain(value.split(|c| *c == b',')) {
                let part = part.trim_ascii();
                let token = part
                    .iter()
                    .position(|c| *c == b' ' || *c == b'\t')
                    .map_or(part, |i| &part[i + 1..]);
                add(token);
                if let Ok(raw) = base64_decode(token.trim_ascii()) {
                    add(&raw);
                    if let Some(i) = raw.iter().position(|c| *c == b':') {
                        add(&raw[i + 1..]);
                    }
                }
            }
        } else if key_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            add(value);
        } else if *name == ":path" {
            if let Some(q) = value.splitn(2, |c| *c == b'?').nth(1) {
                for pair in q.split(|c| *c == b'&' || *c == b';') {
                    let (n, v) = match pair.iter().position(|c| *c == b'=') {
                        Some(i) => (&pair[..i], &pair[i + 1..]),
                        None => continue,
                    };
                    if normalise(n) == normalise(query.as_bytes()) {
                        add(v);
                        add(&percent_decode(v));
                    }
                }
            }
        }
    }
    out
}

pub const REDACTED: &str = "[REDACTED]";

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'_' | b'-' | b'.' | b'[' | b']' | b'%' | b'+' | b'\\' | b'$' | b'@'
        )
}

/// The end of a JSON-like quoted string starting at `b[start]` (the quote), past its closing
/// quote; the end of the text when it is not closed.
fn quoted_end(b: &[u8], start: usize) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a JSON object or array starting at `b[start]`, past its closing bracket; the end
/// of the text when it is not closed.
fn container_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = quoted_end(b, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// Replaces the value after every sensitive name (see the module's comment).
fn redact_fields(text: &str, sensitive: impl Fn(&[u8]) -> bool) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_name_byte(b[i]) || (i > 0 && is_name_byte(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_name_byte(b[i]) {
            if b[i] == b'\\' {
                i += 1; // an escape: the next byte is part of the name
            }
            i += 1;
        }
        let end = i.min(b.len());
        // after the name: its closing quote, spaces, then the separator
        let mut j = end;
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            j += 1;
        }
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        let sep = match b.get(j) {
            Some(c @ (b':' | b'=' | b'>')) => *c,
            _ => continue,
        };
        if !sensitive(&b[start..end]) {
            continue;
        }
        let mut v = j + 1;
        while v < b.len() && (b[v] == b' ' || b[v] == b'\t') {
            v += 1;
        }
        // a string inside a string (JSON sent as a JSON string value: `\"password\": \"x\"`):
        // it ends at the same escaped quote
        let escapes = b[v..].iter().take_while(|c| **c == b'\\').count();
        if escapes > 0 && matches!(b.get(v + escapes), Some(b'"' | b'\'')) {
            let delim = &b[v..v + escapes + 1];
            let from = v + delim.len();
            let vend = b[from..]
                .windows(delim.len())
                .position(|w| w == delim)
                .map_or(b.len(), |p| from + p + delim.len());
            out.push_str(&text[copied..v]);
            out.push_str(&text[v..from]);
            out.push_str(REDACTED);
            if vend <= b.len()
                && vend >= from + delim.len()
                && &b[vend - delim.len()..vend] == delim
            {
                out.push_str(&text[vend - delim.len()..vend]);
            }
            copied = vend;
            i = vend;
            continue;
        }
        let (vstart, vend, quoted) = match b.get(v) {
            None => (v, v, false),
            Some(b'"' | b'\'') if sep != b'>' => (v, quoted_end(b, v), true),
            Some(b'{' | b'[') if sep != b'>' => (v, container_end(b, v), false),
            Some(_) => {
                let stop: &[u8] = match sep {
                    b'=' => b"&;, \t\r\n\"'}])<>",
                    b':' => b"\r\n,\"}]&",
                    _ => b"<",
                };
                let n = b[v..].iter().take_while(|c| !stop.contains(c)).count();
                (v, v + n, false)
            }
        };
        if vend == vstart {
            i = j + 1;
            continue;
        }
        out.push_str(&text[copied..vstart]);
        if quoted {
            let q = char::from(b[vstart]);
            out.push(q);
            out.push_str(REDACTED);
            out.push(q);
        } else {
            out.push_str(REDACTED);
        }
        copied = vend;
        i = vend;
    }
    out.push_str(&text[copied..]);
    out
}

/// The forms a secret may take in a body: as it is, percent-encoded, JSON-escaped.
fn variants(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![secret.to_vec()];
    let unreserved = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
    for upper in [true, false] {
        let mut p = Vec::new();
        for &c in secret {
            if unreserved(c) {
                p.push(c);
            } else if upper {
                p.extend(format!("%{c:02X}").bytes());
            } else {
                p.extend(format!("%{c:02x}").bytes());
            }
        }
        v.push(p);
    }
    let mut plus = Vec::new();
    for &c in secret {
        match c {
            b' ' => plus.push(b'+'),
            c => plus.push(c),
        }
    }
    v.push(plus);
    let mut j = Vec::new();
    for &c in secret {
        match c {
            b'"' => j.extend(b"\\\""),
            b'\\' => j.extend(b"\\\\"),
            b'/' => j.extend(b"\\/"),
            c => j.push(c),
        }
    }
    v.push(j);
    v.sort();
    v.dedup();
    v
}

/// Replaces every occurrence of every secret (in every form).
fn scrub_values(text: &str, secrets: &[Vec<u8>]) -> String {
    let mut out = text.to_string();
    let mut forms: Vec<Vec<u8>> = secrets.iter().flat_map(|s| variants(s)).collect();
    // longest first: a secret that contains another is replaced whole
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    for f in forms {
        let Ok(f) = std::str::from_utf8(&f) else {
            continue;
        };
        if f.len() >= 4 && out.contains(f) {
            out = out.replace(f, REDACTED);
        }
    }
    out
}

/// Masks every key-shaped token: one of `prefixes` at a word's start, followed by at least 8 of
/// `[0-9A-Za-z_]` (issued keys, readable demo keys, a key cut short). Shared with the key
/// service, which masks stored paths and bodies the same way.
pub fn mask_prefixed<'a>(s: &'a str, prefixes: &[String]) -> std::borrow::Cow<'a, str> {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let at_start = i == 0 || !word(b[i - 1]);
        let hit = at_start
            .then(|| {
                prefixes
                    .iter()
                    .find(|p| !p.is_empty() && b[i..].starts_with(p.as_bytes()))
            })
            .flatten();
        if let Some(p) = hit {
            let tail = b[i + p.len()..].iter().take_while(|c| word(**c)).count();
            if tail >= 8 {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..i]);
                o.push_str(p);
                o.push_str("[redacted]");
                i += p.len() + tail;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    match out {
        None => std::borrow::Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let h = std::str::from_utf8(&v[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(h) = h {
                out.push(h);
                i += 3;
                continue;
            }
        }
        out.push(if v[i] == b'+' { b' ' } else { v[i] });
        i += 1;
    }
    out
}

fn base64_decode(v: &[u8]) -> Result<Vec<u8>, ()> {
    use base64::Engine;
    let e = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    e.decode(v).map_err(|_| ())
}

/// One body's excerpt, as the key service reads it (`envoy/keyservice/src/history.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Excerpt {
    #[serde(rename = "type")]
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
}

/// The filter-state value (`wasm.keygate_bodies`): `{"req": …, "resp": …}`.
pub fn render(req: Option<&Excerpt>, resp: Option<&Excerpt>) -> String {
    #[derive(Serialize)]
    struct Both<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a Excerpt>,
        #[serde(skip_serializing_if = "Option::is_none")]
        resp: Option<&'a Excerpt>,
    }
    serde_json::to_string(&Both { req, resp }).unwrap_or_default()
}

/// What the filter holds of one body while it passes.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// The media type, when the body is recorded; why not otherwise.
    pub admitted: Option<Result<String, &'static str>>,
    pub head: Vec<u8>,
    pub total: u64,
    pub ended: bool,
}

impl Capture {
    /// Takes what of a chunk still fits in `window`.
    pub fn push(&mut self, chunk_len: usize, window: usize) -> usize {
        self.total = self.total.saturating_add(chunk_len as u64);
        if matches!(self.admitted, Some(Ok(_))) {
            window.saturating_sub(self.head.len()).min(chunk_len)
        } else {
            0
        }
    }

    pub fn finish(&self, s: &Settings, secrets: &[Vec<u8>]) -> Option<Excerpt> {
        match self.admitted.as_ref()? {
            Ok(media) => Some(s.excerpt(
                media.clone(),
                &self.head,
                self.ended.then_some(self.total),
                secrets,
            )),
            Err(why) => Some(Excerpt {
                content_type: String::new(),
                bytes: self.ended.then_some(self.total),
                text: String::new(),
                truncated: false,
                omitted: Some(why.to_string()),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
