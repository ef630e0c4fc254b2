//! The `query` fuzz target: `targets/query.rs` on each input (what it checks is said there; a
//! stable `cargo test` replays the seeds and reproducers through the same function).
#![no_main]

#[path = "../common/mod.rs"]
mod common;
#[path = "../targets/query.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
