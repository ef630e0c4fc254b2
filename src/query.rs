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
/// may take for `name` compares equal: percent- and form-decoded (`+` is a space), leading
/// whitespace dropped (PHP), an array suffix dropped (`_id[]`, `_id[0]`: PHP, Rack, Rails),
/// `.`, space and `[` turned into `_` (PHP), ASCII case folded (ASP.NET Core, Go's `r.Form` is
/// not, but nothing is lost by folding). `None` when the name does not decode.
pub fn lenient_name(raw: &[u8]) -> Option<Vec<u8>> {
    let plus: Vec<u8> = raw
        .iter()
        .map(|&c| if c == b'+' { b' ' } else { c })
        .collect();
    let mut d = percent_decode(&plus)?;
    let start = d
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0))
        .unwrap_or(d.len());
    d.drain(..start);
    if let Some(open) = d.iter().position(|&c| c == b'[') {
        if open > 0 && d[open..].contains(&b']') {
            d.truncate(open);
        }
    }
    for c in d.iter_mut() {
        match *c {
            b'.' | b' ' | b'[' => *c = b'_',
            other => *c = other.to_ascii_lowercase(),
        }
    }
    Some(d)
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

    proptest::proptest! {
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
