#!/usr/bin/env bash
# Builds target/wasm32-wasip1/release/keygate.wasm: `cargo wasm`, then binaryen's `wasm-opt -O3`
# (about 11% smaller for the same instructions a request; tests/bench/RESULTS.md). wasm-opt is
# installed by name with apt-get when missing; where it cannot be, the `cargo wasm` output is
# kept as it is (it works the same, only larger). Prints the path of the .wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/wasm32-wasip1/release/keygate.wasm
stamp=target/wasm32-wasip1/release/keygate.wasm.opt.from

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1 >&2
fi
cargo wasm --quiet

if ! command -v wasm-opt >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing binaryen (wasm-opt)" >&2
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
      --no-install-recommends binaryen; } >/dev/null 2>&1 || true
fi
if ! command -v wasm-opt >/dev/null 2>&1; then
  echo "envoy/build-wasm.sh: no wasm-opt (Debian: apt-get install binaryen); $out is not optimized" >&2
  echo "$out"; exit 0
fi

# Optimize what cargo built, once: cargo puts its own output back at every build (a link to the
# file in deps/), so the optimized file is kept beside it under the digest of what it came from.
opt=$out.opt
in_sha=$(sha256sum < "$out")
if ! { [ -f "$opt" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$in_sha" ]; }; then
  # The features rustc's wasm32-wasip1 output uses; nothing else is turned on.
  wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int "$out" -o "$opt.tmp"
  mv "$opt.tmp" "$opt"
  echo "$in_sha" > "$stamp"
fi
cp "$opt" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
