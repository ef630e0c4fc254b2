//! Request history: what Envoy's OpenTelemetry access logger sends (OTLP/HTTP, protobuf), read
//! into one record per request made with a key, and what the dashboard draws from the records.
//!
//! Envoy formats every attribute of a log record from its access-log operators and keygate's
//! filter state (`envoy/docs/history.md` lists them); the names follow OpenTelemetry's semantic
//! conventions where there is one. Every value is bounded and checked here: the stream is
//! trusted no more than any other input (a collector may relay it, a misconfigured Envoy may send
//! anything), and no secret may reach the store: key-shaped tokens are masked in paths and body
//! excerpts (keygate's excerpt filter masks the request's own credential before the record
//! leaves Envoy; this is the second net).

use std::borrow::Cow;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use prost::Message;
use serde::{Deserialize, Serialize};

/// The attributes keygate's access-log configuration sets (`envoy/docs/history.md`).
pub const ATTR_METHOD: &str = "http.request.method";
pub const ATTR_PATH: &str = "url.path";
pub const ATTR_STATUS: &str = "http.response.status_code";
pub const ATTR_DURATION: &str = "keygate.duration_ms";
pub const ATTR_UPSTREAM: &str = "keygate.upstream_ms";
pub const ATTR_BYTES_IN: &str = "http.request.body.size";
pub const ATTR_BYTES_OUT: &str = "http.response.body.size";
pub const ATTR_REQUEST_ID: &str = "keygate.request_id";
/// `%FILTER_STATE(wasm.keygate:PLAIN)%`: logfmt `decision=… key_id=… account=… plan=…`.
pub const ATTR_KEYGATE: &str = "keygate";
/// `%FILTER_STATE(wasm.keygate_bodies:PLAIN)%`: the excerpt filter's JSON, where bodies are on.
pub const ATTR_BODIES: &str = "keygate.bodies";

/// The record's body as one line, the cheaper form for Envoy (one formatter instead of one per
/// attribute; `envoy/docs/history.md`): keygate's filter state first, then `name=value` fields.
/// Its names, and the attribute each stands for.
pub const LINE_FIELDS: [(&str, &str); 8] = [
    ("method", ATTR_METHOD),
    ("status", ATTR_STATUS),
    ("duration_ms", ATTR_DURATION),
    ("upstream_ms", ATTR_UPSTREAM),
    ("bytes_in", ATTR_BYTES_IN),
    ("bytes_out", ATTR_BYTES_OUT),
    ("path", ATTR_PATH),
    ("request_id", ATTR_REQUEST_ID),
];
/// keygate's own fields, which only its filter state at the line's start may give.
const KEYGATE_FIELDS: [&str; 4] = ["decision", "key_id", "account", "plan"];
/// The request's fields keygate's state gives after its own (`path=… request_id=…`, the
/// request's credential replaced, every space escaped): preferred over the same fields later in
/// the line (Envoy's `%PATH(NQ)%` and `%REQ(X-REQUEST-ID)%` in a line not yet updated, which hold
/// whatever the client wrote).
const KEYGATE_REQUEST_FIELDS: [&str; 2] = ["path", "request_id"];
/// The longest line read.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// Bounds on what one record may hold.
pub const MAX_PATH_CHARS: usize = 512;
pub const MAX_EXCERPT_BYTES: usize = 64 * 1024;
const MAX_FIELD_CHARS: usize = 128;
const MAX_MILLIS: i64 = 86_400_000; // a duration over a day is not believed
const MAX_BYTES: i64 = 1 << 50;

/// Status classes of the usage counts, in this order everywhere (store columns, chart, JSON).
pub const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];

pub fn class_of(status: u16) -> usize {
    match status {
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        500..=599 => 3,
        _ => 4,
    }
}

/// The status range a class names (`other`: none; it is everything outside 200-599).
pub fn class_range(class: &str) -> Option<(u16, u16)> {
    match class {
        "2xx" => Some((200, 299)),
        "3xx" => Some((300, 399)),
        "4xx" => Some((400, 499)),
        "5xx" => Some((500, 599)),
        _ => None,
    }
}

/// Days since the Unix epoch (UTC) of an instant in milliseconds.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// One body excerpt, as keygate's excerpt filter reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excerpt {
    /// The media type as sent (bounded), or empty.
    #[serde(default, rename = "type")]
    pub content_type: String,
    /// The whole body's length when the filter saw its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The first bytes, redacted; empty when not kept.
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub truncated: bool,
    /// Why the body is not shown (its type is not chosen, it is compressed, not UTF-8, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
}

#[derive(Deserialize)]
struct Bodies {
    #[serde(default)]
    req: Option<Excerpt>,
    #[serde(default)]
    resp: Option<Excerpt>,
}

/// One request made with a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    pub key_id: String,
    pub account: String,
    pub plan: String,
    /// When the request started (Unix ms).
    pub at_ms: i64,
    pub method: String,
    /// Without its query.
    pub path: String,
    /// 0: no response was sent (the client went away).
    pub status: u16,
    pub duration_ms: Option<i64>,
    /// From the first byte sent upstream to the last byte of its answer; none for local replies.
    pub upstream_ms: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// `allowed`, `public`, `fail-open`, or keygate's problem slug.
    pub decision: String,
    pub request_id: String,
    pub req_body: Option<Excerpt>,
    pub resp_body: Option<Excerpt>,
}

/// What one export held.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub records: Vec<HistoryRecord>,
    /// Requests without a verified key (no owner: nothing to keep).
    pub without_key: u64,
}

/// Decodes an OTLP/HTTP protobuf `ExportLogsServiceRequest`.
pub fn decode(body: &[u8], now_ms: i64, redact_prefixes: &[String]) -> Result<Decoded, String> {
    // what decoding would allocate is bounded before it is done: an empty record costs two
    // bytes on the wire and some hundred in memory
    let mut budget = MAX_ELEMENTS;
    if !within(body, 0, &mut budget) {
        return Err(format!(
            "an export holds at most {MAX_ELEMENTS} messages and fields, nested {MAX_DEPTH} deep"
        ));
    }
    let req = ExportLogsServiceRequest::decode(body)
        .map_err(|_| "the body is not an OTLP ExportLogsServiceRequest (protobuf)".to_string())?;
    let mut out = Decoded::default();
    for rl in &req.resource_logs {
        for sl in &rl.scope_logs {
            for lr in &sl.log_records {
                let nanos = if lr.time_unix_nano != 0 {
                    lr.time_unix_nano
                } else {
                    lr.observed_time_unix_nano
                };
                let line_attrs;
                let attrs = match line(lr) {
                    Some(l) => {
                        line_attrs = l;
                        &line_attrs
                    }
                    None => &lr.attributes,
                };
                match record(attrs, nanos, now_ms, redact_prefixes) {
                    Some(r) => out.records.push(r),
                    None => out.without_key += 1,
                }
            }
        }
    }
    Ok(out)
}

/// Length-delimited fields (messages, strings, bytes) one export may hold, at any depth: an
/// OTLP collector's batch of 8,192 records holds some 100,000.
pub const MAX_ELEMENTS: usize = 250_000;
/// Nesting deeper than this is refused (prost's own limit is 100).
const MAX_DEPTH: u32 = 40;

/// Counts the length-delimited fields of `b` read as protobuf, and those of every one of them
/// that reads as a message, against `budget`: `false` when it runs out or a message nests too
/// deep. Bytes that are not a message (a string) count once. No schema: a string that happens
/// to read as a message is counted twice, which errs on the safe side.
fn within(b: &[u8], depth: u32, budget: &mut usize) -> bool {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let c = *b.get(*i)?;
            *i += 1;
            v |= u64::from(c & 0x7f) << shift;
            if c & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // the fields of `b` if it reads as a message: (start, end) of each length-delimited one;
    // more than `max` (then the budget is spent) ends the reading
    fn fields(b: &[u8], max: usize) -> Option<Vec<(usize, usize)>> {
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let tag = varint(b, &mut i)?;
            if tag >> 3 == 0 {
                return None;
            }
            let skip = match tag & 7 {
                0 => varint(b, &mut i).map(|_| 0)?,
                1 => 8,
                5 => 4,
                2 => {
                    let n = usize::try_from(varint(b, &mut i)?).ok()?;
                    let end = i.checked_add(n).filter(|e| *e <= b.len())?;
                    out.push((i, end));
                    if out.len() > max {
                        return Some(out);
                    }
                    n
                }
                _ => return None,
            };
            i = i.checked_add(skip).filter(|e| *e <= b.len())?;
        }
        Some(out)
    }
    let Some(found) = fields(b, *budget) else {
        return true; // not a message: a leaf, counted by its parent
    };
    if found.is_empty() {
        return true;
    }
    if depth >= MAX_DEPTH || found.len() > *budget {
        return false;
    }
    *budget -= found.len();
    found
        .into_iter()
        .all(|(s, e)| e == s || within(&b[s..e], depth + 1, budget))
}

/// A record whose body is the line form (and which has no `keygate` attribute): its fields as
/// the attributes they stand for, followed by the record's own attributes (bodies). keygate's
/// fields come only from the leading `decision=…` segment, which keygate writes (its values hold
/// no space), and so do the path and request id where it gives them (`KEYGATE_REQUEST_FIELDS`);
/// every other field counts once, its first time: a value a client chose (a request id) cannot
/// give a record another key or owner.
fn line(lr: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> Option<Vec<KeyValue>> {
    if lr.attributes.iter().any(|kv| kv.key == ATTR_KEYGATE) {
        return None;
    }
    let Value::StringValue(body) = lr.body.as_ref()?.value.as_ref()? else {
        return None;
    };
    let mut end = body.len().min(MAX_LINE_BYTES);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    let body = body[..end].trim_end_matches(['\n', '\r']);
    if !body.starts_with("decision=") {
        return None;
    }
    let mut tokens = body.split(' ').peekable();
    let mut keygate = Vec::new();
    let mut request: Vec<(&str, &str)> = Vec::new();
    while let Some(t) = tokens.peek() {
        match t.split_once('=') {
            Some((k, _))
                if KEYGATE_FIELDS.contains(&k)
                    && keygate.len() < KEYGATE_FIELDS.len()
                    && request.is_empty() =>
            {
                keygate.push(*t);
                tokens.next();
            }
            Some((k, v))
                if KEYGATE_REQUEST_FIELDS.contains(&k) && !request.iter().any(|(n, _)| *n == k) =>
            {
                request.push((k, v));
                tokens.next();
            }
            _ => break,
        }
    }
    let string = |key: &str, v: &str| KeyValue {
        key: key.to_string(),
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    };
    let mut out = vec![string(ATTR_KEYGATE, &keygate.join(" "))];
    for (k, v) in request {
        if let Some((_, attr)) = LINE_FIELDS.iter().find(|(name, _)| *name == k) {
            out.push(string(attr, v));
        }
    }
    for t in tokens {
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        if let Some((_, attr)) = LINE_FIELDS.iter().find(|(name, _)| *name == k) {
            if !out.iter().any(|kv| kv.key == *attr) {
                out.push(string(attr, v));
            }
        }
    }
    out.extend(lr.attributes.iter().cloned());
    Some(out)
}

/// The answer to an export: OTLP's response message, with the records refused.
pub fn response(rejected: u64, why: &str) -> Vec<u8> {
    let partial = (rejected > 0).then(|| ExportLogsPartialSuccess {
        rejected_log_records: i64::try_from(rejected).unwrap_or(i64::MAX),
        error_message: why.to_string(),
    });
    ExportLogsServiceResponse {
        partial_success: partial,
    }
    .encode_to_vec()
}

fn attr<'a>(attrs: &'a [KeyValue], name: &str) -> Option<Cow<'a, str>> {
    let v = attrs.iter().find(|kv| kv.key == name)?.value.as_ref()?;
    let s: Cow<'a, str> = match v.value.as_ref()? {
        Value::StringValue(s) => Cow::Borrowed(s.as_str()),
        Value::IntValue(i) => Cow::Owned(i.to_string()),
        Value::BoolValue(b) => Cow::Owned(b.to_string()),
        _ => return None,
    };
    // Envoy writes `-` for a value it does not have
    (!s.is_empty() && s != "-").then_some(s)
}

fn int_attr(attrs: &[KeyValue], name: &str, max: i64) -> Option<i64> {
    let v: i64 = attr(attrs, name)?.trim().parse().ok()?;
    (0..=max).contains(&v).then_some(v)
}

/// keygate's logfmt filter state: `decision=allowed key_id=k1 account=acme plan=free` (values
/// hold no space, `=`, quote or backslash; `-` is none).
pub fn logfmt<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && *v != "-")
}

/// A short identifier as the dashboard shows it: bounded, visible ASCII only.
fn field(s: &str) -> String {
    s.chars()
        .take(MAX_FIELD_CHARS)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

fn record(
    attrs: &[KeyValue],
    nanos: u64,
    now_ms: i64,
    redact_prefixes: &[String],
) -> Option<HistoryRecord> {
    let kg = attr(attrs, ATTR_KEYGATE)?;
    let key_id = logfmt(&kg, "key_id")?;
    let at_ms = i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX);
    // an instant from the future (a wrong clock) is now; one before 2000 too
    let at_ms = if (946_684_800_000..=now_ms + 60_000).contains(&at_ms) {
        at_ms
    } else {
        now_ms
    };
    let path = attr(attrs, ATTR_PATH).unwrap_or(Cow::Borrowed("/"));
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let (req_body, resp_body) =
        match attr(attrs, ATTR_BODIES).and_then(|b| serde_json::from_str::<Bodies>(&b).ok()) {
            Some(b) => (
                b.req.map(|e| bound_excerpt(e, redact_prefixes)),
                b.resp.map(|e| bound_excerpt(e, redact_prefixes)),
            ),
            None => (None, None),
        };
    Some(HistoryRecord {
        key_id: field(key_id),
        account: logfmt(&kg, "account").map(field).unwrap_or_default(),
        plan: logfmt(&kg, "plan").map(field).unwrap_or_default(),
        at_ms,
        method: attr(attrs, ATTR_METHOD)
            .map(|m| field(&m).chars().take(16).collect())
            .unwrap_or_else(|| "-".into()),
        path: text(&redact_spelled(path, redact_prefixes), MAX_PATH_CHARS).0,
        status: int_attr(attrs, ATTR_STATUS, 999)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0),
        duration_ms: int_attr(attrs, ATTR_DURATION, MAX_MILLIS),
        upstream_ms: int_attr(attrs, ATTR_UPSTREAM, MAX_MILLIS),
        bytes_in: int_attr(attrs, ATTR_BYTES_IN, MAX_BYTES).unwrap_or(0),
        bytes_out: int_attr(attrs, ATTR_BYTES_OUT, MAX_BYTES).unwrap_or(0),
        decision: logfmt(&kg, "decision").map(field).unwrap_or_default(),
        // a value the client may choose (Envoy keeps an internal client's x-request-id)
        request_id: attr(attrs, ATTR_REQUEST_ID)
            .map(|r| field(&redact_spelled(&r, redact_prefixes)))
            .unwrap_or_default(),
        req_body,
        resp_body,
    })
}

/// At most `max` characters, control characters but newline and tab shown as U+FFFD; whether
/// it was cut.
fn text(s: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(s.len().min(max));
    for (n, c) in s.chars().enumerate() {
        if n == max || out.len() + c.len_utf8() > MAX_EXCERPT_BYTES {
            return (out, true);
        }
        out.push(if c.is_control() && c != '\n' && c != '\t' && c != '\r' {
            '\u{fffd}'
        } else {
            c
        });
    }
    (out, false)
}

fn bound_excerpt(e: Excerpt, redact_prefixes: &[String]) -> Excerpt {
    let (body, cut) = text(&redact_spelled(&e.text, redact_prefixes), MAX_EXCERPT_BYTES);
    Excerpt {
        content_type: text(&e.content_type, MAX_FIELD_CHARS).0,
        bytes: e.bytes,
        text: body,
        truncated: e.truncated || cut,
        omitted: e.omitted.map(|o| text(&o, MAX_FIELD_CHARS).0),
    }
}

/// Masks every key-shaped token: one of `prefixes` (`kgb_`, …) at a word's start, followed by
/// at least 8 of `[0-9A-Za-z_]` (the service's keys, the demo's readable keys, a key cut short);
/// the same rule keygate's excerpt filter applies.
pub fn redact<'a>(s: &'a str, prefixes: &[String]) -> Cow<'a, str> {
    keygate::excerpt::mask_prefixed(s, prefixes)
}

/// `redact`, also where a key is percent-encoded (`kgb%5F…`, `%6Bgb_…`: the same URI once its
/// unreserved characters are decoded) or JSON-escaped (`kgb\u005f…`). Where something is
/// masked, the decoded form is kept; elsewhere the text is kept as sent.
pub fn redact_spelled<'a>(s: &'a str, prefixes: &[String]) -> Cow<'a, str> {
    let masked = redact(s, prefixes);
    if !s.contains('%') && !s.contains("\\u") {
        return masked;
    }
    let decoded = decode_unreserved(&masked);
    match redact(&decoded, prefixes) {
        Cow::Owned(m) => Cow::Owned(m),
        Cow::Borrowed(_) => masked,
    }
}

/// Decodes `%XX` and `\u00XX` where they stand for an unreserved character (RFC 3986:
/// letters, digits, `-._~`); everything else is left as it is.
fn decode_unreserved(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let (hex, used) = match b[i] {
            b'%' => (b.get(i + 1..i + 3), 3),
            // `\\u005f` too: a JSON string echoed inside another
            b'\\' => {
                let k = b[i..].iter().take_while(|c| **c == b'\\').count();
                match b.get(i + k..i + k + 3) {
                    Some(b"u00") => (b.get(i + k + 3..i + k + 5), k + 5),
                    _ => (None, 1),
                }
            }
            _ => (None, 1),
        };
        if let Some(c) = hex
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(c));
            i += used;
            continue;
        }
        // a run of backslashes goes whole (read once: linear in any text)
        let n = match b[i] {
            b'\\' => b[i..].iter().take_while(|c| **c == b'\\').count(),
            _ => s[i..].chars().next().map_or(1, char::len_utf8),
        };
        out.push_str(&s[i..i + n]);
        i += n;
    }
    out
}

/// The default prefixes `redact` masks: the service's own key format.
pub fn default_prefixes() -> Vec<String> {
    ["kgb_", "kgp_", "kgn_"].map(String::from).to_vec()
}

// --------------------------------------------------------------------------------------------
// The usage chart: requests per day by status class, an SVG drawn on the server (numbers and
// dates only: nothing a client sent reaches it)
// --------------------------------------------------------------------------------------------

/// Counts of one day, by class (`CLASSES`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DayCounts {
    pub day: i64,
    pub counts: [u64; 5],
}

impl DayCounts {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn date(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD`, if it is one.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    (date(day) == s).then_some(day)
}

/// Every day from `from` to `to` (inclusive) with its counts (zero where `rows` has none).
pub fn fill_days(rows: &[DayCounts], from: i64, to: i64) -> Vec<DayCounts> {
    (from..=to)
        .map(|day| {
            let mut c = DayCounts {
                day,
                counts: [0; 5],
            };
            for r in rows.iter().filter(|r| r.day == day) {
                for (a, b) in c.counts.iter_mut().zip(r.counts) {
                    *a += b;
                }
            }
            c
        })
        .collect()
}

/// A stacked bar chart of `days` (one bar a day, one segment per class), as SVG markup.
pub fn chart_svg(days: &[DayCounts]) -> String {
    use std::fmt::Write;
    const W: usize = 720;
    const H: usize = 180;
    const TOP: usize = 16;
    const BOTTOM: usize = 22;
    let max = days.iter().map(DayCounts::total).max().unwrap_or(0).max(1);
    let n = days.len().max(1);
    let slot = W as f64 / n as f64;
    let bar = (slot * 0.8).max(1.0);
    let plot = (H - TOP - BOTTOM) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="usage-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="requests per day by status class (highest day: {max})">"#
    );
    let _ = write!(
        s,
        r#"<text class="axis" x="0" y="11">{max} requests</text><line class="axis" x1="0" y1="{b}" x2="{W}" y2="{b}"/>"#,
        b = H - BOTTOM
    );
    for (i, d) in days.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar) / 2.0;
        let mut y = (H - BOTTOM) as f64;
        let _ = write!(
            s,
            r#"<g class="day" data-day="{}" data-total="{}">"#,
            date(d.day),
            d.total()
        );
        for (c, count) in d.counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let h = plot * *count as f64 / max as f64;
            y -= h;
            let _ = write!(
                s,
                r#"<rect class="bar c{cls}" data-class="{cls}" data-count="{count}" x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}"><title>{date}: {count} {cls}</title></rect>"#,
                cls = CLASSES[c],
                date = date(d.day),
            );
        }
        s.push_str("</g>");
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            s,
            r#"<text class="axis" x="0" y="{y}">{}</text><text class="axis end" x="{W}" y="{y}" text-anchor="end">{}</text>"#,
            date(first.day),
            date(last.day),
            y = H - 6
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
