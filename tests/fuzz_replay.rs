//! Every fuzz seed and every kept reproducer, replayed on stable by `cargo test` through the fuzz
//! targets' own functions (`tests/fuzz/targets/*.rs`; the libFuzzer binaries in
//! `tests/fuzz/fuzz_targets/` call the same functions). A reproducer in `tests/fuzz/artifacts-found/`
//! is named `<target>-<what>`; each target has seeds in `tests/fuzz/seeds/<target>/`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[path = "fuzz/common/mod.rs"]
mod common;

#[path = "fuzz/targets/cache.rs"]
mod cache;
#[path = "fuzz/targets/config.rs"]
mod config;
#[path = "fuzz/targets/contract.rs"]
mod contract;
#[path = "fuzz/targets/credential.rs"]
mod credential;
#[path = "fuzz/targets/gate.rs"]
mod gate;
#[path = "fuzz/targets/query.rs"]
mod query;
#[path = "fuzz/targets/rls.rs"]
mod rls;

use std::path::{Path, PathBuf};

/// A fuzz target's name and its function of one input.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 7] = [
    ("cache", cache::run),
    ("config", config::run),
    ("contract", contract::run),
    ("credential", credential::run),
    ("gate", gate::run),
    ("query", query::run),
    ("rls", rls::run),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_seed_and_reproducer_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let found = files(&root.join("artifacts-found"));
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let seeds = files(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "target `{name}` has no seeds");
        let prefix = format!("{name}-");
        let repros = found.iter().filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix))
        });
        for input in seeds.iter().chain(repros) {
            let bytes = std::fs::read(input).unwrap();
            replayed += 1;
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                failures.push(format!("{name}: {}", input.display()));
            }
        }
    }
    // every kept reproducer names a target
    for p in &found {
        let f = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        assert!(
            TARGETS.iter().any(|(n, _)| f.starts_with(&format!("{n}-"))),
            "{f} names no fuzz target"
        );
    }
    assert!(failures.is_empty(), "failed: {failures:#?}");
    assert!(replayed > 30, "only {replayed} inputs");
}
