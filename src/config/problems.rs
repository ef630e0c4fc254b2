//! `problems`: an API's own wording and extension members for keygate's problem kinds.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::fields::{err, join};
use super::ConfigError;
use crate::json::Entries;
use crate::problem::{Dialect, Dialects, Kind, MemberValue};

#[derive(Deserialize)]
pub(super) struct RawDialect {
    pub(super) title: Option<String>,
    pub(super) detail: Option<String>,
    pub(super) members: Option<Entries<Member>>,
}

/// A problem member's value: any JSON.
pub(super) struct Member(Value);

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Member, E> {
                Ok(Member(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Member, E> {
                Ok(Member(Value::from(n)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Member, E> {
                Ok(Member(Value::from(s)))
            }
            fn visit_string<E>(self, s: String) -> Result<Member, E> {
                Ok(Member(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<Member, E> {
                Ok(Member(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Member, E> {
                Ok(Member(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Member, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(a)).map(Member)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Member, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(m)).map(Member)
            }
            // the field recorder (`known_fields`)
            fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Member, D::Error> {
                Ok(Member(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// Members every problem has (RFC 9457's, and keygate's `request_id`): not configurable.
pub(super) const CORE_MEMBERS: [&str; 6] = [
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "request_id",
];

/// `problems`: `{"<slug>" | "*": {"title", "detail", "members": {name: JSON}}}`; `*` applies to
/// every kind, a slug's own settings win over it.
pub(super) fn parse_problems(m: Entries<RawDialect>) -> Result<Dialects, ConfigError> {
    let mut any = None;
    let mut own: Vec<(Kind, Dialect)> = Vec::new();
    for (name, raw) in m.0 {
        let f = join("problems", &name);
        let kinds: Vec<Kind> = if name == "*" {
            Kind::ALL.to_vec()
        } else {
            match Kind::from_slug(&name) {
                Some(k) => vec![k],
                None => {
                    return Err(err(
                        &f,
                        "is not a problem slug (credential-missing, credential-invalid, rate-limited, …) or `*`",
                    ))
                }
            }
        };
        let d = parse_dialect(&f, raw, &kinds)?;
        match kinds.as_slice() {
            [k] => own.push((*k, d)),
            _ => any = Some(d),
        }
    }
    let mut out = vec![any.clone().unwrap_or_default(); Kind::ALL.len()];
    for (k, d) in own {
        if let Some(slot) = out.get_mut(k.index()) {
            let base = std::mem::take(slot);
            let mut members = d.members;
            for m in base.members {
                if !members.iter().any(|(n, _)| *n == m.0) {
                    members.push(m);
                }
            }
            *slot = Dialect {
                title: d.title.or(base.title),
                detail: d.detail.or(base.detail),
                members,
            };
        }
    }
    Ok(out)
}

pub(super) fn parse_dialect(
    path: &str,
    raw: RawDialect,
    kinds: &[Kind],
) -> Result<Dialect, ConfigError> {
    let text = |name: &str, v: Option<String>| -> Result<Option<String>, ConfigError> {
        match v {
            Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
                Err(err(
                    &join(path, name),
                    "must be 1 to 256 characters without control characters",
                ))
            }
            v => Ok(v),
        }
    };
    let title = text("title", raw.title)?;
    let detail = text("detail", raw.detail)?;
    let mut members = Vec::new();
    if let Some(m) = raw.members {
        let mp = join(path, "members");
        if m.0.len() > 16 {
            return Err(err(&mp, "at most 16 members"));
        }
        for (name, Member(v)) in m.0 {
            let f = join(&mp, &name);
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
            if !ok {
                return Err(err(&f, "a member name is 1 to 64 of A-Z a-z 0-9 _ - ."));
            }
            if CORE_MEMBERS.contains(&name.as_str()) {
                return Err(err(
                    &f,
                    "is a member every problem has (set `title` or `detail` to reword it)",
                ));
            }
            if let Some(k) = kinds
                .iter()
                .find(|k| k.own_members().contains(&name.as_str()))
            {
                return Err(err(
                    &f,
                    format!("is a member keygate sets itself on `{}`", k.slug()),
                ));
            }
            let value = match v {
                Value::String(s) if s == "$title" => MemberValue::Title,
                Value::String(s) if s == "$detail" => MemberValue::Detail,
                v => {
                    let j = serde_json::to_string(&v).unwrap_or_default();
                    if j.len() > 1024 {
                        return Err(err(&f, "must be at most 1024 bytes of JSON"));
                    }
                    MemberValue::Json(j)
                }
            };
            members.push((name, value));
        }
    }
    Ok(Dialect {
        title,
        detail,
        members,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::tests::{field_of, p};
    use super::*;

    #[test]
    fn problem_dialects() {
        let c = p(r#"{"problems": {
            "*": {"members": {"message": "$detail", "errors": {}}},
            "credential-invalid": {"title": "Unauthorized", "members": {"error": "Invalid API key", "message": "$title"}},
            "rate-limited": {"detail": "Rate limit exceeded"}}}"#)
        .unwrap();
        let inv = &c.problems[Kind::CredentialInvalid.index()];
        assert_eq!(inv.title.as_deref(), Some("Unauthorized"));
        let m: Vec<(&str, &MemberValue)> =
            inv.members.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert!(m.contains(&("error", &MemberValue::Json("\"Invalid API key\"".into()))));
        assert!(
            m.contains(&("message", &MemberValue::Title)),
            "the slug's own wins"
        );
        assert!(m.contains(&("errors", &MemberValue::Json("{}".into()))));
        assert_eq!(m.len(), 3);
        let missing = &c.problems[Kind::CredentialMissing.index()];
        assert_eq!(missing.members.len(), 2);
        assert_eq!(
            c.problems[Kind::RateLimited.index()].detail.as_deref(),
            Some("Rate limit exceeded")
        );
        assert!(p("{}").unwrap().problems.is_empty());
        for (json, field) in [
            (r#"{"problems": {"nope": {}}}"#, "problems.nope"),
            (
                r#"{"problems": {"*": {"members": {"type": 1}}}}"#,
                "problems.*.members.type",
            ),
            (
                r#"{"problems": {"*": {"members": {"limit": 1}}}}"#,
                "problems.*.members.limit",
            ),
            (
                r#"{"problems": {"rate-limited": {"members": {"resetTime": 1}}}}"#,
                "problems.rate-limited.members.resetTime",
            ),
            (
                r#"{"problems": {"credential-invalid": {"members": {"bad name": 1}}}}"#,
                "problems.credential-invalid.members.bad name",
            ),
            (
                r#"{"problems": {"credential-invalid": {"title": ""}}}"#,
                "problems.credential-invalid.title",
            ),
            (
                r#"{"problems": {"credential-invalid": {"detail": "a\nb"}}}"#,
                "problems.credential-invalid.detail",
            ),
            (
                r#"{"problems": {"credential-invalid": {"members": []}}}"#,
                "problems.credential-invalid.members",
            ),
            (r#"{"problems": []}"#, "problems"),
            (
                r#"{"credentials": {"malformed_status": 403}}"#,
                "credentials.malformed_status",
            ),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
        // a member may be named like another kind's own member
        assert!(p(r#"{"problems": {"credential-invalid": {"members": {"limit": 1}}}}"#).is_ok());
        assert_eq!(p("{}").unwrap().malformed_status, 400);
        assert_eq!(
            p(r#"{"credentials": {"malformed_status": 401}}"#)
                .unwrap()
                .malformed_status,
            401
        );
    }
}
