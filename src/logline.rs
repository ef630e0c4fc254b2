//! The request as keygate's access-log state shows it: ` path=… request_id=…`, after
//! `decision=… key_id=… account=… plan=…` (`worker::set_log_fields`).
//!
//! The request history's line (`envoy/docs/history.md`) takes the path and the request id from
//! here, not from Envoy's `%PATH(NQ)%` and `%REQ(X-REQUEST-ID)%`: a client may write a key into
//! either (a key without a known prefix, such as one of keygate's own configuration, is masked by
//! nothing downstream), and whatever Envoy exports reaches every collector. keygate knows the
//! request's credential, so it publishes both with every occurrence of it replaced by
//! `[REDACTED]` (the excerpt filter's mark): as sent, and percent-encoded in any spelling (`%5F`,
//! `%5f`, `%61` for `a`, encoded twice), where the decoded form is shown instead. Without the
//! credential in them (the common case) they are published as sent: one substring search each.
//!
//! Values read one way only in the line (logfmt, split at spaces): any byte outside visible ASCII,
//! and `"` and `\`, is percent-encoded, so a client cannot add or fake a field. Both are bounded
//! (`MAX_PATH`, `MAX_REQUEST_ID` bytes); `-` is none.

use std::borrow::Cow;

use crate::excerpt::REDACTED;

/// The most bytes of the path published (the key service keeps 512 characters).
pub const MAX_PATH: usize = 1024;
/// The most bytes of the request id published (the key service keeps 128).
pub const MAX_REQUEST_ID: usize = 128;
/// Secrets shorter than this are not searched for (as in the excerpt filter).
pub const MIN_SECRET: usize = 4;
/// Percent-decoding rounds searched (`%2561` is `a` after two).
const DECODE_ROUNDS: usize = 3;

/// Appends ` path=<path without its query> request_id=<id>` to `out`, with every occurrence of
/// each of `secrets` replaced (see the module's comment).
pub fn push_request(
    out: &mut String,
    path: Option<&[u8]>,
    request_id: Option<&[u8]>,
    secrets: &[&[u8]],
) {
    let path = path.map(|p| {
        let end = p.iter().position(|c| matches!(c, b'?' | b'#'));
        &p[..end.unwrap_or(p.len())]
    });
    out.push_str(" path=");
    push_value(out, path, secrets, MAX_PATH);
    out.push_str(" request_id=");
    push_value(out, request_id, secrets, MAX_REQUEST_ID);
}

fn push_value(out: &mut String, v: Option<&[u8]>, secrets: &[&[u8]], max: usize) {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        out.push('-');
        return;
    };
    // the common case, copied whole: nothing to escape or decode, no secret in it
    if v.len() <= max && clean(v, secrets) {
        if let Ok(v) = std::str::from_utf8(v) {
            out.push_str(v);
            return;
        }
    }
    let text = String::from_utf8_lossy(v);
    let shown = redacted(&text, secrets);
    push_escaped(out, &shown, max);
}

/// `v` with every secret replaced, as sent or (where one was found only there) decoded.
fn redacted<'a>(v: &'a str, secrets: &[&[u8]]) -> Cow<'a, str> {
    let mut shown = match replace_all(v, secrets) {
        Some(r) => Cow::Owned(r),
        None => Cow::Borrowed(v),
    };
    let mut probe = String::new();
    for round in 0..DECODE_ROUNDS {
        let from: &str = if round == 0 { &shown } else { &probe };
        if !from.contains('%') {
            break;
        }
        let decoded = percent_decode(from);
        if decoded == from {
            break;
        }
        probe = match replace_all(&decoded, secrets) {
            Some(r) => {
                shown = Cow::Owned(r.clone());
                r
            }
            None => decoded,
        };
    }
    shown
}

/// `v` with every secret (of `MIN_SECRET` bytes or more) replaced, the longest first (one that
/// holds another is replaced whole); `None` without one.
fn replace_all(v: &str, secrets: &[&[u8]]) -> Option<String> {
    // a few secrets at most: put in order by insertion (no sort's code in the module)
    let mut longest_first: Vec<&[u8]> = Vec::with_capacity(secrets.len());
    for &s in secrets.iter().filter(|s| s.len() >= MIN_SECRET) {
        let at = longest_first.iter().position(|o| o.len() < s.len());
        longest_first.insert(at.unwrap_or(longest_first.len()), s);
    }
    let mut out: Option<String> = None;
    for s in longest_first {
        let Ok(s) = std::str::from_utf8(s) else {
            continue;
        };
        let cur = out.as_deref().unwrap_or(v);
        if cur.contains(s) {
            out = Some(cur.replace(s, REDACTED));
        }
    }
    out
}

/// Every `%XX` decoded (`+` is itself: a path's, not a form's); invalid UTF-8 as U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if let (b'%', Some(h), Some(l)) = (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A byte a value shows as it is: visible ASCII but `"` and `\`.
fn plain(c: u8) -> bool {
    (0x21..0x7f).contains(&c) && c != b'"' && c != b'\\'
}

/// Whether `v` is shown as it is: only `plain` bytes (no `%` either), none of `secrets` in it.
fn clean(v: &[u8], secrets: &[&[u8]]) -> bool {
    v.iter().all(|&c| SHOWN[usize::from(c)])
        && !secrets
            .iter()
            .any(|s| s.len() >= MIN_SECRET && occurs(v, s))
}

/// The bytes `clean` lets through: `plain` ones but `%`.
const SHOWN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0x21;
    while c < 0x7f {
        t[c] = c != b'"' as usize && c != b'\\' as usize && c != b'%' as usize;
        c += 1;
    }
    t
};

/// Text longer than this is searched with a searcher (no quadratic worst case).
const SHORT: usize = 256;

/// Whether `needle` occurs in `hay`: where `hay` is short (a path, a request id: no searcher to
/// build), each place its first byte is found is compared; where long, by the standard
/// library's two-way search.
fn occurs(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let Some(last) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    if hay.len() > SHORT {
        return String::from_utf8_lossy(hay).contains(&*String::from_utf8_lossy(needle));
    }
    let mut from = 0;
    while let Some(at) = hay
        .get(from..=last)
        .and_then(|h| h.iter().position(|&c| c == first))
    {
        if hay[from + at..].starts_with(needle) {
            return true;
        }
        from += at + 1;
    }
    false
}

/// `v` as one logfmt value of at most `max` bytes: visible ASCII but `"` and `\` as it is,
/// every other byte as `%XX` (an escape is never cut).
fn push_escaped(out: &mut String, v: &str, max: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut room = max;
    for &c in v.as_bytes() {
        let plain = plain(c);
        let need = if plain { 1 } else { 3 };
        if need > room {
            break;
        }
        room -= need;
        if plain {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: &str = "embedded-acme-key-0003";

    fn line(path: &str, id: Option<&str>, secrets: &[&str]) -> String {
        let s: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        let mut out = String::new();
        push_request(&mut out, Some(path.as_bytes()), id.map(str::as_bytes), &s);
        out
    }

    #[test]
    fn without_the_key_both_are_published_as_sent_the_query_cut() {
        assert_eq!(
            line("/v1/x%20y?_apikey=abc#f", Some("f00d-1"), &[KEY]),
            " path=/v1/x%20y request_id=f00d-1"
        );
        assert_eq!(line("", None, &[KEY]), " path=- request_id=-");
        assert_eq!(line("/?q", None, &[]), " path=/ request_id=-");
    }

    #[test]
    fn the_key_is_replaced_in_the_path_and_the_request_id() {
        assert_eq!(
            line(&format!("/emb/{KEY}/x/{KEY}"), Some(KEY), &[KEY]),
            " path=/emb/[REDACTED]/x/[REDACTED] request_id=[REDACTED]"
        );
        assert_eq!(
            line("/a", Some(&format!("req-{KEY}-1")), &[KEY]),
            " path=/a request_id=req-[REDACTED]-1"
        );
    }

    #[test]
    fn every_percent_encoded_spelling_is_found_and_shown_decoded() {
        for spelled in [
            "embedded%2Dacme-key-0003",
            "embedded%2dacme%2Dkey%2d0003",
            "%65mbedded-acme-key-0003",
            "%2565mbedded-acme-key-0003",
            "%252565mbedded-acme-key-0003",
        ] {
            let out = line(&format!("/p/{spelled}/%20x"), Some(spelled), &[KEY]);
            assert_eq!(
                out, " path=/p/[REDACTED]/%20x request_id=[REDACTED]",
                "{spelled}"
            );
        }
        // a secret that is itself percent-encoded text is found as sent
        assert_eq!(
            line("/p/ab%41cd", None, &["ab%41cd"]),
            " path=/p/[REDACTED] request_id=-"
        );
    }

    #[test]
    fn no_field_can_be_added_or_faked() {
        let out = line(
            "/x path=/forged request_id=1\n\"\\\u{2028}é\t",
            Some("a b=c\r\n"),
            &[],
        );
        assert_eq!(
            out,
            " path=/x%20path=/forged%20request_id=1%0A%22%5C%E2%80%A8%C3%A9%09 request_id=a%20b=c%0D%0A"
        );
        assert_eq!(out.split(' ').count(), 3);
        // bytes that are not UTF-8 are shown as U+FFFD, encoded
        let mut o = String::new();
        push_request(&mut o, Some(b"/\xff"), None, &[]);
        assert_eq!(o, " path=/%EF%BF%BD request_id=-");
    }

    #[test]
    fn values_are_bounded_and_an_escape_is_never_cut() {
        let long = format!("/{}", "a".repeat(5000));
        let out = line(&long, Some(&"é".repeat(200)), &[]);
        let (p, r) = out
            .trim_start_matches(" path=")
            .split_once(" request_id=")
            .unwrap();
        assert_eq!(p.len(), MAX_PATH);
        assert!(r.len() <= MAX_REQUEST_ID && r.len() > MAX_REQUEST_ID - 3);
        assert!(r.ends_with(|c: char| c.is_ascii_hexdigit()) && r.len() % 3 == 0);
        // the key is replaced before the value is cut: no part of it is left at the end
        let path = format!("/{}{KEY}", "b".repeat(MAX_PATH - 5));
        let out = line(&path, None, &[KEY]);
        assert!(!out.contains("embed"), "{out}");
    }

    #[test]
    fn occurs_finds_a_needle_in_short_and_long_text() {
        for n in [1, 40, 255, 256, 257, 5000] {
            let hay = format!("{}{KEY}", "x".repeat(n));
            assert!(occurs(hay.as_bytes(), KEY.as_bytes()), "{n}");
            assert!(
                occurs(format!("{KEY}{hay}").as_bytes(), KEY.as_bytes()),
                "{n}"
            );
            assert!(
                !occurs(&hay.as_bytes()[..hay.len() - 1], KEY.as_bytes()),
                "{n}"
            );
        }
        assert!(!occurs(b"abc", b"abcd") && occurs(b"abcd", b"abcd"));
    }

    #[test]
    fn a_secret_that_holds_another_is_replaced_whole() {
        assert_eq!(
            line("/x/abcdefgh/abcd", None, &["abcd", "abcdefgh"]),
            " path=/x/[REDACTED]/[REDACTED] request_id=-"
        );
    }

    #[test]
    fn short_secrets_are_not_searched() {
        assert_eq!(line("/abc", None, &["abc"]), " path=/abc request_id=-");
    }
}
