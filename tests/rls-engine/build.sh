#!/usr/bin/env bash
# Builds the test rate-limit engine (Envoy's rate-limit service API over the `limitador` crate)
# into target/rls-engine, cached there across runs (~4 min the first time on 2 cores, then
# seconds). Used by tests/run.sh and envoy/demo.sh fleet. Prints the binary's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --quiet --release --locked --manifest-path "$root/tests/rls-engine/Cargo.toml" \
  --target-dir "$root/target/rls-engine" >&2
echo "$root/target/rls-engine/release/rls-engine"
