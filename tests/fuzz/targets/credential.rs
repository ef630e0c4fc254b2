//! `credential::extract` on fuzzed headers and `:path`, under five credential configurations.
//!
//! Input: lines separated by `\n`; the last line is the `:path`, every earlier line (at most 7) a
//! header `name:value` (a line without `:` is an `authorization` value). E.g.
//! `authorization:Basic dTp0\nx-api-key:k\n/a?_apikey=k`.

use crate::common;

use keygate::credential::{extract, CredentialConfig, Style};
use keygate::query;

fn configs() -> Vec<CredentialConfig> {
    let d = CredentialConfig::default();
    vec![
        d.clone(),
        CredentialConfig {
            basic: false,
            ..d.clone()
        },
        CredentialConfig {
            bearer: false,
            ..d.clone()
        },
        CredentialConfig {
            basic: false,
            bearer: false,
            query_param: None,
            ..d.clone()
        },
        CredentialConfig {
            api_key_headers: vec!["x-api-key".into(), "x-key-2".into()],
            query_param: Some("k".into()),
            max_bytes: 16,
            ..d
        },
    ]
}

/// One input.
pub fn run(data: &[u8]) {
    let parts = common::lines(data, 8); // never empty: splitn yields at least one item
    let (path, hdrs) = parts
        .split_last()
        .map_or((&b""[..], &[][..]), |(p, h)| (*p, h));
    let owned: Vec<(String, Vec<u8>)> = hdrs.iter().map(|l| common::header(l)).collect();
    let headers = common::view(&owned);

    for cfg in configs() {
        let Ok(ex) = extract(&cfg, &headers, path) else {
            continue;
        };
        // An unknown Authorization scheme is never also our carrier.
        assert!(!(ex.foreign_authorization && ex.carriers.authorization));
        if ex.carriers.query {
            assert!(cfg.query_param.is_some());
        }
        let Some(c) = ex.credential else {
            assert!(!ex.carriers.authorization && !ex.carriers.query);
            continue;
        };
        assert!(!c.secret.is_empty(), "empty secret accepted: {c:?}");
        assert!(c.secret.len() <= cfg.max_bytes, "oversized secret: {c:?}");
        match c.style {
            Style::Basic => {
                assert!(cfg.basic && ex.carriers.authorization);
                let user = c.user.as_deref().unwrap_or("");
                assert!(!user.is_empty() && !user.contains(':'), "bad user: {c:?}");
                assert!(!c.secret.chars().chain(user.chars()).any(char::is_control));
            }
            style => {
                assert!(c.user.is_none());
                assert!(
                    c.secret.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "non-VCHAR token accepted: {c:?}"
                );
                match style {
                    Style::Bearer => assert!(cfg.bearer && ex.carriers.authorization),
                    Style::Header => assert!(!cfg.api_key_headers.is_empty()),
                    Style::Query => assert!(ex.carriers.query),
                    Style::Basic => {}
                }
            }
        }
        // Whatever carried the credential in the query, hiding it removes every copy.
        if let Some(p) = &cfg.query_param {
            let stripped = query::strip_param(path, p);
            if let (_, Some(q)) = query::split_path(&stripped) {
                assert!(query::params(q).all(|x| !query::name_is(x.name, p)));
            }
        }
    }
}
