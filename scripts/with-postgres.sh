#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL cluster, for benchmarks.
#
#   scripts/with-postgres.sh COMMAND [ARG...]
#
# Makes a cluster with Debian's newest /usr/lib/postgresql/*/bin (initdb into a temporary
# directory; as the `postgres` user when run as root, since PostgreSQL refuses root), starts it
# on a free port with its unix socket in that directory and TCP off, fsync and synchronous
# commit off (a benchmark measures the server's work, not this machine's disk), creates the
# database `bench`, and runs COMMAND with its URL in SLIPWAY_BENCH_DATABASE; an argument that is
# exactly `{}` is replaced by the URL too. The cluster is stopped and its directory removed
# afterwards, whatever COMMAND's exit; the script exits with COMMAND's status.
set -euo pipefail

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -eq 0 ] && exit 2 || exit 0
fi

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "with-postgres: no /usr/lib/postgresql/*/bin/initdb (scripts/setup.sh installs postgresql)" >&2
  exit 1
fi

dir=$(mktemp -d /tmp/slipway-bench-pg-XXXXXX)
as=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres:postgres "$dir"
  as=(runuser -u postgres --)
fi
cleanup() {
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync \
  --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if ! "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -o \
  "-k $dir -p $port -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c max_connections=200" \
  start >/dev/null; then
  echo "with-postgres: the cluster did not start; its log:" >&2
  cat "$dir/log" >&2
  exit 1
fi
"${as[@]}" "$bin/createdb" -h "$dir" -p "$port" -U postgres bench

SLIPWAY_BENCH_DATABASE="postgres://postgres@${dir//\//%2F}:$port/bench"
export SLIPWAY_BENCH_DATABASE
echo "with-postgres: PostgreSQL $("$bin/postgres" --version | awk '{print $NF}') at $SLIPWAY_BENCH_DATABASE" >&2
args=()
for a in "$@"; do
  if [ "$a" = "{}" ]; then args+=("$SLIPWAY_BENCH_DATABASE"); else args+=("$a"); fi
done
status=0
"${args[@]}" || status=$?
exit "$status"
