//! Tests of the whole configuration: defaults, refusals that name their field, unknown fields,
//! decoding; each section's own tests are in its file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

pub(super) fn p(s: &str) -> Result<Config, ConfigError> {
    parse(s.as_bytes(), &mut Vec::new())
}

pub(super) fn field_of(s: &str) -> String {
    match p(s) {
        Err(e) => e.field,
        Ok(_) => panic!("should be refused: {s}"),
    }
}

pub(super) const SHA: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"; // "foo"

#[test]
fn empty_config_has_safe_defaults() {
    let c = p("").unwrap();
    assert!(c.credentials.basic && c.credentials.bearer && c.hide_credentials);
    assert_eq!(c.credentials.query_param.as_deref(), Some("_apikey"));
    assert_eq!(c.default_access, Access::Key);
    assert!(c.keys.is_empty());
    assert!(c.rate.headers && c.access_log_state);
}

#[test]
fn rate_headers_and_log_state_can_be_turned_off() {
    let c = p(r#"{"access_log_state":false,"rate_limit":{"headers":false}}"#).unwrap();
    assert!(!c.rate.headers && !c.access_log_state);
    let c = p(r#"{"rate_limit":{"plans":{}}}"#).unwrap();
    assert!(c.rate.headers);
    assert_eq!(field_of(r#"{"access_log_state":"no"}"#), "access_log_state");
    assert_eq!(
        field_of(r#"{"rate_limit":{"headers":1}}"#),
        "rate_limit.headers"
    );
}

#[test]
fn configs_that_mean_something_else_are_refused() {
    let k = |extra: &str| format!(r#"{{"keys":[{{"id":"a","sha256":"{SHA}"{extra}}}]}}"#);
    let two = format!(
        r#"{{"keys":[{{"id":"a","sha256":"{SHA}"}},{{"id":"a","sha256":"{}"}}]}}"#,
        "1".repeat(64)
    );
    for (json, field) in [
        (two, "keys[1].id"),
        (
            r#"{"default_access":"closed","default_access":"public"}"#.to_string(),
            "default_access",
        ),
        (
            r#"{"routes":[{"prefix":"/a","access":"closed","access":"public"}]}"#.to_string(),
            "routes[0].access",
        ),
        (k(r#","expires_at":"2027-02-30T00:00:00Z""#), "keys[0].expires_at"),
        (k(r#","expires_at":"2026-02-29T00:00:00Z""#), "keys[0].expires_at"),
        (k(r#","scopes":["read write"]"#), "keys[0].scopes[0]"),
        (k(r#","user":"al:ice""#), "keys[0].user"),
        (k(r#","account":"a b""#), "keys[0].account"),
        (
            format!(r#"{{"keys":[{{"id":"k=1","sha256":"{SHA}"}}]}}"#),
            "keys[0].id",
        ),
        (
            format!(r#"{{"keys":[{{"id":"k 1","sha256":"{SHA}"}}]}}"#),
            "keys[0].id",
        ),
        (
            r#"{"routes":[{"prefix":"/a","methods":["POST "]}]}"#.to_string(),
            "routes[0].methods[0]",
        ),
        (
            r#"{"routes":[{"prefix":"/a","scopes":["a b"]}]}"#.to_string(),
            "routes[0].scopes[0]",
        ),
        (
            r#"{"identity_headers":{"plan":"x-keygate-account"}}"#.to_string(),
            "identity_headers",
        ),
        (
            r#"{"identity_headers":{"plan":"x_keygate_account"}}"#.to_string(),
            "identity_headers",
        ),
        (
            r#"{"identity_headers":{"plan":"x_api_key"}}"#.to_string(),
            "identity_headers",
        ),
        (
            r#"{"credentials":{"api_key_headers":["x-key","x_key"]}}"#.to_string(),
            "credentials.api_key_headers",
        ),
        (
            r#"{"routes":[{"prefix":"/e","methods":["GET","POST"],"owner":{"query":"_id","resource":"r","body":"reject"}}]}"#.to_string(),
            "routes[0].owner.body",
        ),
    ] {
        assert_eq!(field_of(&json), field, "{json}");
    }
    // leap day, leap second, bodyless owner routes, and an owner route that says the body
    // is not read are fine
    assert!(p(&k(r#","expires_at":"2028-02-29T23:59:60Z""#)).is_ok());
    assert!(p(r#"{"routes":[{"prefix":"/e","methods":["GET","DELETE"],"owner":{"query":"_id","resource":"r"}}]}"#).is_ok());
    assert!(p(r#"{"routes":[{"prefix":"/e","methods":["POST"],"owner":{"query":"_id","resource":"r","body":"unchecked"}}]}"#).is_ok());
    let mut w = Vec::new();
    parse(
        br#"{"routes":[{"prefix":"/o","methods":["POST","PUT","DELETE"],"scopes":["write"]}]}"#,
        &mut w,
    )
    .unwrap();
    assert!(w.iter().any(|l| l.contains("PATCH")), "{w:?}");
    let c =
        p(r#"{"routes":[{"prefix":"/o","methods":["post"]},{"prefix":"/g","methods":["get"]}]}"#)
            .unwrap();
    assert_eq!(c.routes[0].methods, ["POST"]);
    assert_eq!(c.routes[1].methods, ["GET", "HEAD"]);
    assert!(c.method_rules && !c.case_sensitive_paths && !c.paths.allow_semicolon);
}

#[test]
fn errors_name_the_field() {
    assert_eq!(
        field_of(r#"{"keys":[{"id":"a","sha256":"xyz"}]}"#),
        "keys[0].sha256"
    );
    assert_eq!(
        field_of(r#"{"keys":[{"sha256":"SHA"}]}"#.replace("SHA", SHA).as_str()),
        "keys[0].id"
    );
    assert_eq!(
        field_of(r#"{"credentials":{"basic":"yes"}}"#),
        "credentials.basic"
    );
    assert_eq!(
        field_of(r#"{"credentials":{"api_key_headers":["bad header"]}}"#),
        "credentials.api_key_headers"
    );
    assert_eq!(
        field_of(r#"{"rate_limit":{"plans":{"free":{"requests":0}}}}"#),
        "rate_limit.plans.free.requests"
    );
    assert_eq!(
        field_of(r#"{"rate_limit":{"reset":"later"}}"#),
        "rate_limit.reset"
    );
    assert_eq!(
        field_of(r#"{"routes":[{"prefix":"/a","access":"maybe"}]}"#),
        "routes[0].access"
    );
    assert_eq!(
        field_of(r#"{"routes":[{"prefix":"/a","owner":{"resource":"x"}}]}"#),
        "routes[0].owner"
    );
    assert_eq!(
        field_of(
            r#"{"credentials":{"basic":false,"bearer":false,"api_key_headers":[],"query_param":""}}"#
        ),
        "credentials"
    );
    assert_eq!(field_of("[1]"), "");
    assert_eq!(
        field_of(r#"{"identity_headers":{"subject":"x-request-id"}}"#),
        "identity_headers"
    );
    assert_eq!(
        field_of(r#"{"identity_headers":{"plan":"x-api-key"}}"#),
        "identity_headers"
    );
    let e = p("{nope").unwrap_err();
    assert!(e
        .to_string()
        .starts_with("keygate: configuration refused: not valid JSON"));
    let dup =
        format!(r#"{{"keys":[{{"id":"a","sha256":"{SHA}"}},{{"id":"b","sha256":"{SHA}"}}]}}"#);
    assert_eq!(field_of(&dup), "keys[1].sha256");
}

#[test]
fn unknown_fields_warn_or_refuse() {
    let mut w = Vec::new();
    parse(
        br#"{"future_thing":1,"credentials":{"also_new":true}}"#,
        &mut w,
    )
    .unwrap();
    assert_eq!(w.len(), 2);
    assert!(w[0].contains("`future_thing`") || w[1].contains("`future_thing`"));
    assert!(w.iter().any(|l| l.contains("`credentials.also_new`")));
    assert_eq!(
        field_of(r#"{"strict":true,"credentials":{"also_new":true}}"#),
        "credentials.also_new"
    );
}

#[test]
fn decoding_refuses_what_is_not_the_shape() {
    for (json, field, reason) in [
        // a derived struct would take an array of its fields in order
        (
            r#"{"paths":[true,false]}"#,
            "paths",
            "expected an object, got an array",
        ),
        (r#"[1]"#, "", "expected an object, got an array"),
        (
            r#"{"keys":[{"id":"a","sha256":"x","scopes":["r",5]}]}"#,
            "keys[0].scopes[1]",
            "expected a string, got a number",
        ),
        (
            r#"{"key_service":{"cluster":"c","timeout_ms":-1}}"#,
            "key_service.timeout_ms",
            "expected a non-negative whole number",
        ),
        (
            r#"{"credentials":{"query_param":true}}"#,
            "credentials.query_param",
            "expected a parameter name, \"\" or false",
        ),
        (
            r#"{"identity_headers":{"plan":1}}"#,
            "identity_headers.plan",
            "expected a string, got a number",
        ),
        (
            r#"{"rate_limit":{"plans":{"p":"lots"}}}"#,
            "rate_limit.plans.p",
            "expected \"unlimited\" or an object {requests, window_s, burst, per}, got `lots`",
        ),
        // duplicates inside maps, where serde would keep the last one
        (
            r#"{"rate_limit":{"plans":{"p":"unlimited","p":{"requests":1}}}}"#,
            "rate_limit.plans.p",
            "is given twice (JSON keeps only the last one): say it once",
        ),
        (
            r#"{"problems":{"*":{"members":{"a":1,"a":2}}}}"#,
            "problems.*.members.a",
            "is given twice (JSON keeps only the last one): say it once",
        ),
    ] {
        let e = p(json).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            (field, reason),
            "{json}"
        );
    }
    let mut w = Vec::new();
    parse(br#"{"keys":[{"id":"a","sha256":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","resources":{"r":["x"]},"nope":1}],"problems":{"*":{"members":{"m":{"deep":[1]}}}}}"#, &mut w).unwrap();
    assert_eq!(w, ["keygate: ignoring unknown config field `keys[0].nope`"]);
}

proptest::proptest! {
    #[test]
    fn config_parser_never_panics(s in "\\PC{0,200}") {
        let _ = parse(s.as_bytes(), &mut Vec::new());
    }
}
