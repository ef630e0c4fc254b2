#!/usr/bin/env bash
# The demo: Envoy with keygate in front of the echo upstream.
#   envoy/demo.sh          embedded key store (envoy/demo.yaml)
#   envoy/demo.sh remote   the reference key service on 127.0.0.1:8081 (envoy/demo-remote.yaml),
#                          its SQLite database in .demo/keys.sqlite (kept across runs)
#   envoy/demo.sh PROFILE  a seed-API profile, envoy/profiles/PROFILE.yaml (eventlyte, evon,
#                          eventstaff, eventicat, astalty); the key service too when it uses one
# Listener 127.0.0.1:10000, admin 127.0.0.1:9901, upstream 127.0.0.1:8080. Builds the wasm,
# finds or installs Envoy, starts the services, runs Envoy in the foreground; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-embedded}
[ $# -gt 0 ] && shift
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
fi
cargo wasm --quiet
ENVOY_CMD=$(envoy/find-envoy.sh)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
python3 tests/services/echo.py --port 8080 &
pids+=($!)
case "$mode" in
  embedded) config=envoy/demo.yaml ;;
  remote) config=envoy/demo-remote.yaml ;;
  *) config=envoy/profiles/$mode.yaml
     [ -f "$config" ] || { echo "usage: envoy/demo.sh [embedded|remote|$(ls envoy/profiles | sed 's/\.yaml$//' | paste -sd'|')] [envoy args...]" >&2; exit 2; } ;;
esac
if grep -q 'cluster_name: keyservice' "$config"; then
  mkdir -p .demo
  python3 tests/services/keyservice.py --port 8081 --db .demo/keys.sqlite --seed-demo &
  pids+=($!)
fi
sleep 0.5
echo "keygate demo ($mode): http://127.0.0.1:10000 (admin http://127.0.0.1:9901); Ctrl-C stops it" >&2
$ENVOY_CMD -c "$config" --concurrency 2 --disable-hot-restart -l warning "$@"
