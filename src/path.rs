//! The path keygate decides routes on: `:path` without its query, read the way the most lenient
//! upstream would read it, or refused when upstreams may disagree on what it names.
//!
//! Envoy, keygate and the upstream framework must agree on which resource a request names, or a
//! rule written for `/admin` misses a request the upstream serves as `/admin`. keygate's model:
//!
//! - **Percent-encoding** is decoded for matching (`/%61dmin` is `/admin`), except where decoding
//!   changes the path's structure or could be decoded again: an encoded `/` or `\` (`%2F`, `%5C`),
//!   `%25` (double encoding), `;`, `?`, `#`, control bytes, and invalid UTF-8 after decoding are
//!   refused. A bad escape (`%zz`) is refused.
//! - **Dot segments** (`.` and `..`, also when encoded) are refused: Envoy's `normalize_path`
//!   resolves the raw ones before keygate runs, so one left here is encoded or unnormalized.
//! - **Empty segments** (`//`) are merged, as `merge_slashes` and nginx do; a path that starts with
//!   `//` is refused (some frameworks read it as `//host/path`).
//! - **A raw backslash** is refused (IIS and some Windows stacks read it as `/`).
//! - **`;` parameters** (`/admin;x`, read as `/admin` by Tomcat and Jetty) are refused unless the
//!   operator says the upstream reads `;` literally (`paths.allow_semicolon`).
//! - **Letter case** is not changed here; routes compare it or not per `paths.case_sensitive`.
//!
//! The common path (`/v1/objects/42`) is checked in one pass and not copied.

use std::borrow::Cow;

use crate::hash::hex_val;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPolicy {
    /// Keep `;` as an ordinary character instead of refusing the path.
    pub allow_semicolon: bool,
}

/// Why a path was refused (a fixed phrase, safe to show).
pub type Refusal = &'static str;

fn refused_decoded(b: u8) -> Option<Refusal> {
    match b {
        b'/' | b'\\' => Some("the path holds an encoded slash or backslash"),
        b'%' => Some("the path is percent-encoded twice"),
        b';' | b'?' | b'#' => Some("the path holds an encoded delimiter (; ? #)"),
        0..=0x1f | 0x7f => Some("the path holds control characters"),
        _ => None,
    }
}

/// The canonical form of `path` (no query), or why it is refused.
pub fn canonical<'a>(path: &'a [u8], policy: &PathPolicy) -> Result<Cow<'a, [u8]>, Refusal> {
    if path.first() != Some(&b'/') {
        // `*` (OPTIONS *) and anything else Envoy let through: matched as is
        return if path.iter().all(|&c| c > 0x20 && c != 0x7f) {
            Ok(Cow::Borrowed(path))
        } else {
            Err("the path holds control characters")
        };
    }
    if path.get(1) == Some(&b'/') {
        return Err("the path starts with //");
    }
    // one pass to find whether anything needs rewriting (escapes, empty segments) or refusing
    let mut rewrite = false;
    let mut seg_start = 0usize; // index of the '/' opening the current segment
    let mut i = 0usize;
    while i < path.len() {
        let c = path[i];
        match c {
            b'%' => {
                let hi = path.get(i + 1).copied().and_then(hex_val);
                let lo = path.get(i + 2).copied().and_then(hex_val);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err("the path has a bad percent-encoding");
                };
                if let Some(r) = refused_decoded((hi << 4) | lo) {
                    return Err(r);
                }
                rewrite = true;
                i += 3;
                continue;
            }
            b'/' => {
                if i > 0 {
                    check_segment(&path[seg_start + 1..i])?;
                }
                if path.get(i + 1) == Some(&b'/') {
                    rewrite = true;
                }
                seg_start = i;
            }
            b'\\' => return Err("the path holds a backslash"),
            b';' if !policy.allow_semicolon => {
                return Err("the path holds ';' parameters");
            }
            0..=0x20 | 0x7f => return Err("the path holds spaces or control characters"),
            _ => {}
        }
        i += 1;
    }
    check_segment(&path[seg_start + 1..])?;
    if !rewrite {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0usize;
    while i < path.len() {
        let c = path[i];
        if c == b'%' {
            // validated above
            let hi = path.get(i + 1).copied().and_then(hex_val).unwrap_or(0);
            let lo = path.get(i + 2).copied().and_then(hex_val).unwrap_or(0);
            out.push((hi << 4) | lo);
            i += 3;
            continue;
        }
        if c == b'/' && out.last() == Some(&b'/') {
            i += 1;
            continue;
        }
        out.push(c);
        i += 1;
    }
    if std::str::from_utf8(&out).is_err() {
        return Err("the path decodes to invalid UTF-8");
    }
    Ok(Cow::Owned(out))
}

/// Refuses `.` and `..`, raw or encoded (`%2e`, `.%2E`).
fn check_segment(seg: &[u8]) -> Result<(), Refusal> {
    if seg.is_empty() || seg.len() > 6 {
        return Ok(());
    }
    let mut dots = 0;
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'.' {
            i += 1;
        } else if seg[i] == b'%'
            && seg.get(i + 1) == Some(&b'2')
            && matches!(seg.get(i + 2), Some(b'e' | b'E'))
        {
            i += 3;
        } else {
            return Ok(());
        }
        dots += 1;
    }
    if dots <= 2 {
        Err("the path holds a dot segment (. or ..)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const STRICT: PathPolicy = PathPolicy {
        allow_semicolon: false,
    };

    fn c(p: &str) -> Result<String, Refusal> {
        canonical(p.as_bytes(), &STRICT).map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/objects/42",
            "/a/b/",
            "/a.b/..c/...",
            "*",
            "/caf%C3%A9",
        ] {
            let out = canonical(p.as_bytes(), &STRICT).unwrap();
            assert_eq!(matches!(out, Cow::Borrowed(_)), !p.contains('%'), "{p}");
        }
    }

    #[test]
    fn decodes_and_merges() {
        assert_eq!(c("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(c("/admin//x///y").unwrap(), "/admin/x/y");
        assert_eq!(c("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(c("/a%20b").unwrap(), "/a b");
    }

    #[test]
    fn refuses_what_upstreams_read_differently() {
        for p in [
            "/%2Fadmin/x",
            "/public/..%2Fadmin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "/public/../admin",
            "/./admin",
            "/admin/.",
            "/a%5cb",
            "/a\\b",
            "/admin;x/y",
            "/admin%3bx",
            "/a%252Fb",
            "/a%zz",
            "/a%2",
            "/a%00b",
            "/a b",
            "//admin",
            "/a%3Fb",
            "/%C0%AE%C0%AE/admin",
        ] {
            assert!(c(p).is_err(), "{p} was accepted as {:?}", c(p));
        }
        let lax = PathPolicy {
            allow_semicolon: true,
        };
        assert_eq!(canonical(b"/a;b", &lax).unwrap().as_ref(), b"/a;b");
        assert!(canonical(b"/a%3Bb", &lax).is_err());
    }

    proptest::proptest! {
        /// Whatever the input, an accepted path starts with '/', holds no empty, `.` or `..`
        /// segment, no backslash, `;`, control byte or `%`, and is UTF-8; it never panics.
        #[test]
        fn accepted_paths_are_canonical(p in "/[a-zA-Z0-9./%;\\\\ _-]{0,24}") {
            if let Ok(out) = canonical(p.as_bytes(), &STRICT) {
                let s = std::str::from_utf8(&out).unwrap();
                proptest::prop_assert!(s.starts_with('/'));
                proptest::prop_assert!(!s.contains("//"));
                proptest::prop_assert!(!s.contains(['\\', ';', '%']));
                proptest::prop_assert!(!s.bytes().any(|b| b < 0x20 || b == 0x7f));
                for seg in s.split('/').skip(1) {
                    proptest::prop_assert!(seg != "." && seg != "..", "{}", s);
                }
            }
        }

        #[test]
        fn never_panics_on_bytes(p in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = canonical(&p, &STRICT);
        }
    }
}
