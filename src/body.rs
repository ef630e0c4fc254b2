//! Request bodies on routes whose owner check reads them: which bodies keygate reads, and how.
//!
//! The rule is the query's: a body is read every way an upstream may read it, or refused (400
//! `request-ambiguous`). Most of it is decided from the headers alone ([`reading`]), before any
//! of the request reaches the upstream:
//! - the media type: one `Content-Type`, a single `type/subtype` of token bytes with simple
//!   parameters. A comma anywhere, a space or any other byte inside the type, a second header,
//!   none at all: refused (PHP cuts the type at `;`, `,` or a space, Rack at `;` or `,`, so
//!   `form, x/y+json` is a form to them and JSON to a reader of its end);
//! - the charset: none, or UTF-8. Any other (ASP.NET Core decodes forms and JSON in UTF-16,
//!   UTF-32, Latin-1 and more; UTF-7 reads `+AF8-id` as `_id`), two of them, or an RFC 2231
//!   extended parameter (`charset*=utf-8''utf-7`, which Django 4.2 decodes the form with):
//!   refused;
//! - the content coding: none or `identity`. `gzip`, `deflate`, `br` and the rest are refused
//!   (Express's body-parser and ASP.NET Core's request decompression inflate them; keygate would
//!   read the compressed bytes);
//! - the types read: forms (`application/x-www-form-urlencoded`) and JSON (`application/json`,
//!   any `+json`). Multipart, `text/plain`, every other type: refused.
//!
//! Then the body itself ([`owner_values`]): a byte-order mark or a NUL byte is refused (readers
//! that detect UTF-16 or UTF-32 read another text; C-string readers stop at the NUL); a form's
//! fields are read like the query's (`query::lenient_is`); a form that begins with `{` or `[` is
//! read as JSON too, and must be JSON (handlers that decode JSON whatever the type says: Go's
//! `json.NewDecoder(r.Body)`, which also ignores what follows the first value, Flask's
//! `get_json(force=True)`); a JSON object that names a member twice is refused (Go's gjson and
//! fastjson and simdjson read the first, most others the last); a JSON number names a resource
//! only as an integer within 2^53 (past it, JavaScript and Go's `interface{}` read another one).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::credential::trim_ows;
use crate::query;

/// The largest body an owner check reads; a longer one is refused (413).
pub const MAX_OWNER_BODY: usize = 65_536;

/// How a body on an owner route is read, decided from the request's headers ([`reading`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Form fields, and a JSON object's members when the body is one.
    Form,
    /// A JSON object's members; a body that is not JSON is refused.
    Json,
}

/// How the body of a request with these `Content-Type` and `Content-Encoding` header values
/// (every occurrence, in order) is read, or why it is refused.
pub fn reading(
    content_types: &[&[u8]],
    content_encodings: &[&[u8]],
) -> Result<Reading, &'static str> {
    if compressed(content_encodings) {
        return Err("the body is compressed (Content-Encoding): upstreams that inflate it would read what keygate cannot; send it uncompressed");
    }
    let ct = match content_types {
        [] => return Err("a body here needs a Content-Type (a form or JSON)"),
        [one] => *one,
        _ => return Err(TWO_TYPES),
    };
    let essence = media_type(ct)?;
    if essence.eq_ignore_ascii_case(FORM_TYPE) {
        Ok(Reading::Form)
    } else if is_json(essence) {
        Ok(Reading::Json)
    } else {
        Err("this route checks which resource the request names, and reads form or JSON bodies only")
    }
}

/// How a POST's body is read for a method override in it: a `_method` form field, which Rack's
/// MethodOverride (Rails), Laravel, Symfony, Spring's HiddenHttpMethodFilter and Express's
/// method-override honour, turning the POST into the method it names. Forms are read (a POST
/// without a `Content-Type` too: Rack parses it as a form); a `multipart/*` body is refused,
/// keygate does not parse multipart; a `Content-Type` that does not read one way, or a
/// compressed form, is refused if a form reader could take it for one; other types are not read
/// (`None`: those readers take `_method` from form fields only).
pub fn override_reading(
    content_types: &[&[u8]],
    content_encodings: &[&[u8]],
) -> Result<Option<Reading>, &'static str> {
    let one = match content_types {
        [] => FORM_TYPE,
        [one] => *one,
        _ => return Err(TWO_TYPES),
    };
    let names = |w: &[u8]| one.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    if names(b"multipart") {
        return Err(MULTIPART_OVERRIDE);
    }
    match reading(&[one], content_encodings) {
        Ok(Reading::Form) => Ok(Some(Reading::Form)),
        Ok(Reading::Json) => Ok(None),
        // a type that does not read one way, a charset, a coding: refused if a form reader
        // could take it for a form
        Err(why) if names(b"form") => Err(why),
        Err(_) => Ok(None),
    }
}

const FORM_TYPE: &[u8] = b"application/x-www-form-urlencoded";
const TWO_TYPES: &str =
    "the request has two Content-Type headers, which upstreams read differently";

/// Whether a content coding other than `identity` is named.
fn compressed(content_encodings: &[&[u8]]) -> bool {
    content_encodings.iter().any(|v| {
        v.split(|&c| c == b',').any(|coding| {
            let coding = trim_ows(coding);
            !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity")
        })
    })
}

const MULTIPART_OVERRIDE: &str = "a multipart POST on a route whose rules depend on the method: keygate does not read multipart bodies for a `_method` field that would turn the POST into another method; send the request with its own method, or the form urlencoded";

/// The essence (`type/subtype`) of a `Content-Type` value keygate reads one way only: a single
/// `token/token`, parameters `token=token` or `token="text"`, a UTF-8 charset at most.
fn media_type(v: &[u8]) -> Result<&[u8], &'static str> {
    const AMBIGUOUS: &str =
        "the Content-Type does not read one way (upstreams cut a media type at `;`, `,` or a space)";
    if v.contains(&b',') {
        return Err(AMBIGUOUS);
    }
    let mut parts = trim_ows(v).split(|&c| c == b';');
    let essence = trim_ows(parts.next().unwrap_or_default());
    let mut halves = essence.splitn(2, |&c| c == b'/');
    let (Some(ty), Some(sub)) = (halves.next(), halves.next()) else {
        return Err(AMBIGUOUS);
    };
    if !is_token(ty) || !is_token(sub) {
        return Err(AMBIGUOUS);
    }
    let mut charset = false;
    for param in parts {
        let param = trim_ows(param);
        if param.is_empty() {
            continue;
        }
        let Some(eq) = param.iter().position(|&c| c == b'=') else {
            return Err(AMBIGUOUS);
        };
        let (name, value) = (&param[..eq], &param[eq + 1..]);
        let value = match value {
            [b'"', inner @ .., b'"'] if !inner.iter().any(|&c| c == b'"' || c == b'\\') => inner,
            v if is_token(v) => v,
            _ => return Err(AMBIGUOUS),
        };
        if !is_token(name) {
            return Err(AMBIGUOUS);
        }
        if name.contains(&b'*') {
            // RFC 2231 / 8187 extended parameters: Django (4.2) reads `charset*=utf-8''utf-7`
            // as the charset and decodes the body with it, Werkzeug and Go's `mime` decode
            // them too; keygate would have read the form as UTF-8
            return Err("the Content-Type has an extended parameter (`name*=`), which some readers decode into the body's charset");
        }
        if name.eq_ignore_ascii_case(b"charset") {
            if charset {
                return Err("the Content-Type names its charset twice");
            }
            charset = true;
            if !value.eq_ignore_ascii_case(b"utf-8") && !value.eq_ignore_ascii_case(b"utf8") {
                return Err("the body's charset is not UTF-8: upstreams that decode it (ASP.NET Core) would read another text than keygate");
            }
        }
    }
    Ok(essence)
}

/// RFC 9110 `token`: one or more `tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// `application/json` or a `+json` type (the essence), case ignored.
fn is_json(essence: &[u8]) -> bool {
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// The values a body gives for the owner parameter `name` (see the module's rules), each as an
/// upstream may read it; `Err`: the body is refused.
pub fn owner_values(
    name: &str,
    reading: Reading,
    body: &[u8],
) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    if body.is_empty() {
        return Ok(out);
    }
    if body.starts_with(b"\xef\xbb\xbf")
        || body.starts_with(b"\xfe\xff")
        || body.starts_with(b"\xff\xfe")
    {
        return Err(
            "the body begins with a byte-order mark, which some readers skip and others keep",
        );
    }
    if body.contains(&0) {
        return Err("the body holds NUL bytes (UTF-16 or UTF-32 to readers that detect it, the end of a string to others)");
    }
    let want = query::lenient_name(name.as_bytes());
    let looks_json = matches!(
        body.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if reading == Reading::Form {
        form_values(&want, body, &mut out);
    }
    if reading == Reading::Json || looks_json {
        if let Value::Object(m) = json_of(body)? {
            for (k, v) in &m {
                if query::lenient_is(k.as_bytes(), &want) {
                    json_values(v, 0, &mut out);
                }
            }
        }
    }
    Ok(out)
}

/// The body as JSON, refused when it is not JSON (as a whole: Go's decoder would read a first
/// value and ignore the rest) or when its object names a member twice.
fn json_of(body: &[u8]) -> Result<Value, &'static str> {
    const NOT_JSON: &str = "the body is not valid JSON";
    if body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{') {
        let mut de = serde_json::Deserializer::from_slice(body);
        match de.deserialize_any(UniqueMembers) {
            Ok(true) => {}
            Ok(false) => return Err("the body's JSON object names a member twice, which upstreams read differently (the first or the last)"),
            Err(_) => return Err(NOT_JSON),
        }
    }
    serde_json::from_slice(body).map_err(|_| NOT_JSON)
}

/// Whether a JSON object's members all have distinct names (after unescaping). A
/// `serde_json::Value` would keep only the last of two.
struct UniqueMembers;

impl<'de> Visitor<'de> for UniqueMembers {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(k) = m.next_key::<String>()? {
            if seen.contains(&k) {
                return Ok(false);
            }
            m.next_value::<Value>()?;
            seen.push(k);
        }
        Ok(true)
    }

    // not an object (not called: only a body that begins with `{` is walked); spelled out so
    // that no error message formats a float into the build
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<bool, A::Error> {
        while s.next_element::<Value>()?.is_some() {}
        Ok(true)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(true)
    }
}

/// Form fields (split as the query is, `query::params_either`): every field an upstream may take for the
/// owner parameter, its value read literally and with `+` as a space (both must be owned).
fn form_values(want: &[u8], body: &[u8], out: &mut Vec<Vec<u8>>) {
    for p in query::params_either(body) {
        if !query::lenient_is(p.name, want) {
            continue;
        }
        let raw = p.value.unwrap_or(b"");
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&c| if c == b'+' { b' ' } else { c })
            .collect();
        for v in [query::percent_decode(raw), query::percent_decode(&spaced)] {
            out.push(v.unwrap_or_else(|| b"\0undecodable".to_vec()));
        }
    }
}

/// The largest integer every JSON reader reads exactly: 2^53 - 1. JavaScript (Express) and Go's
/// `interface{}` decoding read numbers as doubles: 9007199254740993 is 9007199254740992 to them.
const EXACT_INTEGERS: u64 = (1 << 53) - 1;

fn json_values(v: &Value, depth: usize, out: &mut Vec<Vec<u8>>) {
    match v {
        Value::String(s) => out.push(s.as_bytes().to_vec()),
        // an integer every reader reads as the same number names that resource; a fraction, an
        // exponent or an integer past 2^53 reads differently (`1.0` is `1` to PHP and
        // JavaScript, big integers round): no resource
        Value::Number(n)
            if n.as_u64().is_some_and(|u| u <= EXACT_INTEGERS)
                || n.as_i64()
                    .is_some_and(|i| i.unsigned_abs() <= EXACT_INTEGERS) =>
        {
            out.push(n.to_string().into_bytes())
        }
        Value::Array(a) if depth == 0 => a.iter().for_each(|x| json_values(x, 1, out)),
        // null, booleans, objects, nested arrays, other numbers: the upstream's reading is
        // anyone's guess
        _ => out.push(b"\0not-a-resource".to_vec()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"application/x-www-form-urlencoded";

    #[test]
    fn a_method_override_is_looked_for_in_forms_and_multipart_is_refused() {
        let ok = |ct: &[&[u8]], ce: &[&[u8]]| override_reading(ct, ce);
        assert_eq!(ok(&[FORM], &[]), Ok(Some(Reading::Form)));
        assert_eq!(
            ok(&[], &[]),
            Ok(Some(Reading::Form)),
            "Rack: no type is a form"
        );
        assert_eq!(
            ok(
                &[b"Application/X-WWW-Form-Urlencoded; charset=utf-8"],
                &[b"identity"]
            ),
            Ok(Some(Reading::Form))
        );
        for other in [
            &b"application/json"[..],
            b"text/plain",
            b"application/octet-stream",
            b"application/json; charset=utf-16",
            b"image/png, image/gif",
        ] {
            assert_eq!(ok(&[other], &[b"gzip"]), Ok(None), "{other:?}");
        }
        for refused in [
            &b"multipart/form-data; boundary=x"[..],
            b"MULTIPART/mixed",
            b"multipart/form-data boundary=x",
            b"application/x-www-form-urlencoded, text/plain",
            b"text/plain, application/x-www-form-urlencoded",
            b"application/x-www-form-urlencoded; charset=utf-16",
            b"application/x-www-form-urlencoded x",
        ] {
            assert!(ok(&[refused], &[]).is_err(), "{refused:?}");
        }
        assert!(ok(&[FORM], &[b"gzip"]).is_err());
        assert!(ok(&[FORM, b"text/plain"], &[]).is_err());
    }

    fn read(ct: &[u8]) -> Result<Reading, &'static str> {
        reading(&[ct], &[])
    }

    #[test]
    fn media_types_read_one_way_or_are_refused() {
        for ct in [
            &b"application/x-www-form-urlencoded"[..],
            b"Application/X-WWW-Form-Urlencoded",
            b"  application/x-www-form-urlencoded ; charset=UTF-8",
            b"application/x-www-form-urlencoded;charset=\"utf-8\"",
            b"application/x-www-form-urlencoded; charset=utf8;",
        ] {
            assert_eq!(
                read(ct),
                Ok(Reading::Form),
                "{}",
                String::from_utf8_lossy(ct)
            );
        }
        for ct in [
            &b"application/json"[..],
            b"application/json; charset=utf-8",
            b"application/vnd.api+json",
            b"APPLICATION/MERGE-PATCH+JSON",
        ] {
            assert_eq!(
                read(ct),
                Ok(Reading::Json),
                "{}",
                String::from_utf8_lossy(ct)
            );
        }
        for ct in [
            // PHP and Rack cut at `,` or a space: a form to them, JSON by its end
            &b"application/x-www-form-urlencoded, x/y+json"[..],
            b"application/x-www-form-urlencoded x/y+json",
            b"application/x-www-form-urlencoded\tx/y+json",
            b"application/json,application/x-www-form-urlencoded",
            b"application/json; charset=utf-8, text/plain",
            b"application /json",
            b"application/ json",
            b"application/json;charset = utf-8",
            b"application/json; x",
            b"application/json; x=\"a\\\"b\"",
            b"application/json; x=\"a;charset=utf-16\"",
            b"application/x-www-form-urlencoded\x0bx/y+json",
            b"+json",
            b"/+json",
            b"json",
            b"",
            // charsets other than UTF-8, or two
            b"application/x-www-form-urlencoded; charset=utf-16",
            b"application/x-www-form-urlencoded; charset=UTF-32LE",
            b"application/json; charset=utf-16be",
            b"application/x-www-form-urlencoded; charset=iso-8859-1",
            b"application/x-www-form-urlencoded; charset=utf-7",
            b"application/x-www-form-urlencoded; charset=utf-8; charset=utf-16",
            b"application/x-www-form-urlencoded; CHARSET=\"utf-16\"",
            // RFC 2231 extended parameters (Django 4.2 decodes the form in that charset)
            b"application/x-www-form-urlencoded; charset*=utf-8''utf-7",
            b"application/x-www-form-urlencoded; charset=utf-8; charset*=utf-8''cp037",
            b"application/json; charset*0=utf-16",
            // types keygate does not read
            b"multipart/form-data; boundary=x",
            b"text/plain",
            b"application/xml",
            b"application/x-json",
            b"text/json",
        ] {
            assert!(read(ct).is_err(), "{}", String::from_utf8_lossy(ct));
        }
        assert!(reading(&[], &[]).is_err());
        assert!(reading(&[FORM, FORM], &[]).is_err());
    }

    #[test]
    fn content_codings_other_than_identity_are_refused() {
        assert_eq!(reading(&[FORM], &[b"identity"]), Ok(Reading::Form));
        assert_eq!(
            reading(&[FORM], &[b" Identity , identity"]),
            Ok(Reading::Form)
        );
        for ce in [
            &b"gzip"[..],
            b"deflate",
            b"br",
            b"identity, gzip",
            b"x-gzip",
            b"zstd",
        ] {
            assert!(reading(&[FORM], &[ce]).is_err());
        }
        assert!(reading(&[FORM], &[b"identity", b"gzip"]).is_err());
    }

    fn values(r: Reading, body: &str) -> Result<Vec<Vec<u8>>, &'static str> {
        owner_values("_id", r, body.as_bytes())
    }

    fn strs(v: Vec<Vec<u8>>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    #[test]
    fn json_duplicates_are_refused_and_spellings_all_read() {
        assert!(values(Reading::Json, r#"{"_id":"agg-1","_id":"victim"}"#).is_err());
        assert!(values(
            Reading::Json,
            r#"{"_id":"agg-1","x":1,"\u005fid":"victim"}"#
        )
        .is_err());
        assert!(values(Reading::Form, r#"{"_id":"agg-1","_id":"victim"}"#).is_err());
        // nested objects are no resource whatever they hold
        assert!(values(Reading::Json, r#"{"a":{"b":1,"b":2}}"#)
            .unwrap()
            .is_empty());
        let got = strs(
            values(
                Reading::Json,
                r#"{"_ID":"agg-1","name":"x","_id":"victim"}"#,
            )
            .unwrap(),
        );
        assert_eq!(got, ["agg-1", "victim"]);
        // escaped names decode as every JSON reader decodes them
        let got = strs(values(Reading::Json, r#"{"\u005fid":"v"}"#).unwrap());
        assert_eq!(got, ["v"]);
        // a member name cut at NUL
        let got = strs(values(Reading::Json, r#"{"_id\u0000x":"v"}"#).unwrap());
        assert_eq!(got, ["v"]);
        assert!(values(Reading::Json, r#"{"_id":"a"} {"_id":"b"}"#).is_err());
        assert!(values(Reading::Json, "[1]").unwrap().is_empty());
        assert!(values(Reading::Json, "\"x\"").unwrap().is_empty());
        assert!(values(Reading::Json, "{").is_err());
    }

    #[test]
    fn forms_that_are_json_are_read_as_json_too() {
        let got = strs(values(Reading::Form, r#" {"_id":"victim"}"#).unwrap());
        assert_eq!(got, ["victim"]);
        // Go's decoder reads the first value and ignores what follows: refused
        assert!(values(Reading::Form, r#"{"_id":"victim"}&_id=agg-1"#).is_err());
        assert!(values(Reading::Form, "[1]").unwrap().is_empty());
        let got = strs(values(Reading::Form, "_id=a+1&name=x").unwrap());
        assert_eq!(got, ["a+1", "a 1"]);
        assert!(values(Reading::Form, "name={").unwrap().is_empty());
        let got = strs(values(Reading::Form, "_id%00x=v").unwrap());
        assert_eq!(got, ["v", "v"]);
    }

    #[test]
    fn bodies_with_a_bom_or_nul_are_refused() {
        assert!(owner_values("_id", Reading::Form, b"\xef\xbb\xbf_id=v").is_err());
        assert!(owner_values("_id", Reading::Json, b"\xff\xfe{\x00}\x00").is_err());
        assert!(owner_values("_id", Reading::Json, b"\xfe\xff\x00{").is_err());
        assert!(owner_values("_id", Reading::Form, b"_\x00i\x00d\x00=\x00v\x00").is_err());
        assert!(owner_values("_id", Reading::Form, b"").unwrap().is_empty());
        assert!(owner_values("_id", Reading::Json, b"").unwrap().is_empty());
    }

    #[test]
    fn json_numbers_name_a_resource_only_as_every_reader_reads_them() {
        assert_eq!(
            strs(values(Reading::Json, r#"{"_id":9007199254740991}"#).unwrap()),
            ["9007199254740991"]
        );
        assert_eq!(
            strs(values(Reading::Json, r#"{"_id":-42}"#).unwrap()),
            ["-42"]
        );
        for body in [
            r#"{"_id":9007199254740993}"#,
            r#"{"_id":-9007199254740993}"#,
            r#"{"_id":18446744073709551615}"#,
            r#"{"_id":1.0}"#,
            r#"{"_id":1e2}"#,
            r#"{"_id":[7, 9007199254740993]}"#,
        ] {
            let got = values(Reading::Json, body).unwrap();
            assert!(
                got.iter().any(|v| v.starts_with(b"\0")),
                "{body}: {:?}",
                strs(got)
            );
        }
    }

    #[test]
    fn json_values_of_every_shape() {
        assert_eq!(
            strs(values(Reading::Json, r#"{"_Id":["a",7]}"#).unwrap()),
            ["a", "7"]
        );
        assert_eq!(
            values(Reading::Json, r#"{"_id":{"$ne":"x"}}"#)
                .unwrap()
                .len(),
            1
        );
        assert!(values(Reading::Json, r#"{"event":{"_id":"nested"}}"#)
            .unwrap()
            .is_empty());
        assert_eq!(values(Reading::Json, r#"{"_id":[[1]]}"#).unwrap().len(), 1);
    }

    proptest::proptest! {
        /// Any headers and any body: an answer, never a panic; a body read as JSON names every
        /// value of every duplicate member.
        #[test]
        fn any_input_reads_or_is_refused(
            ct in proptest::collection::vec(proptest::num::u8::ANY, 0..48),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let _ = reading(&[&ct], &[]);
            let _ = owner_values("_id", Reading::Form, &body);
            let _ = owner_values("_id", Reading::Json, &body);
        }

        #[test]
        fn a_member_named_twice_is_refused(vals in proptest::collection::vec("[a-z0-9]{1,6}", 2..6),
                                           pad in proptest::collection::vec("[a-z]{1,4}", 0..3)) {
            let mut members: Vec<String> = vals.iter().map(|v| format!("\"_id\":\"{v}\"")).collect();
            members.extend(pad.iter().enumerate().map(|(i, p)| format!("\"p{i}{p}\":1")));
            let body = format!("{{{}}}", members.join(","));
            proptest::prop_assert!(owner_values("_id", Reading::Json, body.as_bytes()).is_err());
            proptest::prop_assert!(owner_values("_id", Reading::Form, body.as_bytes()).is_err());
        }
    }
}
