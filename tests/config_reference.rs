//! The config reference (envoy/config-reference.md) is kept true: every JSON example in it parses
//! with no warning, and every field the parser knows is documented there.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn reference() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/config-reference.md");
    std::fs::read_to_string(p).unwrap_or_default()
}

fn json_blocks(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim()) {
            (None, "```json") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_example_parses_without_warnings() {
    let doc = reference();
    let blocks = json_blocks(&doc);
    assert!(
        blocks.len() >= 8,
        "expected an example per field group, found {}",
        blocks.len()
    );
    for b in blocks {
        let mut warnings = Vec::new();
        match keygate::config::parse(b.as_bytes(), &mut warnings) {
            Ok(_) => assert!(warnings.is_empty(), "{warnings:?} in\n{b}"),
            Err(e) => panic!("{e} in\n{b}"),
        }
    }
}

#[test]
fn every_field_is_documented() {
    let doc = reference();
    let fields = keygate::config::known_fields();
    assert!(fields.len() > 60, "{fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "undocumented config fields: {missing:?}"
    );
}
