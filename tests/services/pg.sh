#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on a free loopback port, for the tests:
#   tests/services/pg.sh start DIR   prints the database URL (postgres://keyservice@127.0.0.1:PORT/keys)
#   tests/services/pg.sh stop DIR
# Installs Debian's postgresql when it is missing. PostgreSQL refuses to run as root, so as root
# the cluster runs as the `postgres` user. Trust authentication, loopback only, fsync off: a
# test database, never a real one.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?DIR}
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
bin=$(find_bin)
run() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  start)
    if [ -z "$bin" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
      bin=$(find_bin)
    fi
    mkdir -p "$dir"
    # the cluster's own directory, which the postgres user can reach (DIR's parents may not let it)
    data=$(mktemp -d /tmp/keygate-pg-XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    echo "$data" > "$dir/pgdata"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run "$bin/initdb" -D "$data/data" -U keyservice --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    run "$bin/pg_ctl" -D "$data/data" -l "$data/server.log" -w \
      -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200" \
      start >&2 || { cat "$data/server.log" >&2; exit 1; }
    run "$bin/createdb" -h 127.0.0.1 -p "$port" -U keyservice keys >&2
    echo "postgres://keyservice@127.0.0.1:$port/keys"
    ;;
  stop)
    data=$(cat "$dir/pgdata" 2>/dev/null || true)
    if [ -n "$data" ] && [ -d "$data/data" ]; then
      run "$bin/pg_ctl" -D "$data/data" -m fast -w stop >&2 || true
      rm -rf "$data"
    fi
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
