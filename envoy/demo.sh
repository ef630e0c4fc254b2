#!/usr/bin/env bash
# The demo: Envoy with keygate (embedded key store) in front of the echo upstream.
#   listener 127.0.0.1:10000, admin 127.0.0.1:9901, upstream 127.0.0.1:8080.
# Builds the wasm, finds or installs Envoy, starts the upstream, runs Envoy in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
fi
cargo wasm --quiet
ENVOY_CMD=$(envoy/find-envoy.sh)
python3 tests/services/echo.py --port 8080 &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT INT TERM
echo "keygate demo: http://127.0.0.1:10000 (admin http://127.0.0.1:9901); Ctrl-C stops it" >&2
$ENVOY_CMD -c envoy/demo.yaml --concurrency 2 --disable-hot-restart -l warning "$@"
