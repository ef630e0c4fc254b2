use super::*;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use proptest::prelude::*;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn export(records: Vec<Vec<KeyValue>>) -> Vec<u8> {
    let log_records = records
        .into_iter()
        .map(|attributes| LogRecord {
            time_unix_nano: 1_796_592_600_123_000_000,
            attributes,
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

const NOW: i64 = 1_796_592_700_000;

fn export_lines(records: Vec<(&str, Vec<KeyValue>)>) -> Vec<u8> {
    let log_records = records
        .into_iter()
        .map(|(line, attributes)| LogRecord {
            time_unix_nano: 1_796_592_600_123_000_000,
            body: Some(AnyValue {
                value: Some(Value::StringValue(line.into())),
            }),
            attributes,
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn a_record_as_one_line_reads_as_its_attributes() {
    let line = "decision=allowed key_id=bk_1 account=acme plan=free method=POST status=201 \
                duration_ms=12 upstream_ms=9 bytes_in=17 bytes_out=230 \
                path=/v1/objects/events?_apikey=kgb_4X9mQ2vL0pZr7TnE request_id=abc-123\n";
    let bodies = r#"{"req":{"type":"application/json","bytes":2,"text":"{}","truncated":false}}"#;
    let from_line = decode(
        &export_lines(vec![(line, vec![kv(ATTR_BODIES, bodies)])]),
        NOW,
        &default_prefixes(),
    )
    .unwrap();
    let from_attrs = decode(
        &export(vec![vec![
            kv(ATTR_METHOD, "POST"),
            kv(ATTR_PATH, "/v1/objects/events"),
            kv(ATTR_STATUS, "201"),
            kv(ATTR_DURATION, "12"),
            kv(ATTR_UPSTREAM, "9"),
            kv(ATTR_BYTES_IN, "17"),
            kv(ATTR_BYTES_OUT, "230"),
            kv(ATTR_REQUEST_ID, "abc-123"),
            kv(
                ATTR_KEYGATE,
                "decision=allowed key_id=bk_1 account=acme plan=free",
            ),
            kv(ATTR_BODIES, bodies),
        ]]),
        NOW,
        &default_prefixes(),
    )
    .unwrap();
    assert_eq!(from_line, from_attrs);
    assert_eq!(from_line.records.len(), 1);
    assert_eq!(from_line.records[0].path, "/v1/objects/events");
}

#[test]
fn a_line_gives_no_owner_that_keygate_did_not() {
    let d = decode(
        &export_lines(vec![
            // a request id a client chose cannot name a key or account
            (
                "decision=credential-invalid key_id=- account=- plan=- method=GET status=401 \
                 path=/x request_id=r key_id=bk_victim account=victim",
                vec![],
            ),
            // keygate did not run (`-`): the line does not start with its state
            (
                "- method=GET status=200 path=/x request_id=decision=allowed key_id=bk_victim",
                vec![],
            ),
            // a field given twice counts the first time
            (
                "decision=allowed key_id=bk_1 account=acme plan=free status=200 status=500 \
                 path=/a path=/b",
                vec![],
            ),
        ]),
        NOW,
        &default_prefixes(),
    )
    .unwrap();
    assert_eq!(d.without_key, 2);
    let [r] = &d.records[..] else { panic!("{d:?}") };
    assert_eq!((r.key_id.as_str(), r.account.as_str()), ("bk_1", "acme"));
    assert_eq!((r.status, r.path.as_str()), (200, "/a"));
}

#[test]
fn keygates_path_and_request_id_are_preferred_to_the_lines() {
    // keygate's state gives them (the credential replaced, spaces escaped): a line that still
    // sends Envoy's raw fields after it does not replace them, nor does a value forge them
    let d = decode(
        &export_lines(vec![
            (
                "decision=allowed key_id=bk_1 account=acme plan=free path=/emb/[REDACTED]/x \
                 request_id=[REDACTED] method=GET status=200 path=/emb/embedded-key-0003/x \
                 request_id=embedded-key-0003",
                vec![],
            ),
            (
                "decision=allowed key_id=bk_1 account=acme plan=free \
                 path=/a%20request_id=forged%20key_id=bk_victim request_id=r-2 status=200",
                vec![],
            ),
            // keygate's fields come first or not at all
            (
                "decision=allowed path=/p key_id=bk_victim account=victim plan=free status=200",
                vec![],
            ),
        ]),
        NOW,
        &default_prefixes(),
    )
    .unwrap();
    let [a, b] = &d.records[..] else {
        panic!("{d:?}")
    };
    assert_eq!(
        (a.path.as_str(), a.request_id.as_str()),
        ("/emb/[REDACTED]/x", "[REDACTED]")
    );
    assert_eq!(a.status, 200);
    assert_eq!(b.path, "/a%20request_id=forged%20key_id=bk_victim");
    assert_eq!((b.key_id.as_str(), b.request_id.as_str()), ("bk_1", "r-2"));
    assert_eq!(d.without_key, 1);
}

#[test]
fn a_record_as_envoy_sends_it() {
    let body = export(vec![
        vec![
            kv(ATTR_METHOD, "POST"),
            kv(ATTR_PATH, "/v1/objects/events"),
            kv(ATTR_STATUS, "201"),
            kv(ATTR_DURATION, "12"),
            kv(ATTR_UPSTREAM, "9"),
            kv(ATTR_BYTES_IN, "17"),
            kv(ATTR_BYTES_OUT, "230"),
            kv(ATTR_REQUEST_ID, "abc-123"),
            kv(
                ATTR_KEYGATE,
                "decision=allowed key_id=bk_1 account=acme plan=free",
            ),
            kv(
                ATTR_BODIES,
                r#"{"req":{"type":"application/json","bytes":17,"text":"{\"a\":\"kgb_4X9mQ2vL0pZr7TnE\"}","truncated":false},"resp":{"type":"image/png","omitted":"type not recorded"}}"#,
            ),
        ],
        // no key: a 401 without an owner
        vec![
            kv(ATTR_STATUS, "401"),
            kv(
                ATTR_KEYGATE,
                "decision=credential-invalid key_id=- account=- plan=-",
            ),
        ],
        // no keygate state at all (another listener's request)
        vec![kv(ATTR_STATUS, "200")],
        // a local reply: no upstream time, `-` from Envoy
        vec![
            kv(ATTR_METHOD, "GET"),
            kv(ATTR_PATH, "/x?_apikey=secret"),
            kv(ATTR_STATUS, "429"),
            kv(ATTR_UPSTREAM, "-"),
            kv(
                ATTR_KEYGATE,
                "decision=rate-limited key_id=bk_2 account=globex plan=pro",
            ),
        ],
    ]);
    let d = decode(&body, NOW, &default_prefixes()).unwrap();
    assert_eq!(d.without_key, 2);
    assert_eq!(d.records.len(), 2);
    let r = &d.records[0];
    assert_eq!(
        (r.key_id.as_str(), r.account.as_str(), r.plan.as_str()),
        ("bk_1", "acme", "free")
    );
    assert_eq!(r.at_ms, 1_796_592_600_123);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/objects/events")
    );
    assert_eq!(
        (r.status, r.duration_ms, r.upstream_ms),
        (201, Some(12), Some(9))
    );
    assert_eq!((r.bytes_in, r.bytes_out), (17, 230));
    assert_eq!(
        (r.decision.as_str(), r.request_id.as_str()),
        ("allowed", "abc-123")
    );
    let req = r.req_body.as_ref().unwrap();
    assert_eq!(req.text, r#"{"a":"kgb_[redacted]"}"#);
    assert_eq!(req.bytes, Some(17));
    let resp = r.resp_body.as_ref().unwrap();
    assert_eq!(resp.omitted.as_deref(), Some("type not recorded"));
    let r = &d.records[1];
    assert_eq!(
        (r.path.as_str(), r.status, r.upstream_ms),
        ("/x", 429, None)
    );
    assert_eq!(r.decision, "rate-limited");
    assert!(r.req_body.is_none());
}

#[test]
fn garbage_is_refused_and_hostile_values_are_bounded() {
    assert!(decode(b"\xff\xff\xff garbage", NOW, &[]).is_err());
    let long = "/a".repeat(5000);
    let body = export(vec![vec![
        kv(ATTR_PATH, &long),
        kv(ATTR_METHOD, "G\u{0}E T<script>"),
        kv(ATTR_STATUS, "99999"),
        kv(ATTR_DURATION, "-5"),
        kv(ATTR_BYTES_OUT, "1e9"),
        kv(ATTR_KEYGATE, "decision=allowed key_id=k\u{7}1 account=a"),
        kv(ATTR_BODIES, "{not json"),
    ]]);
    let d = decode(&body, NOW, &[]).unwrap();
    let r = &d.records[0];
    assert_eq!(r.path.chars().count(), MAX_PATH_CHARS);
    assert_eq!(r.method, "G_E_T<script>");
    assert_eq!((r.status, r.duration_ms, r.bytes_out), (0, None, 0));
    assert_eq!(r.key_id, "k\u{7}1".replace('\u{7}', "_"));
    assert!(r.req_body.is_none());
    // a time from the future is now
    let mut req = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
    req.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = u64::MAX;
    let d = decode(&req.encode_to_vec(), NOW, &[]).unwrap();
    assert_eq!(d.records[0].at_ms, NOW);
}

#[test]
fn key_shaped_tokens_are_masked() {
    let p = default_prefixes();
    assert_eq!(
        redact("Bearer kgb_4X9mQ2vL0pZr7TnE3wKc8YbH5jUa1sDf0hW3kz!", &p),
        "Bearer kgb_[redacted]!"
    );
    assert_eq!(
        redact(
            "kgb_demo_acme_business_0001 and kgn_demo_alice_pat_0001",
            &p
        ),
        "kgb_[redacted] and kgn_[redacted]"
    );
    // not at a word's start, or too short to be a key: left alone
    assert_eq!(redact("xkgb_4X9mQ2vL0pZr7", &p), "xkgb_4X9mQ2vL0pZr7");
    assert_eq!(redact("kgb_short", &p), "kgb_short");
    assert_eq!(
        redact("/v1/tokens/kgp_0123456789/x", &p),
        "/v1/tokens/kgp_[redacted]/x"
    );
}

#[test]
fn exports_that_would_decode_into_too_much_are_refused() {
    fn ld(field: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![field << 3 | 2];
        let mut n = data.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(data);
        out
    }
    // millions of empty records: two bytes each on the wire
    let bomb = ld(1, &ld(2, &b"\x12\x00".repeat(MAX_ELEMENTS + 1)));
    assert!(decode(&bomb, NOW, &[]).unwrap_err().contains("at most"));
    let fine = ld(1, &ld(2, &b"\x12\x00".repeat(MAX_ELEMENTS - 2)));
    assert_eq!(
        decode(&fine, NOW, &[]).unwrap().without_key,
        (MAX_ELEMENTS - 2) as u64
    );
    // nested past the bound
    let mut deep = b"\x0a\x00".to_vec();
    for _ in 0..60 {
        deep = ld(1, &deep);
    }
    assert!(decode(&deep, NOW, &[]).is_err());
}

#[test]
fn percent_encoded_keys_are_masked_too() {
    let p = default_prefixes();
    for spelled in [
        "/x/kgb%5Fdemo_acme_business_0001/y",
        "/x/kgb%5fdemo%5facme%5Fbusiness%5F0001/y",
        "/x/%6Bgb_demo_acme_business_0001/y",
        "/x/kgb\\u005fdemo_acme_business_0001/y",
        "/x/kgb\\u005Fdemo\\u005facme_business_0001/y",
        "/x/kgb\\\\u005Fdemo_acme_business_0001/y",
    ] {
        assert_eq!(redact_spelled(spelled, &p), "/x/kgb_[redacted]/y");
    }
    // nothing key-shaped: kept as sent, encodings included
    assert_eq!(redact_spelled("/a%20b/%5Fx%2F", &p), "/a%20b/%5Fx%2F");
    assert_eq!(redact_spelled("%", &p), "%");
    assert_eq!(redact_spelled("\\u00", &p), "\\u00");
    assert_eq!(redact_spelled("\\\\u00€x\\", &p), "\\\\u00€x\\");
    let run = format!("{}kgb%5F{}", "\\".repeat(1 << 16), "a".repeat(20));
    assert!(redact_spelled(&run, &p).ends_with("kgb_[redacted]")); // linear: at once
    assert_eq!(redact_spelled("a\\u005fb \\u20ac", &p), "a\\u005fb \\u20ac");
    assert_eq!(redact_spelled("%e2%82%ac€%5", &p), "%e2%82%ac€%5");
}

#[test]
fn dates_and_days() {
    assert_eq!(date(0), "1970-01-01");
    assert_eq!(date(day_of(1_796_592_600_000)), "2026-12-06");
    assert_eq!(parse_date("2026-12-06"), Some(day_of(1_796_592_600_000)));
    assert_eq!(
        parse_date("2024-02-29").map(date).as_deref(),
        Some("2024-02-29")
    );
    for bad in [
        "2026-02-30",
        "2026-13-01",
        "x",
        "2026-1-1",
        "1969-12-31",
        "",
    ] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
    assert_eq!(
        [199, 200, 302, 404, 503, 0, 700].map(class_of),
        [4, 0, 1, 2, 3, 4, 4]
    );
}

#[test]
fn the_chart_has_a_bar_per_day_and_a_segment_per_class() {
    let days = fill_days(
        &[
            DayCounts {
                day: 10,
                counts: [5, 0, 2, 1, 0],
            },
            DayCounts {
                day: 12,
                counts: [1, 0, 0, 0, 0],
            },
        ],
        10,
        13,
    );
    assert_eq!(days.len(), 4);
    assert_eq!(days[2].total(), 1);
    let svg = chart_svg(&days);
    assert_eq!(svg.matches("<g class=\"day\"").count(), 4);
    assert_eq!(svg.matches("<rect").count(), 4);
    assert!(svg.contains(r#"data-class="4xx" data-count="2""#));
    assert!(svg.contains("8 requests"));
}

proptest! {
    #[test]
    fn decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&body, NOW, &default_prefixes());
    }

    #[test]
    fn masking_keeps_everything_but_the_tokens(s in "[ -~]{0,80}", key in "[0-9A-Za-z]{38}") {
        let p = default_prefixes();
        let with = format!("{s} kgb_{key} {s}");
        let r = redact(&with, &p);
        prop_assert!(!r.contains(&key));
        prop_assert!(r.starts_with(&*redact(&s, &p)));
    }

    #[test]
    fn dates_round_trip(day in 0i64..2_900_000) {
        prop_assert_eq!(parse_date(&date(day)), Some(day));
    }
}
