use super::*;
use proptest::prelude::*;

fn settings(extra: &str) -> Settings {
    configure(
        format!(r#"{{"key_prefixes": ["kgb_"], "redact_fields": ["ssn", "card_number"] {extra}}}"#)
            .as_bytes(),
    )
    .unwrap()
}

#[test]
fn configuration_defaults_and_refusals() {
    let d = configure(b"").unwrap();
    assert_eq!(d.max_bytes, 4096);
    assert!(d.request && d.response);
    for bad in [
        r#"{"max_bytes": 0}"#,
        r#"{"max_bytes": 70000}"#,
        r#"{"content_types": ["json"]}"#,
        r#"{"content_types": ["*/json"]}"#,
        r#"{"content_types": ["text/plain; charset=latin1"]}"#,
        r#"{"redact_fields": ["--"]}"#,
        r#"{"unknown": 1}"#,
        r#"{"max_bytes": "4096"}"#,
        "[",
    ] {
        assert!(configure(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn media_types_charsets_and_codings() {
    let s = settings("");
    assert_eq!(
        s.admit(Some(b"application/json; charset=UTF-8"), None),
        Ok("application/json".into())
    );
    assert_eq!(
        s.admit(Some(b"Application/Vnd.Api+JSON"), None),
        Ok("application/vnd.api+json".into())
    );
    assert_eq!(
        s.admit(Some(b"text/plain"), Some(b"identity")),
        Ok("text/plain".into())
    );
    assert!(s.admit(Some(b"application/json"), Some(b"gzip")).is_err());
    assert!(s
        .admit(Some(b"application/json; charset=utf-16"), None)
        .is_err());
    assert!(s
        .admit(Some(b"application/json;charset=\"latin1\""), None)
        .is_err());
    assert!(s.admit(Some(b"image/png"), None).is_err());
    assert!(s.admit(Some(b"application/jsonx"), None).is_err());
    assert!(s.admit(None, None).is_err());
    let two: Vec<(&str, &[u8])> = vec![
        ("content-type", b"text/plain"),
        ("Content-Type", b"application/json"),
    ];
    assert!(s.admit_headers(&two).is_err());
    assert!(s.admit_headers(&two[..1]).is_ok());
    let star = configure(br#"{"content_types": ["text/*"]}"#).unwrap();
    assert!(star.admit(Some(b"text/csv"), None).is_ok());
    assert!(star.admit(Some(b"application/json"), None).is_err());
}

#[test]
fn named_fields_in_every_syntax() {
    let s = settings("");
    let r = |t: &str| s.redact(t, &[]);
    assert_eq!(
        r(r#"{"user": "al", "password": "hunter2"}"#),
        r#"{"user": "al", "password": "[REDACTED]"}"#
    );
    assert_eq!(
        r(r#"{"Client_Secret":"x","a":1}"#),
        r#"{"Client_Secret":"[REDACTED]","a":1}"#
    );
    assert_eq!(
        r(r#"{"auth":{"api_key":"k","n":[1,2]},"b":2}"#),
        r#"{"auth":{"api_key":"[REDACTED]","n":[1,2]},"b":2}"#
    );
    assert_eq!(
        r(r#"{"tokens": ["a", "b"], "x": 1}"#),
        r#"{"tokens": [REDACTED], "x": 1}"#
    );
    assert_eq!(
        r(r#"{"pin": 1234, "ssn": 123456789}"#),
        r#"{"pin": 1234, "ssn": [REDACTED]}"#
    );
    assert_eq!(
        r("user=al&password=hunter2&x=1"),
        "user=al&password=[REDACTED]&x=1"
    );
    assert_eq!(r("pass%77ord=hunter2"), "pass%77ord=[REDACTED]");
    assert_eq!(
        r(r#"{"pass\u0077ord": "hunter2"}"#),
        r#"{"pass\u0077ord": "[REDACTED]"}"#
    );
    assert_eq!(
        r("Authorization: Bearer abc.def\r\nHost: x"),
        "Authorization: [REDACTED]\r\nHost: x"
    );
    assert_eq!(
        r(r#"{"next": "/x?access_token=abc&page=2"}"#),
        r#"{"next": "/x?access_token=[REDACTED]&page=2"}"#
    );
    assert_eq!(
        r("<root><password>x y</password></root>"),
        "<root><password>[REDACTED]</password></root>"
    );
    assert_eq!(
        r("card-number = 4111111111111111; ok"),
        "card-number = [REDACTED]; ok"
    );
    assert_eq!(
        r(r#"{"X-API-Key": "abc"}"#),
        r#"{"X-API-Key": "[REDACTED]"}"#
    );
    // JSON inside a JSON string (an API that echoes the body it got), and twice inside
    assert_eq!(
        r(r#"{"received": "{\"password\": \"hunter2\", \"n\": 1}"}"#),
        r#"{"received": "{\"password\": \"[REDACTED]\", \"n\": 1}"}"#
    );
    assert_eq!(
        r(r#"{"a": "{\"b\": \"{\\\"secret\\\": \\\"x y\\\"}\"}"}"#),
        r#"{"a": "{\"b\": \"{\\\"secret\\\": \\\"[REDACTED]\\\"}\"}"}"#
    );
    assert_eq!(
        r(r#"{"x": "{\"token\": \"cut"#),
        r#"{"x": "{\"token\": \"[REDACTED]"#
    );
    // a name that is only a value is not a field; names that do not match are left alone
    assert_eq!(
        r(r#"{"type": "password", "n": 1}"#),
        r#"{"type": "password", "n": 1}"#
    );
    assert_eq!(
        r(r#"{"passage": "x", "keyboard": "y"}"#),
        r#"{"passage": "x", "keyboard": "y"}"#
    );
    // a value cut by the window is redacted to the end
    assert_eq!(r(r#"{"password": "hunt"#), r#"{"password": "[REDACTED]""#);
    assert_eq!(
        r(r#"{"secret": {"a": [1, {"b": "#),
        r#"{"secret": [REDACTED]"#
    );
}

#[test]
fn the_requests_own_credential_in_any_form() {
    let s = settings("");
    let headers: Vec<(&str, &[u8])> = vec![
        (":path", b"/x?a=1&_apikey=q%2Fkey+1"),
        ("authorization", b"Basic YWxpY2U6cyNjcmV0LXBhdA=="),
        ("x-api-key", b"hdr-key-0001"),
        ("content-type", b"application/json"),
    ];
    let secrets = s.secrets(&headers);
    for want in [
        &b"q%2Fkey+1"[..],
        b"q/key 1",
        b"YWxpY2U6cyNjcmV0LXBhdA==",
        b"alice:s#cret-pat",
        b"s#cret-pat",
        b"hdr-key-0001",
    ] {
        assert!(
            secrets.iter().any(|s| s == want),
            "{}",
            String::from_utf8_lossy(want)
        );
    }
    let body = r#"{"echo": {"x-api-key": "hdr-key-0001", "note": "used hdr-key-0001 and s%23cret-pat and q\/key 1", "url": "/x?_apikey=q%2Fkey+1"}}"#;
    let out = s.redact(body, &secrets);
    for leaked in [
        "hdr-key-0001",
        "s#cret",
        "s%23cret",
        "q/key",
        "q\\/key",
        "q%2Fkey",
    ] {
        assert!(!out.contains(leaked), "{leaked} in {out}");
    }
    assert!(
        out.contains("\"note\": \"used [REDACTED] and [REDACTED] and [REDACTED]\""),
        "{out}"
    );
    // Bearer, and two credentials joined by Envoy
    let secrets = s.secrets(&[("authorization", &b"Bearer tok-0001, Bearer tok-0002"[..])]);
    assert_eq!(
        s.redact("tok-0001 tok-0002", &secrets),
        "[REDACTED] [REDACTED]"
    );
}

#[test]
fn key_tokens_excerpts_and_bounds() {
    let s = configure(br#"{"max_bytes": 16, "key_prefixes": ["kgb_"]}"#).unwrap();
    let e = s.excerpt(
        "application/json".into(),
        br#"{"k": "kgb_0123456789abcdef"}"#,
        Some(28),
        &[],
    );
    assert!(e.truncated);
    assert_eq!(e.text, r#"{"k": "kgb_[reda"#);
    assert_eq!(e.bytes, Some(28));
    let e = s.excerpt("text/plain".into(), b"short", Some(5), &[]);
    assert_eq!((e.text.as_str(), e.truncated), ("short", false));
    // the end of the body not seen: truncated
    assert!(
        s.excerpt("text/plain".into(), b"short", None, &[])
            .truncated
    );
    // not text: omitted, never shown
    let e = s.excerpt("text/plain".into(), b"a\0b", Some(3), &[]);
    assert_eq!(
        (e.text.as_str(), e.omitted.as_deref()),
        ("", Some("not UTF-8 text"))
    );
    assert!(s
        .excerpt("text/plain".into(), b"\xff\xfe{", Some(3), &[])
        .omitted
        .is_some());
    // a character cut by the window is fine
    assert_eq!(
        s.excerpt("text/plain".into(), "é".as_bytes()[..1].as_ref(), None, &[])
            .omitted,
        None
    );
    // a secret that starts in the excerpt is redacted whole, not cut into a prefix
    let secret = b"SECRETSECRETSECRET".to_vec();
    let mut body = b"0123456789".to_vec();
    body.extend(&secret);
    let e = s.excerpt(
        "text/plain".into(),
        &body[..s.window(std::slice::from_ref(&secret)).min(body.len())],
        Some(28),
        &[secret],
    );
    assert_eq!(e.text, "0123456789[REDAC");
    let json = render(Some(&e), None);
    assert!(
        json.starts_with(
            r#"{"req":{"type":"text/plain","bytes":28,"text":"0123456789[REDAC","truncated":true}"#
        ),
        "{json}"
    );
}

#[test]
fn capture_holds_at_most_its_window() {
    let mut c = Capture {
        admitted: Some(Ok("text/plain".into())),
        ..Capture::default()
    };
    assert_eq!(c.push(100, 150), 100);
    c.head.extend(vec![b'a'; 100]);
    assert_eq!(c.push(100, 150), 50);
    c.head.extend(vec![b'a'; 50]);
    assert_eq!(c.push(100, 150), 0);
    assert_eq!(c.total, 300);
    let mut refused = Capture {
        admitted: Some(Err("content type not recorded")),
        ..Capture::default()
    };
    assert_eq!(refused.push(100, 150), 0);
    refused.ended = true;
    let e = refused.finish(&settings(""), &[]).unwrap();
    assert_eq!(
        (e.bytes, e.omitted.as_deref()),
        (Some(100), Some("content type not recorded"))
    );
}

proptest! {
    #[test]
    fn redaction_never_panics_and_never_keeps_a_secret(
        before in "[ -~]{0,60}", after in "[ -~]{0,60}", secret in "[!-~]{4,40}", max in 1usize..200
    ) {
        let s = configure(format!(r#"{{"max_bytes": {max}}}"#).as_bytes()).unwrap();
        let header = format!("Bearer {secret}");
        let secrets = s.secrets(&[("authorization", header.as_bytes())]);
        let body = format!("{before}{secret}{after}");
        let window = s.window(&secrets).min(body.len());
        let e = s.excerpt("text/plain".into(), &body.as_bytes()[..window], Some(body.len() as u64), &secrets);
        prop_assert!(!e.text.contains(&secret));
        prop_assert!(e.text.len() <= max);
    }

    #[test]
    fn named_values_never_survive(value in "[a-zA-Z0-9]{6,30}", sep in prop::sample::select(vec![": ", "=", "\":\"", "\": \"", "\\\": \\\"", "\\\":\\\"", "': '", " = "])) {
        let s = configure(b"").unwrap();
        let body = format!("{{\"password{sep}{value}\"}}");
        prop_assert!(!s.redact(&body, &[]).contains(&value));
    }

    #[test]
    fn any_bytes_are_safe(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let s = configure(b"").unwrap();
        let _ = s.excerpt("text/plain".into(), &body, None, &[b"abcd".to_vec()]);
        let t = String::from_utf8_lossy(&body);
        let _ = s.redact(&t, &[]);
    }
}
