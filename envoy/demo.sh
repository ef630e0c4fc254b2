#!/usr/bin/env bash
# The demo: Envoy with keygate in front of the echo upstream.
#   envoy/demo.sh          embedded key store (envoy/demo.yaml)
#   envoy/demo.sh remote   the reference key service on 127.0.0.1:8081 (envoy/demo-remote.yaml),
#                          its SQLite database in .demo/keys.sqlite (kept across runs)
#   envoy/demo.sh fleet    fleet-wide limits (issue #15): the test rate-limit engine on 127.0.0.1:8090
#                          (tests/rls-engine, limits in envoy/fleet/limits.yaml) and TWO Envoys from
#                          envoy/fleet/demo-fleet.yaml: A on 10000 (admin 9901), B on 10001 (admin 9902)
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
if [ "$mode" = fleet ]; then
  engine=$(tests/rls-engine/build.sh)
  "$engine" --limits envoy/fleet/limits.yaml --addr 127.0.0.1:8090 >/dev/null &
  pids+=($!)
  mkdir -p .demo
  sed -e 's/port_value: 10000/port_value: 10001/' -e 's/port_value: 9901/port_value: 9902/' \
    envoy/fleet/demo-fleet.yaml > .demo/demo-fleet-b.yaml
  sleep 0.5
  $ENVOY_CMD -c .demo/demo-fleet-b.yaml --concurrency 2 --disable-hot-restart -l warning \
    --base-id 1 "$@" >/dev/null 2>&1 &
  pids+=($!)
  echo "keygate fleet demo: Envoy A http://127.0.0.1:10000, Envoy B http://127.0.0.1:10001, one engine on :8090" >&2
  echo "  for i in \$(seq 6); do curl -s -o /dev/null -w '%{http_code} ' localhost:1000\$((i % 2))/x -H 'X-API-Key: tiny-demo-key-0001'; done  # 200 200 200 429 429 429" >&2
  $ENVOY_CMD -c envoy/fleet/demo-fleet.yaml --concurrency 2 --disable-hot-restart -l warning "$@"
  exit
fi
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
