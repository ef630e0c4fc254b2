//! Field checks every section uses: the error type's builders, names, tokens, text, times,
//! numbers within bounds.

use super::ConfigError;
use crate::json::Loose;

pub(super) fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A string that must be given and not empty.
pub(super) fn required(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(err(field, "is required and must not be empty")),
    }
}

/// A header name as Envoy stores it: lower-case token characters.
pub(super) fn header_name(field: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if !ok {
        return Err(err(field, format!("`{s}` is not a valid header name")));
    }
    Ok(s.to_ascii_lowercase())
}

/// Plain printable ASCII without quotes or backslashes (it goes into headers and challenges).
pub(super) fn plain_text(field: &str, s: &str, max: usize) -> Result<String, ConfigError> {
    if s.is_empty() || s.len() > max {
        return Err(err(field, format!("must be 1 to {max} characters")));
    }
    if !s
        .bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        return Err(err(
            field,
            "must be printable ASCII without quotes or backslashes",
        ));
    }
    Ok(s.to_string())
}

/// Unix seconds from a number or an RFC 3339 UTC timestamp (`2027-01-31T00:00:00Z`).
pub(super) fn parse_time(field: &str, v: Loose) -> Result<u64, ConfigError> {
    match v {
        Loose::U64(n) => Ok(n),
        Loose::Other("a number") => Err(err(
            field,
            "expected unix seconds (a non-negative whole number)",
        )),
        Loose::Str(s) => parse_rfc3339(&s).ok_or_else(|| {
            err(
                field,
                "expected unix seconds or a timestamp like 2027-01-31T00:00:00Z",
            )
        }),
        other => Err(err(
            field,
            format!("expected a time, got {}", other.type_name()),
        )),
    }
}

pub(super) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=month_days).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    // days from civil (Howard Hinnant), valid for the proleptic Gregorian calendar.
    let (y, mo, d) = (y as i64, mo as i64, d as i64);
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (h * 3600 + mi * 60 + se) as i64).ok()
}

/// An HTTP method as a rule names it: an RFC 9110 token, upper-cased (methods match ignoring case).
pub(super) fn method_token(field: &str, s: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if !ok {
        return Err(err(
            field,
            format!("`{s}` is not an HTTP method (a token without spaces)"),
        ));
    }
    Ok(s.to_ascii_uppercase())
}

/// A scope as OAuth defines one (RFC 6749 §3.3): scopes travel space-separated in
/// `x-keygate-scopes` and in challenges, so one holding a space would read as two.
pub(super) fn scope_token(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c));
    if !ok {
        return Err(err(
            field,
            "a scope is 1 to 128 visible ASCII characters without spaces, quotes or backslashes",
        ));
    }
    Ok(())
}

/// A value that goes into the access log's logfmt line and metric names (key id, account,
/// plan): visible ASCII without `=`, quotes or backslashes, so a line reads one way only.
pub(super) fn log_token(field: &str, s: &str, max: usize) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| (0x21..0x7f).contains(&c) && !matches!(c, b'=' | b'"' | b'\\'));
    if !ok {
        return Err(err(
            field,
            format!("must be 1 to {max} visible ASCII characters without spaces, '=', quotes or backslashes (it goes into the access log)"),
        ));
    }
    Ok(s.to_string())
}

pub(super) fn path_value(field: &str, s: &str) -> Result<String, ConfigError> {
    if !s.starts_with('/') || s.bytes().any(|c| c <= b' ' || c == 0x7f) || s.len() > 1024 {
        return Err(err(
            field,
            "must start with '/' and hold no spaces or control characters",
        ));
    }
    Ok(s.to_string())
}

/// A number's default and the range it must lie in (inclusive): each section names its own, in
/// one place beside the check that applies it.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

impl Bound {
    pub const fn new(default: u64, min: u64, max: u64) -> Bound {
        Bound { default, min, max }
    }
}

/// `v`, or the default, checked against the bound.
pub(super) fn bounded(field: &str, v: Option<u64>, b: Bound) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(b.default);
    if !(b.min..=b.max).contains(&v) {
        return Err(err(field, format!("must be {} to {}", b.min, b.max)));
    }
    Ok(v)
}

/// An Envoy cluster to call and the `:authority` of the calls (the cluster's name by default).
pub(super) fn cluster_and_authority(
    path: &str,
    cluster: Option<String>,
    authority: Option<String>,
) -> Result<(String, String), ConfigError> {
    let cf = join(path, "cluster");
    let cluster = required(&cf, cluster)?;
    if cluster.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(err(&cf, "must hold no spaces or control characters"));
    }
    let authority = plain_text(
        &join(path, "authority"),
        authority.as_deref().unwrap_or(&cluster),
        256,
    )?;
    Ok((cluster, authority))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2027-01-31T12:30:05Z"), Some(1_801_398_605));
        assert_eq!(parse_rfc3339("2027-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2027-01-01 00:00:00Z"), None);
        assert_eq!(parse_rfc3339("+027-01-01T00:00:00Z"), None);
    }
}
