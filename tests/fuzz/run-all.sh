#!/usr/bin/env bash
# Builds every fuzz target once, then runs each in turn for SECONDS (default 180) and prints one
# summary line per target. Run from anywhere; needs the nightly toolchain and cargo-fuzz.
#
#   tests/fuzz/run-all.sh [SECONDS] [TARGET...]
#   KEEP_GOING=1 tests/fuzz/run-all.sh 180 gate   # libFuzzer fork mode: record crashes, go on
#
# The binaries are run directly (same flags `cargo fuzz run` passes) so that every target tests
# the same build even if src/ changes meanwhile. Logs: tests/fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-180}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(credential query contract cache config gate rls)

cargo +nightly fuzz build --fuzz-dir tests/fuzz
bin=tests/fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p tests/fuzz/logs
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

for t in "${targets[@]}"; do
  case $t in
    config) dict=(-dict=tests/fuzz/dict/config.dict) ;;
    credential | gate) dict=(-dict=tests/fuzz/dict/http.dict) ;;
    *) dict=() ;;
  esac
  extra=()
  [ "${KEEP_GOING:-0}" = 1 ] && extra=(-fork=1 -ignore_crashes=1)
  mkdir -p "tests/fuzz/corpus/$t" "tests/fuzz/artifacts/$t"
  log=tests/fuzz/logs/$t.log
  rc=0
  "$bin/$t" -artifact_prefix="tests/fuzz/artifacts/$t/" -max_total_time="$secs" -timeout=10 \
    -print_final_stats=1 "${dict[@]}" "${extra[@]}" \
    "tests/fuzz/corpus/$t" "tests/fuzz/seeds/$t" >"$log" 2>&1 || rc=$?
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  eps=$(grep -oE 'stat::average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  crashes=$(find "tests/fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  files=$(find "tests/fuzz/corpus/$t" -type f | wc -l)
  echo "$t: exit=$rc executions=${execs:-?} exec/s=${eps:-?} corpus_files=$files artifacts=$crashes | $last"
done
