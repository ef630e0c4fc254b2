//! The query string of `:path`: finding a parameter (percent-decoded, RFC 3986: `+` is a literal
//! plus, not a space) and removing it while keeping every other byte in place and in order.

use crate::hash::hex_val;

/// Percent-decodes `raw`. `None` when a `%` is not followed by two hex digits.
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_val)?;
            let lo = raw.get(i + 2).copied().and_then(hex_val)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-decodes `raw` as the lenient readers do (PHP's `urldecode`, Python's `unquote`,
/// ASP.NET Core, Node's `querystring`): an escape that is not `%` and two hex digits stays as
/// it is, the rest is decoded. So PHP reads `_id%00%zz` as `_id` (decoded, then cut at the NUL).
pub fn percent_decode_lenient(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        let escape = (c == b'%')
            .then(|| {
                let hi = raw.get(i + 1).copied().and_then(hex_val)?;
                let lo = raw.get(i + 2).copied().and_then(hex_val)?;
                Some((hi << 4) | lo)
            })
            .flatten();
        match escape {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Splits a `:path` into (path, query) at the first `?`. The fragment never reaches a proxy.
pub fn split_path(path: &[u8]) -> (&[u8], Option<&[u8]>) {
    match path.iter().position(|&c| c == b'?') {
        Some(i) => (&path[..i], Some(&path[i + 1..])),
        None => (path, None),
    }
}

/// One `name[=value]` pair of a query string, raw (still percent-encoded).
pub struct Param<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
}

pub fn params(query: &[u8]) -> impl Iterator<Item = Param<'_>> {
    pairs(query, |c| c == b'&')
}

/// The pairs of a query string as the most lenient frameworks split it: at `&` and at `;` (Rack
/// and older Rails, Perl's CGI, some Java containers).
pub fn params_lenient(query: &[u8]) -> impl Iterator<Item = Param<'_>> {
    pairs(query, |c| c == b'&' || c == b';')
}

/// The pairs of a query string (or a form) under either split: at `&` and `;`
/// (`params_lenient`), and at `&` alone (PHP, Go, Python, Node, Java, .NET) where that gives
/// another value, i.e. for pairs whose value holds a `;`.
pub fn params_either(query: &[u8]) -> impl Iterator<Item = Param<'_>> {
    params_lenient(query)
        .chain(params(query).filter(|p| p.value.is_some_and(|v| v.contains(&b';'))))
}

fn pairs(query: &[u8], is_sep: fn(u8) -> bool) -> impl Iterator<Item = Param<'_>> {
    query
        .split(move |&c| is_sep(c))
        .map(|pair| match pair.iter().position(|&c| c == b'=') {
            Some(i) => Param {
                name: &pair[..i],
                value: Some(&pair[i + 1..]),
            },
            None => Param {
                name: pair,
                value: None,
            },
        })
}

/// Whether the raw parameter name, percent-decoded, equals `name` (so `%5Fapikey` is `_apikey`
/// and cannot slip a credential past keygate to the upstream).
pub fn name_is(raw: &[u8], name: &str) -> bool {
    if raw == name.as_bytes() {
        return true;
    }
    raw.contains(&b'%') && percent_decode(raw).is_some_and(|d| d == name.as_bytes())
}

/// A parameter name as the most lenient frameworks read it, so that every spelling an upstream
/// may take for `name` compares equal: percent- and form-decoded (`+` is a space; an escape that
/// does not decode kept as it is, as PHP and most others keep it), read up to its
/// first NUL (PHP and other C-string readers stop there: `_id%00x` is `_id`), leading whitespace
/// and control bytes dropped (PHP), other control bytes dropped wherever they are, an array
/// suffix dropped (`_id[]`, `_id[0]`: PHP, Rack, Rails), `.`, space and `[` turned into `_`
/// (PHP), case folded as .NET's and Java's case-insensitive comparisons fold it: ASCII, and the
/// four letters outside ASCII whose case mapping lands in it (`İ`, `ı`, `ſ`, the Kelvin sign:
/// `_ıd` is `_ID` to ASP.NET Core).
pub fn lenient_name(raw: &[u8]) -> Vec<u8> {
    lenient(raw, true, Brackets::Php)
}

/// How a reader takes brackets in a parameter name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Brackets {
    /// PHP: `[` opens an array suffix when a `]` follows, else it reads as `_`.
    Php,
    /// Rack 2 (Rails 6 and 7.0): leading and stray brackets dropped, the name ends at the first
    /// bracket after it (`[_id]`, `]_id`, `_id]`, `_id[` are all `_id`).
    Rack,
}

/// Whether an upstream may read the raw parameter name `raw` as the name whose lenient form
/// (`lenient_name`) is `want`: read up to its first NUL or with its NULs dropped (a reader that
/// skips them), brackets read as PHP or as Rack reads them; any of these readings counts.
pub fn lenient_is(raw: &[u8], want: &[u8]) -> bool {
    if raw.len() < want.len() {
        return false; // no reading makes a name longer than its raw bytes
    }
    let nul = raw.iter().any(|&c| c == b'%' || c == 0);
    let brackets = raw.iter().any(|&c| c == b'[' || c == b']' || c == b'%');
    [
        (true, Brackets::Php),
        (false, Brackets::Php),
        (true, Brackets::Rack),
        (false, Brackets::Rack),
    ]
    .into_iter()
    .filter(|&(cut, b)| (cut || nul) && (b == Brackets::Php || brackets))
    .any(|(cut, b)| lenient(raw, cut, b) == want)
}

/// `lenient_name`, the readings chosen: `cut` reads up to the first NUL, else NULs are dropped
/// like the other control bytes; `brackets` as PHP or as Rack reads them.
fn lenient(raw: &[u8], cut: bool, brackets: Brackets) -> Vec<u8> {
    let plus: Vec<u8> = raw
        .iter()
        .map(|&c| if c == b'+' { b' ' } else { c })
        .collect();
    let mut d = percent_decode_lenient(&plus);
    if cut {
        if let Some(nul) = d.iter().position(|&c| c == 0) {
            d.truncate(nul);
        }
    }
    let start = d
        .iter()
        .position(|&c| c > b' ' && c != 0x7f)
        .unwrap_or(d.len());
    d.drain(..start);
    d.retain(|&c| c >= b' ' && c != 0x7f);
    if d.iter().any(|&c| c >= 0x80) {
        d = fold_outside_ascii(&d);
    }
    match brackets {
        Brackets::Php => {
            if let Some(open) = d.iter().position(|&c| c == b'[') {
                if open > 0 && d[open..].contains(&b']') {
                    d.truncate(open);
                }
            }
        }
        Brackets::Rack => {
            let start = d
                .iter()
                .position(|&c| c != b'[' && c != b']')
                .unwrap_or(d.len());
            d.drain(..start);
            if let Some(end) = d.iter().position(|&c| c == b'[' || c == b']') {
                d.truncate(end);
            }
        }
    }
    for c in d.iter_mut() {
        match *c {
            b'.' | b' ' | b'[' => *c = b'_',
            other => *c = other.to_ascii_lowercase(),
        }
    }
    d
}

/// The letters outside ASCII whose simple case mapping (UnicodeData) is an ASCII letter, as
/// their ASCII letter: U+0130 `İ` and U+0131 `ı` (i), U+017F `ſ` (s), U+212A Kelvin (k).
fn fold_outside_ascii(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len());
    let mut i = 0;
    while i < d.len() {
        let (letter, len) = match &d[i..] {
            [0xc4, 0xb0, ..] | [0xc4, 0xb1, ..] => (b'i', 2),
            [0xc5, 0xbf, ..] => (b's', 2),
            [0xe2, 0x84, 0xaa, ..] => (b'k', 3),
            [c, ..] => (*c, 1),
            [] => break,
        };
        out.push(letter);
        i += len;
    }
    out
}

/// `:path` with every parameter named `name` removed; all other bytes (including empty pairs
/// like `a=1&&b=2`) are kept in order. A query left empty loses its `?`.
pub fn strip_param(path: &[u8], name: &str) -> Vec<u8> {
    let (base, query) = split_path(path);
    let Some(query) = query else {
        return path.to_vec();
    };
    let mut out = Vec::with_capacity(path.len());
    out.extend_from_slice(base);
    let mut first = true;
    for pair in query.split(|&c| c == b'&') {
        let raw_name = match pair.iter().position(|&c| c == b'=') {
            Some(i) => &pair[..i],
            None => pair,
        };
        if name_is(raw_name, name) {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(pair);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn strip(p: &str) -> String {
        String::from_utf8(strip_param(p.as_bytes(), "_apikey")).unwrap()
    }

    #[test]
    fn decodes_percent_and_keeps_plus() {
        assert_eq!(percent_decode(b"a%2Bb+c%7e").unwrap(), b"a+b+c~");
        assert!(percent_decode(b"%").is_none());
        assert!(percent_decode(b"%4").is_none());
        assert!(percent_decode(b"%zz").is_none());
    }

    #[test]
    fn strips_first_middle_last_and_repeats() {
        assert_eq!(strip("/e?_apikey=k&_id=1&name=x"), "/e?_id=1&name=x");
        assert_eq!(strip("/e?_id=1&_apikey=k&name=x"), "/e?_id=1&name=x");
        assert_eq!(strip("/e?_id=1&name=x&_apikey=k"), "/e?_id=1&name=x");
        assert_eq!(strip("/e?_apikey=k"), "/e");
        assert_eq!(strip("/e?_apikey=a&x=%20y&_apikey=b"), "/e?x=%20y");
        assert_eq!(strip("/e?%5Fapikey=k&b=2"), "/e?b=2");
        assert_eq!(strip("/e?a=1&&b=2&_apikey"), "/e?a=1&&b=2");
        assert_eq!(strip("/e"), "/e");
        assert_eq!(
            strip("/e?_apikeyx=1&x_apikey=2"),
            "/e?_apikeyx=1&x_apikey=2"
        );
    }

    #[test]
    fn names_cut_at_nul_and_stripped_of_control_bytes() {
        let want = lenient_name(b"_id");
        for raw in [
            &b"_id"[..],
            b"_id%00",
            b"_id%00x",
            b"_id%00%00victim",
            b"%00_id",
            b"_%00id",
            b"%01_id",
            b"_i%01d",
            b"_id%1F",
            b"_id%7F",
            b"%09_id",
            b"+_id",
            b"_ID",
            b"_%C4%B1d",
            b"_%C4%B0D",
            b"_id%5B%5D",
            b"_id[x]",
            b".id",
            b"[_id]",
            b"%5B_id%5D",
            b"]]_id",
            b"_id]",
            b"_id[",
            b"[_id][x]",
            // PHP decodes what decodes, keeps the rest, then cuts at the NUL
            b"_id%00%zz",
            b"_id%00%",
            b"_id%00%4",
            b"+_id%00%G0",
        ] {
            assert!(lenient_is(raw, &want), "{}", String::from_utf8_lossy(raw));
        }
        for raw in [
            &b"_idx"[..],
            b"x_id",
            b"_i",
            b"id",
            b"_id%zz",
            b"%zz_id",
            b"_id%",
            b"%00",
            b"_i%C4d",
        ] {
            assert!(!lenient_is(raw, &want), "{}", String::from_utf8_lossy(raw));
        }
        // the Kelvin sign and the long s
        let key = lenient_name(b"_keys");
        assert!(lenient_is(b"_%E2%84%AAey%C5%BF", &key));
        // JSON member names arrive decoded: a raw NUL cuts them too
        assert!(lenient_is(b"_id\0victim", &want));
        assert!(lenient_is(b"\0_id", &want));
    }

    proptest::proptest! {
        /// A name is never read longer than its raw bytes (what `lenient_is` relies on), and
        /// never panics.
        #[test]
        fn lenient_names_never_grow(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
            for cut in [true, false] {
                for b in [Brackets::Php, Brackets::Rack] {
                    proptest::prop_assert!(lenient(&raw, cut, b).len() <= raw.len());
                }
            }
        }

        /// Whatever the query, no parameter named `_apikey` (after decoding) survives, and every
        /// other pair is kept, in order, byte for byte.
        #[test]
        fn strip_param_removes_only_the_credential(pairs in proptest::collection::vec(
            ("(_apikey|%5Fapikey|%5fapikey|a|b%20|_apikeyx|)", proptest::option::of("[a-zA-Z0-9%=+&]{0,6}")), 0..8)) {
            let query: Vec<String> = pairs.iter().map(|(n, v)| match v {
                Some(v) => format!("{n}={}", v.replace('&', "")),
                None => n.clone(),
            }).collect();
            let path = format!("/p?{}", query.join("&"));
            let out = String::from_utf8(strip_param(path.as_bytes(), "_apikey")).unwrap();
            let (base, q) = split_path(out.as_bytes());
            proptest::prop_assert_eq!(base, b"/p");
            let original = query.join("&");
            let kept: Vec<&str> = original.split('&')
                .filter(|pair| !name_is(pair.split('=').next().unwrap_or("").as_bytes(), "_apikey"))
                .collect();
            let got: Vec<&str> = q.map(|q| std::str::from_utf8(q).unwrap().split('&').collect()).unwrap_or_default();
            proptest::prop_assert_eq!(got, kept);
        }
    }
}
