//! `query::{percent_decode, split_path, params, name_is, strip_param}` on arbitrary bytes, with
//! properties, not only "no panic":
//! - `percent_decode` inverts a reference encoder, and fails exactly on a bad `%` escape;
//! - `params` loses no byte (re-joining the pairs gives the query back);
//! - `name_is(raw, n)` is "percent-decodes to `n`";
//! - `strip_param(path, "_apikey")` leaves no parameter whose decoded name is `_apikey`, keeps
//!   the path and every other pair byte for byte and in order, drops a `?` left with nothing,
//!   and is idempotent.
//!
//! Input: the whole input is a `:path` (and also a raw value for `percent_decode`).

use crate::common;

use keygate::query::{name_is, params, percent_decode, split_path, strip_param};

/// Independent model of RFC 3986 percent-decoding (`None` on a bad escape).
fn model_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut it = raw.iter().copied();
    while let Some(c) = it.next() {
        if c == b'%' {
            let hi = hex(it.next()?)?;
            let lo = hex(it.next()?)?;
            out.push(hi * 16 + lo);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn check_strip(path: &[u8], name: &str) {
    let out = strip_param(path, name);
    let (base, q) = split_path(path);
    let (out_base, out_q) = split_path(&out);
    assert_eq!(out_base, base, "strip_param changed the path part");
    let kept: Vec<&[u8]> = match q {
        None => {
            assert_eq!(out, path, "a path without a query must come back unchanged");
            return;
        }
        Some(q) => q
            .split(|&c| c == b'&')
            .filter(|pair| {
                let n = pair.split(|&c| c == b'=').next().unwrap_or(b"");
                percent_decode(n).as_deref() != Some(name.as_bytes())
            })
            .collect(),
    };
    match out_q {
        None => assert!(kept.is_empty(), "pairs were lost: {kept:?}"),
        Some(oq) => {
            assert!(!kept.is_empty(), "a `?` was left with nothing after it");
            let got: Vec<&[u8]> = oq.split(|&c| c == b'&').collect();
            assert_eq!(got, kept, "other pairs not kept in order");
            for p in params(oq) {
                assert!(
                    percent_decode(p.name).as_deref() != Some(name.as_bytes()),
                    "`{name}` survived strip_param: {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
    assert_eq!(
        strip_param(&out, name),
        out,
        "strip_param is not idempotent"
    );
}

/// One input.
pub fn run(data: &[u8]) {
    // percent_decode against the model, and against a reference encoder.
    let dec = percent_decode(data);
    assert_eq!(dec, model_decode(data));
    if let Some(d) = &dec {
        assert!(d.len() <= data.len());
        if !data.contains(&b'%') {
            assert_eq!(d.as_slice(), data);
        }
    }
    assert_eq!(
        percent_decode(&common::encode_all(data)).as_deref(),
        Some(data)
    );

    // params is a lossless split of the query.
    let (_, q) = split_path(data);
    if let Some(q) = q {
        let mut joined = Vec::new();
        for (i, p) in params(q).enumerate() {
            if i > 0 {
                joined.push(b'&');
            }
            joined.extend_from_slice(p.name);
            if let Some(v) = p.value {
                assert!(!p.name.contains(&b'='));
                joined.push(b'=');
                joined.extend_from_slice(v);
            }
        }
        assert_eq!(joined, q);
        for p in params(q) {
            for n in ["_apikey", "k"] {
                assert_eq!(
                    name_is(p.name, n),
                    percent_decode(p.name).as_deref() == Some(n.as_bytes())
                );
            }
        }
    }

    check_strip(data, "_apikey");
    check_strip(data, "k");
}
