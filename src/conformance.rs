//! A key service's conformance to contract v1 (`envoy/key-service-contract.md`), as keygate
//! itself reads it: every answer goes through the parser the filter runs (`contract`), so a
//! service that passes is one keygate can use. Pure: the caller brings the transport
//! (`keygate-check --key-service URL` brings a plain HTTP/1.1 client).

use crate::contract::{self, ServiceFailure};
use crate::verdict::Verdict;

/// One HTTP exchange with the service: `(status, body)`, or why there was none.
pub trait Transport {
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), String>;
}

/// What to ask the service.
pub struct Plan<'a> {
    pub verify_path: &'a str,
    pub revocations_path: Option<&'a str>,
    /// A secret no service knows (random, from the caller).
    pub unknown_secret: &'a str,
    /// A key the service should accept, and its Basic user if it has one.
    pub valid_key: Option<(&'a str, Option<&'a str>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

fn failure(f: ServiceFailure) -> String {
    match f {
        ServiceFailure::Status(s) => {
            format!("status {s}: keygate would answer 503 (a failure, not a verdict)")
        }
        ServiceFailure::NoResponse => "no response".into(),
        ServiceFailure::BodyTooLarge => "body too large".into(),
        ServiceFailure::BadBody => {
            "the body is not a contract-1 answer keygate accepts (see the schema)".into()
        }
    }
}

fn verify_body(key: &str, user: Option<&str>) -> Vec<u8> {
    serde_json::json!({"key": key, "user": user})
        .to_string()
        .into_bytes()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Runs every check; the service passes when all are `ok`.
pub fn run(t: &mut dyn Transport, plan: &Plan<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let unknown = plan.unknown_secret;

    // an unknown key, with and without a Basic user: a completed check that refuses it
    for (name, user) in [
        ("verify: unknown key", None),
        (
            "verify: unknown key with a Basic user",
            Some("conformance-user"),
        ),
    ] {
        match t.call("POST", plan.verify_path, Some(&verify_body(unknown, user))) {
            Err(e) => out.push(check(name, false, e)),
            Ok((status, body)) => {
                if contains(&body, unknown) {
                    out.push(check(name, false, "the answer echoes the secret"));
                    continue;
                }
                out.push(match contract::parse_verify(Some(status), &body) {
                    Ok(a) => match a.verdict {
                        Verdict::Refused(r) => check(name, true, format!("refused ({r:?})")),
                        Verdict::Valid(_) => check(name, false, "a random key was accepted"),
                    },
                    Err(f) => check(name, false, failure(f)),
                });
            }
        }
    }

    // a request that is not a contract request is never a valid verdict
    let name = "verify: a malformed request is not accepted";
    match t.call("POST", plan.verify_path, Some(br#"{"key": 42}"#)) {
        Err(e) => out.push(check(name, false, e)),
        Ok((status, body)) => out.push(match contract::parse_verify(Some(status), &body) {
            Ok(a) if matches!(a.verdict, Verdict::Valid(_)) => {
                check(name, false, "`{\"key\": 42}` was accepted as a valid key")
            }
            _ => check(name, true, format!("status {status}")),
        }),
    }

    if let Some((key, user)) = plan.valid_key {
        let name = "verify: the valid key";
        match t.call("POST", plan.verify_path, Some(&verify_body(key, user))) {
            Err(e) => out.push(check(name, false, e)),
            Ok((status, body)) => {
                if contains(&body, key) {
                    out.push(check(name, false, "the answer echoes the secret"));
                } else {
                    out.push(match contract::parse_verify(Some(status), &body) {
                        Ok(a) => match a.verdict {
                            Verdict::Valid(id) => check(
                                name,
                                true,
                                format!(
                                    "key_id {}, account {:?}, plan {}, {} scopes, cache_ttl_s {:?}, user_bound {}",
                                    id.key_id,
                                    id.account,
                                    id.plan,
                                    id.scopes.len(),
                                    a.ttl_hint_s,
                                    a.user_bound
                                ),
                            ),
                            Verdict::Refused(r) => check(name, false, format!("refused ({r:?})")),
                        },
                        Err(f) => check(name, false, failure(f)),
                    });
                }
            }
        }
        if let Some(u) = user {
            // the same key with another user: refused, or valid with `"user_bound": false`
            let name = "verify: the valid key with another Basic user";
            let other = format!("{u}-not");
            match t.call("POST", plan.verify_path, Some(&verify_body(key, Some(&other)))) {
                Err(e) => out.push(check(name, false, e)),
                Ok((status, body)) => out.push(match contract::parse_verify(Some(status), &body) {
                    Ok(a) => match a.verdict {
                        Verdict::Refused(_) => check(name, true, "refused"),
                        Verdict::Valid(_) if !a.user_bound => {
                            check(name, true, "valid for any user (\"user_bound\": false)")
                        }
                        Verdict::Valid(_) => check(
                            name,
                            false,
                            "valid for another user without \"user_bound\": false (keygate would cache it per user)",
                        ),
                    },
                    Err(f) => check(name, false, failure(f)),
                }),
            }
        }
    }

    if let Some(rev) = plan.revocations_path {
        let name = "revocations: current cursor (since=-1)";
        let first = match t.call("GET", &format!("{rev}?since=-1"), None) {
            Err(e) => {
                out.push(check(name, false, e));
                None
            }
            Ok((status, body)) => match contract::parse_revocations(Some(status), &body) {
                Ok(r) => {
                    out.push(check(name, true, format!("cursor {}", r.cursor)));
                    Some(r.cursor)
                }
                Err(f) => {
                    out.push(check(name, false, failure(f)));
                    None
                }
            },
        };
        if let Some(c) = first {
            let name = "revocations: since the cursor";
            match t.call("GET", &format!("{rev}?since={c}"), None) {
                Err(e) => out.push(check(name, false, e)),
                Ok((status, body)) => {
                    out.push(match contract::parse_revocations(Some(status), &body) {
                        Ok(r) if r.cursor < c => check(
                            name,
                            false,
                            format!("the cursor went back from {c} to {}", r.cursor),
                        ),
                        Ok(r) => check(
                            name,
                            true,
                            format!(
                                "{} revoked, cursor {}, more {}",
                                r.revoked.len(),
                                r.cursor,
                                r.more
                            ),
                        ),
                        Err(f) => check(name, false, failure(f)),
                    })
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A scripted service: answers by (method, path prefix, whether the body names the user).
    struct Fake {
        accept_any_user: bool,
        echo: bool,
        cursor_back: bool,
        calls: Vec<String>,
    }

    impl Transport for Fake {
        fn call(
            &mut self,
            method: &str,
            path: &str,
            body: Option<&[u8]>,
        ) -> Result<(u32, Vec<u8>), String> {
            self.calls.push(format!("{method} {path}"));
            let body = body
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if path.starts_with("/rev") {
                let c = if path.ends_with("-1") || !self.cursor_back {
                    7
                } else {
                    3
                };
                return Ok((
                    200,
                    format!(r#"{{"contract":1,"cursor":{c},"revoked":[],"more":false}}"#)
                        .into_bytes(),
                ));
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let key = v["key"].as_str();
            let user = v["user"].as_str();
            let valid = key == Some("good")
                && (user.is_none() || user == Some("alice") || self.accept_any_user);
            if key.is_none() {
                return Ok((400, b"{}".to_vec()));
            }
            if self.echo {
                return Ok((
                    200,
                    format!(r#"{{"contract":1,"valid":false,"key":"{}"}}"#, key.unwrap())
                        .into_bytes(),
                ));
            }
            Ok(if valid {
                (
                    200,
                    br#"{"contract":1,"valid":true,"key_id":"k1","plan":"p","scopes":["read"]}"#
                        .to_vec(),
                )
            } else {
                (
                    200,
                    br#"{"contract":1,"valid":false,"code":"NOT_FOUND"}"#.to_vec(),
                )
            })
        }
    }

    fn plan() -> Plan<'static> {
        Plan {
            verify_path: "/verify",
            revocations_path: Some("/rev"),
            unknown_secret: "random-secret-123",
            valid_key: Some(("good", Some("alice"))),
        }
    }

    fn fake() -> Fake {
        Fake {
            accept_any_user: false,
            echo: false,
            cursor_back: false,
            calls: vec![],
        }
    }

    #[test]
    fn a_conforming_service_passes_every_check() {
        let mut f = fake();
        let checks = run(&mut f, &plan());
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert_eq!(checks.len(), 7);
        assert_eq!(f.calls.len(), 7);
    }

    #[test]
    fn each_defect_fails_its_check() {
        let failed = |f: &mut Fake| -> Vec<&'static str> {
            run(f, &plan())
                .into_iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect()
        };
        let mut f = Fake {
            accept_any_user: true,
            ..fake()
        };
        assert_eq!(
            failed(&mut f),
            ["verify: the valid key with another Basic user"]
        );
        let mut f = Fake {
            echo: true,
            ..fake()
        };
        assert!(failed(&mut f).contains(&"verify: unknown key"));
        let mut f = Fake {
            cursor_back: true,
            ..fake()
        };
        assert_eq!(failed(&mut f), ["revocations: since the cursor"]);
        let mut p = plan();
        p.valid_key = Some(("bad", None));
        let fails: Vec<&str> = run(&mut fake(), &p)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        assert_eq!(fails, ["verify: the valid key"]);
    }
}
