#!/usr/bin/env bash
# The demo: Envoy with keygate in front of the echo upstream.
#   envoy/demo.sh          embedded key store (envoy/demo.yaml)
#   envoy/demo.sh remote   the key service (envoy/keyservice, built here; config
#                          envoy/demo-remote.yaml) with its dashboard, its SQLite database
#                          in .demo/keyservice.sqlite (kept across runs; the demo keys are restored at
#                          every start; `rm -rf .demo` forgets everything else)
#   envoy/demo.sh fleet    fleet-wide limits (issue #15): the test rate-limit engine on 127.0.0.1:8090
#                          (tests/rls-engine, limits in envoy/fleet/limits.yaml) and TWO Envoys from
#                          envoy/fleet/demo-fleet.yaml: A on 10000 (admin 9901), B on 10001 (admin 9902)
#                          (fixed ports, checked like the others)
#   envoy/demo.sh PROFILE  a seed-API profile, envoy/profiles/PROFILE.yaml (eventlyte, evon,
#                          eventstaff, eventicat, astalty); the key service too when it uses one
# Ports (loopback), each overridable: KEYGATE_PORT (listener, 10000), KEYGATE_ADMIN_PORT (9901),
# KEYGATE_UPSTREAM_PORT (echo upstream, 8080), KEYGATE_KEYSERVICE_PORT (key service, 8081).
# Checks that they are free before starting anything, prints the demo's keys and example
# requests, builds the wasm, finds or installs Envoy, starts the services, runs Envoy in the
# foreground; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-embedded}
[ $# -gt 0 ] && shift
case "$mode" in
  fleet) config=envoy/fleet/demo-fleet.yaml ;;
  embedded) config=envoy/demo.yaml ;;
  remote) config=envoy/demo-remote.yaml ;;
  *) config=envoy/profiles/$mode.yaml
     [ -f "$config" ] || { echo "usage: envoy/demo.sh [embedded|remote|$(ls envoy/profiles | sed 's/\.yaml$//' | paste -sd'|')] [envoy args...]" >&2; exit 2; } ;;
esac
port=${KEYGATE_PORT:-10000}
admin_port=${KEYGATE_ADMIN_PORT:-9901}
upstream_port=${KEYGATE_UPSTREAM_PORT:-8080}
keyservice_port=${KEYGATE_KEYSERVICE_PORT:-8081}
needs_keyservice=false
grep -q 'cluster_name: keyservice' "$config" && needs_keyservice=true

# Every port free (and distinct) before anything starts: with one taken, a service would die and
# Envoy would proxy to whatever else listens there.
ports=("KEYGATE_PORT=$port" "KEYGATE_ADMIN_PORT=$admin_port" "KEYGATE_UPSTREAM_PORT=$upstream_port")
$needs_keyservice && ports+=("KEYGATE_KEYSERVICE_PORT=$keyservice_port")
if [ "$mode" = fleet ]; then
  port=10000; admin_port=9901; upstream_port=8080
  ports=("Envoy-A=10000" "Envoy-A-admin=9901" "Envoy-B=10001" "Envoy-B-admin=9902" "upstream=8080" "engine=8090")
fi
if ! python3 - "${ports[@]}" <<'EOF'
import socket, sys
seen, bad = {}, []
for arg in sys.argv[1:]:
    name, _, value = arg.partition("=")
    if not value.isdigit() or not 0 < int(value) < 65536:
        bad.append(f"{name}={value!r} is not a port number")
        continue
    if value in seen:
        bad.append(f"{name} and {seen[value]} are both {value}")
        continue
    seen[value] = name
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(value)))
    except OSError as e:
        bad.append(f"127.0.0.1:{value} ({name}) is in use ({e.strerror}); stop what listens there or set {name}")
    finally:
        s.close()
for b in bad:
    print(f"envoy/demo.sh: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
then
  exit 1
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
fi
envoy/build-wasm.sh >/dev/null
# the excerpt filter (envoy/excerpt), where the config records bodies in the request history
if grep -q keygate_excerpt "$config"; then
  cargo excerpt --quiet
fi
$needs_keyservice && cargo build --quiet --release -p keyservice
ENVOY_CMD=$(envoy/find-envoy.sh)

# Every process the demo starts is a child in pids; Envoy runs in the background too, waited
# for, so that SIGTERM or SIGINT to this script (a supervisor, `timeout`, Ctrl-C) stops it at
# once and takes all of them down (bash runs no trap while a foreground child runs).
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
run_envoy() {
  $ENVOY_CMD "$@" &
  pids+=($!)
  wait "$!"
}

if [ "$mode" = fleet ]; then
  python3 envoy/upstream/echo.py --port 8080 &
  pids+=($!)
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
  run_envoy -c envoy/fleet/demo-fleet.yaml --concurrency 2 --disable-hot-restart -l warning "$@"
  exit
fi

# The config with the chosen ports (the files name the defaults).
mkdir -p .demo
run_config=.demo/$mode.yaml
sed -e "s/port_value: 10000 /port_value: $port /; s/port_value: 9901 /port_value: $admin_port /" \
    -e "s/port_value: 8080 /port_value: $upstream_port /; s/port_value: 8081 /port_value: $keyservice_port /" \
    "$config" > "$run_config"

python3 envoy/upstream/echo.py --port "$upstream_port" &
pids+=($!)
wait_port=("$upstream_port")
if $needs_keyservice; then
  # the dashboard's wording: `# product_name:` and `# key_label:` lines in the config's header
  product=$(sed -n 's/^# *product_name: *//p' "$config" | head -1)
  key_label=$(sed -n 's/^# *key_label: *//p' "$config" | head -1)
  # the dashboard's users of the config's accounts (`# dashboard_user: NAME EMAIL PASSWORD ACCOUNT`
  # lines in its header): they see their keys' request history; created once, kept in .demo
  sed -n 's/^# *dashboard_user: *//p' "$config" | while read -r u_name u_email u_password u_account; do
    target/release/keyservice --db .demo/keyservice.sqlite account add "$u_account" >/dev/null 2>&1 || true
    printf '%s\n' "$u_password" | target/release/keyservice --db .demo/keyservice.sqlite \
      user add "$u_name" --email "$u_email" --account "$u_account" >/dev/null 2>&1 || true
  done
  target/release/keyservice --db .demo/keyservice.sqlite serve --port "$keyservice_port" --seed-demo \
    --product-name "${product:-keygate demo API}" --key-label "${key_label:-API key}" \
    --api-url "http://127.0.0.1:$port" &
  pids+=($!)
  wait_port+=("$keyservice_port")
fi
# each service must be up before Envoy starts
for p in "${wait_port[@]}"; do
  for _ in $(seq 50); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$p" 2>/dev/null && break
    sleep 0.1
  done
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$p" 2>/dev/null \
    || { echo "envoy/demo.sh: the service on 127.0.0.1:$p did not start" >&2; exit 1; }
done

# The demo's keys and example requests: the config's header comment (README: "Try the demo").
{
  echo "keygate demo ($mode, $config): http://127.0.0.1:$port (admin http://127.0.0.1:$admin_port); Ctrl-C stops it"
  sed -n '/^static_resources:/q; s/^# \{0,1\}/  /p' "$config" \
    | sed -e "s/localhost:10000/localhost:$port/g; s/127.0.0.1:10000/127.0.0.1:$port/g; s/127.0.0.1:9901/127.0.0.1:$admin_port/g" \
          -e "s/127.0.0.1:8080/127.0.0.1:$upstream_port/g; s/127.0.0.1:8081/127.0.0.1:$keyservice_port/g"
  if $needs_keyservice; then
    echo "  Dashboard (the key service's own page for your API's customers):"
    echo "    http://127.0.0.1:$keyservice_port/dashboard   log in as alice@example.com / alice-password"
    echo "    (or bob@example.com / bob-password): generate a key, call the API with it, regenerate, revoke"
    sed -n 's/^# *dashboard_user: *//p' "$config" | while read -r u_name u_email u_password u_account; do
      echo "    or as $u_email / $u_password: the request history of account $u_account's keys"
    done
  fi
} >&2
run_envoy -c "$run_config" --concurrency 2 --disable-hot-restart -l warning "$@"
