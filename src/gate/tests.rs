use super::rate::unix_reset;
use super::*;

use crate::config;
use crate::store::memory::MemoryStore;
use serde_json::Value;

const NOW_US: u64 = 1_800_000_000_400_000; // .4 s past a whole second

fn gate(json: &str) -> Gate {
    Gate::new(config::parse(json.as_bytes(), &mut Vec::new()).unwrap())
}

fn key_json(extra: &str) -> String {
    format!(
        r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p","scopes":["read"]}}]{extra}}}"#,
        crate::hash::to_hex(&crate::hash::sha256(b"secret-1"))
    )
}

fn run(g: &Gate, st: &MemoryStore, h: &[(&str, &[u8])]) -> Decision {
    decide(g, h, st, NOW_US)
}

#[test]
fn allowed_request_sets_identity_and_hides_the_carrier() {
    let g = gate(&key_json(""));
    let st = MemoryStore::default();
    let d = run(
        &g,
        &st,
        &[
            (":method", b"GET"),
            (":path", b"/a?x=1&_apikey=secret-1"),
            ("x-keygate-plan", b"forged"),
        ],
    );
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(a.path.as_deref(), Some(&b"/a?x=1"[..]));
    assert!(a.remove.contains(&"x-keygate-plan".to_string()));
    let id = a.identity.as_deref().unwrap();
    let h = g.identity_headers(id);
    assert_eq!((h[0].0, h[0].1.as_ref()), ("x-keygate-key-id", "k1"));
    assert_eq!((h[4].0, h[4].1.as_ref()), ("x-keygate-scopes", "read"));
    assert_eq!(a.log.key_id(), "k1");
    assert_eq!(a.log.decision, "allowed");
}

#[test]
fn rolling_window_plan_refuses_until_the_oldest_is_a_window_old() {
    let g = gate(&key_json(
        r#","rate_limit":{"plans":{"p":{"requests":3,"window_s":60,"algorithm":"rolling_window"}}}"#,
    ));
    let st = MemoryStore::default();
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
    let s = 1_000_000;
    for (i, at) in [0, 10 * s, 20 * s].into_iter().enumerate() {
        let Decision::Allow(a) = decide(&g, h, &st, NOW_US + at) else {
            panic!()
        };
        let r = a.rate.unwrap();
        assert_eq!((r.limit, r.remaining, r.reset), (3, 2 - i as u64, 60));
    }
    // 30 s later: the oldest is 30 s old, so 30 s to wait; the window is empty 50 s later
    let Decision::Deny(r, _) = decide(&g, h, &st, NOW_US + 30 * s) else {
        panic!()
    };
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("50"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["limit"], 3);
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("allows 3 requests in any 60 s; retry in 30 s"));
    // its shared-data key names the plan and the owner; 16 + 4 x 3 bytes
    assert_eq!(st.map.borrow()["keygate.v1:l:1:p:k:k1"].0.len(), 28);
    assert!(matches!(
        decide(&g, h, &st, NOW_US + 60 * s),
        Decision::Allow(_)
    ));
}

#[test]
fn malformed_credentials_can_be_401() {
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer a b")];
    let g = gate(&key_json(""));
    let Decision::Deny(r, _) = run(&g, &MemoryStore::default(), h) else {
        panic!()
    };
    assert_eq!(r.status, 400);
    assert!(r.headers.iter().any(|(_, v)| v.contains("invalid_request")));
    let g = gate(&key_json(r#","credentials":{"malformed_status":401}"#));
    let Decision::Deny(r, l) = run(&g, &MemoryStore::default(), h) else {
        panic!()
    };
    assert_eq!(
        (r.status, l.decision.as_str()),
        (401, "credential-malformed")
    );
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(challenges[0].starts_with("Bearer realm=\"keygate\", error=\"invalid_token\""));
    assert!(challenges[1].starts_with("Basic "));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], 401);
    // a conflict is a request error whatever the setting
    let h: &[(&str, &[u8])] = &[(":path", b"/a?_apikey=x"), ("authorization", b"Bearer y")];
    let Decision::Deny(r, _) = run(&g, &MemoryStore::default(), h) else {
        panic!()
    };
    assert_eq!(r.status, 400);
}

#[test]
fn grpc_requests_get_grpc_statuses() {
    let g = gate(&key_json(
        r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":60}}},"routes":[{"prefix":"/closed","access":"closed"}]"#,
    ));
    let st = MemoryStore::default();
    let grpc = |path: &'static [u8], key: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
        vec![
            (":path", path),
            ("content-type", b"application/grpc+proto"),
            ("x-api-key", key),
        ]
    };
    let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/svc/M", b"nope")) else {
        panic!()
    };
    assert_eq!((r.status, r.grpc_status), (401, Some(16)));
    assert_eq!(r.body, "", "trailers-only: the message is a header");
    assert_eq!(
        r.header("grpc-message"),
        Some("the credential is not valid")
    );
    assert_eq!(r.header("grpc-status"), Some("16"));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/closed/M", b"secret-1")) else {
        panic!()
    };
    assert_eq!(r.grpc_status, Some(7));
    assert!(matches!(
        run(&g, &st, &grpc(b"/svc/M", b"secret-1")),
        Decision::Allow(_)
    ));
    let Decision::Deny(r, _) = run(&g, &st, &grpc(b"/svc/M", b"secret-1")) else {
        panic!()
    };
    assert_eq!(r.grpc_status, Some(8));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.header("grpc-retry-pushback-ms"), Some("60000"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    // gRPC-Web: the same status, in a gRPC-Web reply
    for (ct, reply_ct) in [
        (&b"application/grpc-web"[..], "application/grpc-web+proto"),
        (b"application/grpc-web+proto", "application/grpc-web+proto"),
        (
            b"application/grpc-web-text",
            "application/grpc-web-text+proto",
        ),
        (
            b"application/grpc-web-text+proto",
            "application/grpc-web-text+proto",
        ),
    ] {
        let h: &[(&str, &[u8])] = &[
            (":path", b"/svc/M"),
            ("content-type", ct),
            ("x-api-key", b"secret-1"),
        ];
        let Decision::Deny(r, _) = run(&g, &st, h) else {
            panic!()
        };
        assert_eq!((r.status, r.grpc_status), (429, Some(8)));
        assert_eq!(r.header("grpc-status"), Some("8"));
        assert_eq!(r.header("content-type"), Some(reply_ct));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // neither: problem+json as ever
    for ct in [
        &b"application/json"[..],
        b"application/grpcx",
        b"application/grpc-webx",
        b"",
    ] {
        let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("content-type", ct)];
        let Decision::Deny(r, _) = run(&g, &st, h) else {
            panic!()
        };
        assert_eq!(r.grpc_status, None);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
}

#[test]
fn identity_headers_turned_off_are_neither_set_nor_removed() {
    let g = gate(&key_json(r#","identity_headers":{"plan":false}"#));
    let st = MemoryStore::default();
    let d = run(
        &g,
        &st,
        &[
            (":path", b"/a?_apikey=secret-1"),
            ("x-keygate-plan", b"client's"),
        ],
    );
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert!(!a.remove.contains(&"x-keygate-plan".to_string()));
    let h = g.identity_headers(a.identity.as_deref().unwrap());
    assert_eq!(h[3].0, "");
}

#[test]
fn refusals_are_problems_with_challenges() {
    let g = gate(&key_json(""));
    let st = MemoryStore::default();
    let Decision::Deny(r, log) = run(&g, &st, &[(":path", b"/a"), ("x-api-key", b"wrong")]) else {
        panic!()
    };
    assert_eq!(
        (r.status, log.decision.as_str()),
        (401, "credential-invalid")
    );
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(!r.body.contains("wrong"));
    let Decision::Deny(r, _) = run(&g, &st, &[(":path", b"/a")]) else {
        panic!()
    };
    assert_eq!(r.status, 401);
    let Decision::Deny(r, _) = run(&g, &st, &[(":path", b"/a"), ("authorization", b"Basic %%")])
    else {
        panic!()
    };
    assert_eq!(r.status, 400);
}

fn status_of(d: &Decision) -> (u32, &'static str) {
    match d {
        Decision::Allow(a) => (200, a.log.decision.as_str()),
        Decision::Deny(r, l) => (r.status, l.decision.as_str()),
    }
}

#[test]
fn spellings_upstreams_read_alike_cannot_dodge_a_rule() {
    let g = gate(&key_json(
        r#","routes":[{"prefix":"/public/","access":"public"},{"prefix":"/admin","access":"closed"},
            {"prefix":"/o","methods":["GET"],"scopes":["read"]},{"prefix":"/o","scopes":["write"]},
            {"prefix":"/e","owner":{"query":"_id","resource":"agg"}},
            {"prefix":"/j","owner":{"query":"_id","resource":"agg","body":"reject"}}]"#,
    ));
    let st = MemoryStore::default();
    let k: (&str, &[u8]) = ("x-api-key", b"secret-1");
    const FORM: &[(&str, &[u8])] = &[
        ("content-length", b"2"),
        ("content-type", b"application/x-www-form-urlencoded"),
    ];
    const MULTI: &[(&str, &[u8])] = &[
        ("content-length", b"2"),
        ("content-type", b"multipart/form-data; boundary=x"),
    ];
    const JSON: &[(&str, &[u8])] = &[
        ("content-length", b"2"),
        ("content-type", b"Application/JSON; charset=utf-8"),
    ];
    const PJSON: &[(&str, &[u8])] = &[
        ("content-length", b"2"),
        ("content-type", b"application/problem+json"),
    ];
    type Case<'a> = (
        &'a [u8],
        &'a [u8],
        &'a [(&'a str, &'a [u8])],
        (u32, &'a str),
    );
    let cases: &[Case] = &[
        (b"GET", b"/ADMIN/x", &[], (403, "route-closed")),
        (b"GET", b"/%61dmin", &[], (403, "route-closed")),
        (b"GET", b"/x//admin", &[], (200, "allowed")),
        (b"GET", b"/public//admin", &[], (200, "public")),
        (b"GET", b"/%2Fadmin/x", &[], (400, "request-ambiguous")),
        (
            b"GET",
            b"/public/..%2Fadmin",
            &[],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/public/%2e%2e/admin",
            &[],
            (400, "request-ambiguous"),
        ),
        (b"GET", b"/admin;x/y", &[], (400, "request-ambiguous")),
        (b"GET", b"//admin", &[], (400, "request-ambiguous")),
        (b"GET", b"/o", &[], (200, "allowed")),
        (b"post", b"/o", &[], (403, "insufficient-scope")),
        (b"Get", b"/o", &[], (200, "allowed")),
        (
            b"GET",
            b"/o",
            &[("x-http-method-override", b"DELETE")],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/o",
            &[("x_http_method_override", b"DELETE")],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/o?_method=DELETE",
            &[],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/o?_METHOD=DELETE",
            &[],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/o",
            &[("x_api_key", b"other")],
            (400, "request-ambiguous"),
        ),
        (
            b"GET",
            b"/e?_id=x",
            &[("content-length", b"5")],
            (400, "request-ambiguous"), // a body on GET: refused from the headers
        ),
        (b"DELETE", b"/e", FORM, (400, "request-ambiguous")),
        (b"get", b"/e", FORM, (400, "request-ambiguous")),
        (b"POST", b"/e?_id=x", MULTI, (400, "request-ambiguous")),
        (b"POST", b"/e?_id=x", PJSON, (404, "resource-forbidden")),
        (
            b"GET",
            b"/e?_id=x",
            &[("content-length", b"0")],
            (404, "resource-forbidden"),
        ),
        (b"POST", b"/j?_id=x", FORM, (400, "request-ambiguous")),
        (b"POST", b"/j?_id=x", MULTI, (400, "request-ambiguous")),
        (
            b"POST",
            b"/j?_id=x",
            &[("content-length", b"2")],
            (400, "request-ambiguous"),
        ),
        (b"POST", b"/j?_id=x", JSON, (400, "request-ambiguous")),
        (b"POST", b"/j?_id=x", PJSON, (400, "request-ambiguous")),
    ];
    for (m, path, extra, want) in cases {
        let mut h: Vec<(&str, &[u8])> = vec![(":method", m), (":path", path), k];
        h.extend_from_slice(extra);
        let d = run(&g, &st, &h);
        assert_eq!(
            status_of(&d),
            *want,
            "{} {}",
            String::from_utf8_lossy(m),
            String::from_utf8_lossy(path)
        );
    }
    // forged identity in underscore spellings is removed, like the dashed one
    let d = run(
        &g,
        &st,
        &[
            (":method", b"GET"),
            (":path", b"/x"),
            k,
            ("x_keygate_key_id", b"forged"),
            ("x_keygate_fail_open", b"forged"),
        ],
    );
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert!(a.remove.contains(&"x_keygate_key_id".to_string()));
    assert!(a.remove.contains(&"x_keygate_fail_open".to_string()));
}

#[test]
fn owner_routes_read_form_and_json_bodies() {
    let g = gate(&format!(
        r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p","resources":{{"agg":["a1"]}}}}],
            "routes":[{{"prefix":"/e","owner":{{"query":"_id","resource":"agg"}}}}]}}"#,
        crate::hash::to_hex(&crate::hash::sha256(b"secret-1"))
    ));
    let st = MemoryStore::default();
    let form: &[u8] = b"application/x-www-form-urlencoded";
    let json: &[u8] = b"application/json";
    for (path, ct, body, want) in [
        (&b"/e?_id=a1"[..], form, &b"name=x"[..], (200, "allowed")),
        (b"/e", form, b"_id=a1&name=x", (200, "allowed")),
        (
            b"/e?_id=a1",
            form,
            b"_id=victim",
            (404, "resource-forbidden"),
        ),
        (
            b"/e?_id=a1",
            form,
            b"x=1;_ID=victim",
            (404, "resource-forbidden"),
        ),
        (b"/e?_id=a1", json, br#"{"name":"x"}"#, (200, "allowed")),
        (
            b"/e?_id=a1",
            json,
            br#"{"_id":"victim"}"#,
            (404, "resource-forbidden"),
        ),
        (
            b"/e?_id=a1",
            json,
            br#"{"_id":{"$ne":"a1"}}"#,
            (404, "resource-forbidden"),
        ),
        (b"/e?_id=a1", json, b"{not json", (400, "request-ambiguous")),
        (
            b"/e?_id=a1",
            b"multipart/form-data; boundary=z",
            b"--z--",
            (400, "request-ambiguous"),
        ),
        (
            b"/e?_id=a1",
            b"text/plain",
            b"_id=victim",
            (400, "request-ambiguous"),
        ),
        (b"/e", json, b"{}", (404, "resource-forbidden")),
        // a member named twice: first-wins and last-wins readers disagree
        (
            b"/e?_id=a1",
            json,
            br#"{"_id":"a1","_id":"victim"}"#,
            (400, "request-ambiguous"),
        ),
        (
            b"/e?_id=a1",
            json,
            br#"{"_id":"victim","_id":"a1"}"#,
            (400, "request-ambiguous"),
        ),
        (b"/e", json, br#"{"_id":"a1","_ID":"a1"}"#, (200, "allowed")),
        // a form that is JSON is read as JSON too
        (
            b"/e?_id=a1",
            form,
            br#"{"_id":"victim"}"#,
            (404, "resource-forbidden"),
        ),
        (
            b"/e?_id=a1",
            form,
            b"_id%00=victim",
            (404, "resource-forbidden"),
        ),
        (
            b"/e?_id=a1",
            form,
            b"\xef\xbb\xbf_id=a1",
            (400, "request-ambiguous"),
        ),
        // types, charsets and codings that read differently: refused from the headers
        (
            b"/e?_id=a1",
            b"application/x-www-form-urlencoded, x/y+json",
            br#"{"name":"x"}"#,
            (400, "request-ambiguous"),
        ),
        (
            b"/e?_id=a1",
            b"application/x-www-form-urlencoded; charset=utf-16",
            b"name=x",
            (400, "request-ambiguous"),
        ),
        (b"/e?_id=a1", b"", b"name=x", (400, "request-ambiguous")),
    ] {
        let h: &[(&str, &[u8])] = &[
            (":method", b"POST"),
            (":path", path),
            ("x-api-key", b"secret-1"),
            ("content-type", ct),
            ("content-length", b"1"),
        ];
        let d = decide_with_body(&g, h, body, &st, NOW_US);
        assert_eq!(status_of(&d), want, "{}", String::from_utf8_lossy(body));
    }
    // a compressed body is refused before it is read
    let h: &[(&str, &[u8])] = &[
        (":method", b"POST"),
        (":path", b"/e?_id=a1"),
        ("x-api-key", b"secret-1"),
        ("content-type", form),
        ("content-encoding", b"gzip"),
        ("content-length", b"1"),
    ];
    assert_eq!(
        status_of(&decide_with_body(&g, h, b"x", &st, NOW_US)),
        (400, "request-ambiguous")
    );
    // the owner parameter cut at NUL in the query
    let h: &[(&str, &[u8])] = &[
        (":method", b"GET"),
        (":path", b"/e?_id=a1&_id%00=victim"),
        ("x-api-key", b"secret-1"),
    ];
    assert_eq!(
        status_of(&decide(&g, h, &st, NOW_US)),
        (404, "resource-forbidden")
    );
    let big = vec![b'a'; body::MAX_OWNER_BODY + 1];
    let h: &[(&str, &[u8])] = &[
        (":method", b"POST"),
        (":path", b"/e?_id=a1"),
        ("x-api-key", b"secret-1"),
        ("content-type", form),
        ("content-length", b"1"),
    ];
    assert_eq!(
        status_of(&decide_with_body(&g, h, &big, &st, NOW_US)).0,
        413
    );
}

#[test]
fn authorization_lists_in_any_order_are_a_conflict() {
    let g = gate(&key_json(""));
    let st = MemoryStore::default();
    for v in [
        &b"Digest x,Bearer secret-1"[..],
        b"Bearer secret-1, Digest x",
        b"Digest x, bearer\tsecret-1",
        b"Negotiate abc,Basic YTpi",
    ] {
        let h: &[(&str, &[u8])] = &[
            (":path", b"/a"),
            ("authorization", v),
            ("x-api-key", b"secret-1"),
        ];
        assert_eq!(
            status_of(&run(&g, &st, h)),
            (400, "credential-conflict"),
            "{}",
            String::from_utf8_lossy(v)
        );
    }
    // a tab after the scheme is a separator; anything else glued to it is malformed
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer\tsecret-1")];
    assert_eq!(status_of(&run(&g, &st, h)), (200, "allowed"));
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("authorization", b"Bearer=secret-1")];
    assert_eq!(status_of(&run(&g, &st, h)), (400, "credential-malformed"));
    // a foreign scheme alone is the upstream's business
    let h: &[(&str, &[u8])] = &[
        (":path", b"/a"),
        ("authorization", b"Digest x"),
        ("x-api-key", b"secret-1"),
    ];
    assert_eq!(status_of(&run(&g, &st, h)), (200, "allowed"));
}

#[test]
fn log_values_read_one_way_only() {
    let mut v = String::new();
    for (val, want) in [
        ("k1", "k1"),
        ("", "-"),
        ("a b=c", "a_b_c"),
        ("x\"y\\z\n", "x_y_z_"),
        ("caf\u{e9}", "caf_"),
    ] {
        v.clear();
        push_log_value(&mut v, val);
        assert_eq!(v, want);
    }
}

#[test]
fn unix_reset_is_never_early() {
    let g = gate(&key_json(
        r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":2}},"reset":"unix"}"#,
    ));
    let st = MemoryStore::default();
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
    let Decision::Allow(a) = run(&g, &st, h) else {
        panic!()
    };
    let reset: u64 = a
        .rate
        .unwrap()
        .pairs()
        .into_iter()
        .find(|(n, _)| *n == "x-ratelimit-reset")
        .unwrap()
        .1
        .parse()
        .unwrap();
    // full again at now + 2 s = ...2.4 s: the header must say ...3, not ...2
    assert_eq!(reset, 1_800_000_003);
    assert_eq!(unix_reset(NOW_US, 2000), 1_800_000_003);
    assert_eq!(unix_reset(1_800_000_000_000_000, 2000), 1_800_000_002);
    let Decision::Deny(r, _) = run(&g, &st, h) else {
        panic!()
    };
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["resetTime"], 1_800_000_003u64);
    assert_eq!(
        body["detail"],
        "the `p` policy allows 1 requests per 2 s (burst 1); retry in 2 s"
    );
    assert_eq!(body["policy"], "p");
    assert_eq!(r.header("retry-after"), Some("2"));
}

#[test]
fn rate_headers_turned_off_leave_allowed_responses_alone_but_not_the_429() {
    let g = gate(&key_json(
        r#","rate_limit":{"plans":{"p":{"requests":1,"window_s":60}},"headers":false,"ietf_headers":true}"#,
    ));
    let st = MemoryStore::default();
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
    let Decision::Allow(a) = run(&g, &st, h) else {
        panic!()
    };
    assert_eq!(a.rate, None);
    // the token was still taken: the next request is over the limit
    let Decision::Deny(r, log) = run(&g, &st, h) else {
        panic!()
    };
    assert_eq!((r.status, log.decision.as_str()), (429, "rate-limited"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"p\";q=1;w=60"));
    assert!(r.header("retry-after").is_some());
}

#[test]
fn problems_echo_only_a_printable_request_id_of_at_most_128_bytes() {
    let g = gate(&key_json(""));
    let st = MemoryStore::default();
    let long = "r".repeat(128);
    let too_long = "r".repeat(129);
    for (id, echoed) in [
        ("abc-123", true),
        (long.as_str(), true),
        (too_long.as_str(), false),
        ("has space", false),
        ("", false),
    ] {
        // a 400 from phase one (bad percent-encoding), a 401 from phase two (unknown key)
        for (path, key, status) in [
            (&b"/a?_apikey=%zz"[..], &b"secret-1"[..], 400),
            (&b"/a"[..], &b"wrong"[..], 401),
        ] {
            let h: &[(&str, &[u8])] = &[
                (":path", path),
                ("x-request-id", id.as_bytes()),
                ("x-api-key", key),
            ];
            let Decision::Deny(r, _) = run(&g, &st, h) else {
                panic!()
            };
            assert_eq!(r.status, status);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body.get("request_id").is_some(), echoed, "{id:?}");
            if echoed {
                assert_eq!(body["request_id"], id);
            }
        }
    }
}

#[test]
fn rate_headers_are_on_by_default() {
    let g = gate(&key_json(
        r#","rate_limit":{"plans":{"p":{"requests":5,"window_s":60}}}"#,
    ));
    let st = MemoryStore::default();
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"secret-1")];
    let Decision::Allow(a) = run(&g, &st, h) else {
        panic!()
    };
    let names: Vec<&str> = a.rate.unwrap().pairs().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset"
        ]
    );
}

#[test]
fn public_routes_strip_but_do_not_verify() {
    let g = gate(&key_json(
        r#","routes":[{"exact":"/health","access":"public"}]"#,
    ));
    let st = MemoryStore::default();
    let d = run(
        &g,
        &st,
        &[
            (":path", b"/health?_apikey=zzz"),
            ("x-api-key", b"not-checked"),
            ("x-keygate-key-id", b"f"),
        ],
    );
    let Decision::Allow(a) = d else { panic!() };
    assert_eq!(a.log.decision, "public");
    assert_eq!(a.path.as_deref(), Some(&b"/health"[..]));
    assert!(
        a.remove.contains(&"x-api-key".to_string())
            && a.remove.contains(&"x-keygate-key-id".to_string())
    );
    assert!(a.set.is_empty() && a.identity.is_none());
}

#[test]
fn fail_open_and_throttled_and_unavailable() {
    let g = gate(&key_json(r#","key_service":{"cluster":"ks"}"#));
    let Step::Verify(p) = g.begin(&[
        (":path", b"/a?_apikey=unknown"),
        (FAIL_OPEN_HEADER, b"forged"),
    ]) else {
        panic!()
    };
    let digest = crate::hash::sha256(p.credential.secret.as_bytes());
    assert!(g
        .embedded_verdict(&p, &digest, NOW_US / 1_000_000)
        .is_none()); // defers to the service
    let Decision::Deny(r, _) = g.unavailable(&p, 3) else {
        panic!()
    };
    assert_eq!((r.status, r.header("retry-after")), (503, Some("3")));
    let Decision::Deny(r, _) = g.throttled(&p, 1500) else {
        panic!()
    };
    assert_eq!((r.status, r.header("retry-after")), (429, Some("2")));
    let Decision::Allow(a) = g.fail_open(p, "timeout") else {
        panic!()
    };
    assert_eq!(
        a.set,
        vec![(FAIL_OPEN_HEADER.to_string(), "timeout".to_string())]
    );
    assert!(a.remove.contains(&FAIL_OPEN_HEADER.to_string()));
    assert_eq!(a.path.as_deref(), Some(&b"/a"[..]));
}

fn admitted(g: &Gate) -> Admitted {
    let Step::Verify(p) = g.begin(&[
        (":method", b"GET"),
        (":path", b"/a?_apikey=secret-1"),
        ("x-request-id", b"r-1"),
    ]) else {
        panic!("expected a credential")
    };
    let digest = crate::hash::sha256(p.credential.secret.as_bytes());
    let v = g.embedded_verdict(&p, &digest, NOW_US / 1_000_000).unwrap();
    g.admit(p, v).unwrap()
}

const FLEET: &str = r#","rate_limit":{"plans":{"p":{"requests":5,"window_s":60,"per":"account"}}},
    "fleet":{"cluster":"rls","plans":{"p":"request"}}"#;

#[test]
fn the_fleet_tier_targets_the_policy_owner() {
    let g = gate(&key_json(FLEET));
    let a = admitted(&g);
    let t = g.target(&a).unwrap();
    assert_eq!(
        (t.policy, t.owner, t.per, t.kind),
        ("p", "acme", Scope::Account, Scope::Account)
    );
    assert_eq!(t.lease_key("kg"), "kg:f:1:p:a:acme");
    assert_eq!(
        g.cfg.fleet.as_ref().unwrap().mode_for(t.policy),
        crate::fleet::Mode::Request
    );
}

#[test]
fn a_fleet_allow_carries_the_engines_count_and_hides_the_carrier() {
    let g = gate(&key_json(FLEET));
    let d = g.fleet_allowed(admitted(&g), 30, Some((12, 41_500)), NOW_US);
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    let r = a.rate.unwrap();
    assert_eq!((r.limit, r.remaining, r.reset), (30, 12, 42));
    assert_eq!(a.path.as_deref(), Some(&b"/a"[..]));
    assert_eq!(a.log.decision, "allowed");
    // the engine said nothing about its count: no headers rather than made-up ones
    let Decision::Allow(a) = g.fleet_allowed(admitted(&g), 30, None, NOW_US) else {
        panic!()
    };
    assert!(a.rate.is_none());
}

#[test]
fn a_fleet_429_is_the_same_problem_as_a_local_one() {
    let g = gate(&key_json(FLEET));
    let Decision::Deny(r, log) = g.fleet_over_limit(&admitted(&g), 30, 41_500, NOW_US) else {
        panic!()
    };
    assert_eq!(r.status, 429);
    assert_eq!(log.decision, "rate-limited");
    assert_eq!(r.header("retry-after"), Some("42"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("30"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["type"], "urn:keygate:problem:rate-limited");
    assert_eq!(body["limit"], 30);
    assert_eq!(body["policy"], "p");
    assert_eq!(body["request_id"], "r-1");
    assert_eq!(body["instance"], "/a");
}

#[test]
fn an_engine_failure_refused_closed_is_a_503_problem() {
    let g = gate(&key_json(FLEET));
    let Decision::Deny(r, log) = g.fleet_unavailable(&admitted(&g), 3) else {
        panic!()
    };
    assert_eq!(r.status, 503);
    assert_eq!(log.decision, "rate-limit-unavailable");
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // and the local tier still decides when asked (the `local` fallback)
    let st = MemoryStore::default();
    for _ in 0..5 {
        assert!(matches!(
            g.limit_local(admitted(&g), &st, NOW_US),
            Decision::Allow(_)
        ));
    }
    assert!(matches!(
        g.limit_local(admitted(&g), &st, NOW_US),
        Decision::Deny(..)
    ));
}

#[test]
fn fleet_config_refusals_name_the_field() {
    let bad = |extra: &str| {
        config::parse(key_json(extra).as_bytes(), &mut Vec::new())
            .unwrap_err()
            .field
    };
    assert_eq!(
        bad(r#","fleet":{"cluster":"rls","plans":{"nope":"request"}}"#),
        "fleet.plans.nope"
    );
    assert_eq!(
        bad(r#","fleet":{"cluster":"rls","plans":{"key":"sometimes"}}"#),
        "fleet.plans.key"
    );
    assert_eq!(bad(r#","fleet":{}"#), "fleet.cluster");
    assert_eq!(
        bad(r#","fleet":{"cluster":"rls","on_failure":"open"}"#),
        "fleet.on_failure"
    );
    assert_eq!(
        bad(r#","fleet":{"cluster":"rls","lease":{"percent":0}}"#),
        "fleet.lease.percent"
    );
    assert_eq!(
        bad(r#","fleet":{"cluster":"rls","timeout_ms":0}"#),
        "fleet.timeout_ms"
    );
}

#[test]
fn a_basic_users_key_is_no_bearer_token_and_a_plain_key_no_basic_password() {
    let sha = |s: &[u8]| crate::hash::to_hex(&crate::hash::sha256(s));
    let g = gate(&format!(
        r#"{{"keys":[{{"id":"pat","sha256":"{}","user":"alice"}},{{"id":"plain","sha256":"{}"}}]}}"#,
        sha(b"pat-secret"),
        sha(b"plain-secret")
    ));
    let st = MemoryStore::default();
    let basic = |u: &str, p: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let status = |auth: &[(&str, &[u8])]| match run(&g, &st, auth) {
        Decision::Allow(a) => (200, a.log.key_id().to_string()),
        Decision::Deny(r, l) => (r.status, l.decision.as_str().to_string()),
    };
    let ok_basic = basic("alice", "pat-secret");
    assert_eq!(
        status(&[(":path", b"/a"), ("authorization", ok_basic.as_bytes())]),
        (200, "pat".to_string())
    );
    for refused in [
        "Bearer pat-secret".to_string(),
        basic("bob", "pat-secret"),
        basic("alice", "plain-secret"),
    ] {
        assert_eq!(
            status(&[(":path", b"/a"), ("authorization", refused.as_bytes())]).0,
            401,
            "{refused}"
        );
    }
    assert_eq!(
        status(&[(":path", b"/a"), ("x-api-key", b"pat-secret")]).0,
        401
    );
    assert_eq!(
        status(&[(":path", b"/a"), ("x-api-key", b"plain-secret")]),
        (200, "plain".to_string())
    );
}

#[test]
fn a_plan_the_config_does_not_declare_is_never_an_unlimited_key() {
    let sha = crate::hash::to_hex(&crate::hash::sha256(b"secret-1"));
    // embedded keys: refused at configuration
    for (rate, field) in [
        (r#"{"plans":{"pro":{"requests":5}}}"#, "keys[0].plan"),
        (
            r#"{"plans":{"pro":{"requests":5}},"default":"unlimited"}"#,
            "keys[0].plan",
        ),
    ] {
        let cfg = format!(
            r#"{{"keys":[{{"id":"k","sha256":"{sha}","plan":"porn"}}],"rate_limit":{rate}}}"#
        );
        let e = config::parse(cfg.as_bytes(), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
    let no_plan = format!(
        r#"{{"keys":[{{"id":"k","sha256":"{sha}"}}],"rate_limit":{{"plans":{{"pro":{{"requests":5}}}}}}}}"#
    );
    assert!(config::parse(no_plan.as_bytes(), &mut Vec::new()).is_err());
    // without a rate_limit section nothing is limited and plans are names
    let labels = format!(r#"{{"keys":[{{"id":"k","sha256":"{sha}","plan":"any"}}]}}"#);
    assert!(config::parse(labels.as_bytes(), &mut Vec::new()).is_ok());

    // a verdict from elsewhere (key service, cache) naming an undeclared plan: 503, not allowed
    let g = gate(r#"{"rate_limit":{"plans":{"pro":{"requests":5}}}}"#);
    let st = MemoryStore::default();
    let id = |plan: &str| {
        Verdict::Valid(Rc::new(Identity {
            key_id: "k".into(),
            subject: "k".into(),
            account: "acme".into(),
            plan: plan.into(),
            scopes: vec![],
            expires_at: None,
            rate_limit: None,
            resources: vec![],
        }))
    };
    let h: &[(&str, &[u8])] = &[(":path", b"/a"), ("x-api-key", b"whatever")];
    let Step::Verify(p) = g.begin(h) else {
        panic!()
    };
    let Decision::Deny(r, _) = g.finish(p, id("porn"), &st, NOW_US) else {
        panic!()
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let Step::Verify(p) = g.begin(h) else {
        panic!()
    };
    assert!(matches!(
        g.finish(p, id("pro"), &st, NOW_US),
        Decision::Allow(_)
    ));
    // with a default, other plans get it
    let g = gate(r#"{"rate_limit":{"plans":{"pro":{"requests":5}},"default":{"requests":2}}}"#);
    let Step::Verify(p) = g.begin(h) else {
        panic!()
    };
    let d = g.finish(p, id("porn"), &MemoryStore::default(), NOW_US);
    let Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(a.rate.unwrap().limit, 2);
}

#[test]
fn trailers_lose_identity_headers_and_carriers_and_flag_what_changes_a_body() {
    let g = gate(&key_json(""));
    let pairs: &[(&str, &[u8])] = &[
        ("x-keygate-account", b"victim"),
        ("x_keygate_plan", b"forged"),
        ("x-keygate-fail-open", b"1"),
        ("x-api-key", b"secret-1"),
        ("authorization", b"Bearer secret-1"),
        ("x-other", b"kept"),
    ];
    let (remove, changes) = g.trailers(pairs);
    assert_eq!(
        remove,
        [
            "x-keygate-account",
            "x_keygate_plan",
            "x-keygate-fail-open",
            "x-api-key",
            "authorization"
        ]
    );
    assert!(!changes);
    // a scheme keygate does not read stays, as in the headers
    let (remove, _) = g.trailers(&[("authorization", &b"Digest x"[..])]);
    assert!(remove.is_empty());
    for name in [
        "content-type",
        "Content-Encoding",
        "x-http-method-override",
        "x_http_method",
        "cookie",
    ] {
        let lower = name.to_ascii_lowercase();
        let (_, changes) = g.trailers(&[(lower.as_str(), &b"x"[..])]);
        assert!(changes, "{name}");
    }
}

#[test]
fn a_request_refused_from_its_body_spends_no_token_and_one_let_through_gets_its_headers() {
    let g = gate(&format!(
        r#"{{"keys":[{{"id":"k1","sha256":"{}","account":"acme","plan":"p","resources":{{"agg":["a1"]}}}}],
            "rate_limit":{{"plans":{{"p":{{"requests":3,"window_s":3600}}}}}},
            "routes":[{{"prefix":"/e","owner":{{"query":"_id","resource":"agg","status":404}}}}]}}"#,
        crate::hash::to_hex(&crate::hash::sha256(b"secret-1"))
    ));
    let st = MemoryStore::default();
    let post: &[(&str, &[u8])] = &[
        (":method", b"POST"),
        (":path", b"/e?_id=a1"),
        ("x-api-key", b"secret-1"),
        ("content-type", b"application/x-www-form-urlencoded"),
        ("content-length", b"9"),
    ];
    for _ in 0..5 {
        let d = decide_with_body(&g, post, b"_id=other", &st, NOW_US);
        assert_eq!(status_of(&d), (404, "resource-forbidden"));
    }
    // the headers alone count nothing yet
    let Step::Verify(p) = g.begin(post) else {
        panic!()
    };
    let digest = crate::hash::sha256(b"secret-1");
    let v = g.embedded_verdict(&p, &digest, NOW_US / 1_000_000).unwrap();
    let mut a = g.admit(p, v).unwrap();
    let Some(Decision::Allow(first)) = g.before_body(&mut a) else {
        panic!()
    };
    assert!(first.rate.is_none() && first.body.is_some() && a.headers_sent());
    assert!(
        first.identity.is_some(),
        "identity headers go with the headers"
    );
    // its limit, once the body passed, changes no header
    let Decision::Allow(later) = g.limit_local(a, &st, NOW_US * 1000) else {
        panic!()
    };
    assert!(later.identity.is_none() && later.remove.is_empty() && later.path.is_none());
    assert_eq!(
        later.rate.as_ref().unwrap().remaining,
        2,
        "the first token spent"
    );
    let Decision::Allow(a) = decide_with_body(&g, post, b"_id=a1", &st, NOW_US) else {
        panic!()
    };
    assert_eq!(a.rate.unwrap().remaining, 1);
    assert!(a.identity.is_some());
    let d = decide_with_body(&g, post, b"_id=a1", &st, NOW_US);
    assert_eq!(status_of(&d).0, 200);
    let d = decide_with_body(&g, post, b"_id=a1", &st, NOW_US);
    assert_eq!(status_of(&d), (429, "rate-limited"));
}

#[test]
fn a_method_override_in_a_form_body_is_read_where_the_method_moves_the_route() {
    let g = gate(&key_json(
        r#","routes":[{"prefix":"/c","methods":["POST"],"access":"public"},{"prefix":"/c","scopes":["write"]},
            {"prefix":"/k","methods":["GET"],"access":"public"},{"prefix":"/k","scopes":["read"]},
            {"prefix":"/any","scopes":["read"]}]"#,
    ));
    let st = MemoryStore::default();
    let post = |path: &'static [u8], ct: Option<&'static [u8]>, body: &[u8]| {
        let mut h: Vec<(&str, &[u8])> = vec![
            (":method", b"POST"),
            (":path", path),
            ("x-api-key", b"secret-1"),
            ("content-length", b"9"),
        ];
        if let Some(ct) = ct {
            h.push(("content-type", ct));
        }
        status_of(&decide_with_body(&g, &h, body, &st, NOW_US))
    };
    let form = Some(&b"application/x-www-form-urlencoded"[..]);
    let refused = (400, "request-ambiguous");
    // a public POST rule: a form naming another method in any spelling a reader takes is refused
    for body in [
        &b"_method=DELETE"[..],
        b"a=1&_METHOD=delete",
        b"%5Fmethod=DELETE",
        b"_method%00x=DELETE",
        b"a=1;_method=PUT",
        b".method=DELETE",
        b"[method=DELETE",
        b"_method",
        br#"{"_method":"DELETE"}"#,
    ] {
        assert_eq!(post(b"/c/42", form, body), refused, "{body:?}");
        // a POST without a type is a form to Rack
        assert_eq!(post(b"/c/42", None, body), refused, "{body:?} untyped");
    }
    assert_eq!(post(b"/c/42", form, b"text=hi&method=x"), (200, "public"));
    // multipart is not read: refused where the method matters
    let multi = Some(&b"multipart/form-data; boundary=z"[..]);
    assert_eq!(post(b"/c/42", multi, b"--z--"), refused);
    assert_eq!(post(b"/c/42", Some(b"form, text/plain"), b"x"), refused);
    // other types are not forms to those readers
    let json = Some(&b"application/json"[..]);
    assert_eq!(
        post(b"/c/42", json, br#"{"_method":"DELETE"}"#),
        (200, "public")
    );
    // a route keygate checks a key on: the same, and the form of a key with the scope passes
    assert_eq!(post(b"/k/1", form, b"_method=GET"), refused);
    assert_eq!(post(b"/k/1", form, b"q=1"), (200, "allowed"));
    // where every method lands on the same rule, the body is not read
    assert_eq!(post(b"/any/1", form, b"_method=DELETE"), (200, "allowed"));
    assert_eq!(post(b"/any/1", multi, b"--z--"), (200, "allowed"));
    // a form longer than keygate reads is refused where it must be read
    let big = vec![b'a'; body::MAX_OWNER_BODY + 1];
    assert_eq!(post(b"/c/42", form, &big).0, 413);
}
