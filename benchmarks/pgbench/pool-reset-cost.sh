#!/usr/bin/env bash
# What Npgsql's pool reset costs PostgreSQL per returned connection, with no .NET in the way. With the connection
# string's default `No Reset On Close=false`, Npgsql prepends a reset to the next use of every connection returned to
# the pool: `DISCARD ALL` when the connection has no prepared statements (a consumer with unprepared statements), or,
# when it has some (the PostgreSQL store prepares its statements), seven statements that keep them. pgbench sends each
# as one simple-protocol query, like Npgsql: a bare `SELECT 1` round trip, `DISCARD ALL`, and the seven-statement reset.
# Usage: benchmarks/pgbench/pool-reset-cost.sh [seconds] [clients]   (services from scripts/services.sh; PG* variables
# override the defaults below). Prints tps per query and the extra CPU time per reset (2 cores shared by pgbench and
# PostgreSQL, so 2 s of CPU per second of wall time).
set -euo pipefail
seconds="${1:-5}"
clients="${2:-4}"
. "$(dirname "$0")/pg-env.sh"
cores="$(nproc)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo 'SELECT 1;' > "$work/round_trip.sql"
echo 'DISCARD ALL;' > "$work/discard_all.sql"
# Npgsql's reset for a connection with prepared statements (NpgsqlConnector.GenerateResetMessage), one query.
echo 'SET SESSION AUTHORIZATION DEFAULT\;RESET ALL\;CLOSE ALL\;UNLISTEN *\;SELECT pg_advisory_unlock_all()\;DISCARD SEQUENCES\;DISCARD TEMP;' > "$work/reset_keeping_prepared.sql"

run() { "$pgbench" -n -M simple -c "$clients" -j 2 -T "$seconds" -f "$work/$1.sql" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
base="$(run round_trip)"
printf '%-58s %10s %22s\n' "query ($clients clients, ${seconds} s, simple protocol)" "tps" "CPU µs over SELECT 1"
printf '%-58s %10.0f %22s\n' "SELECT 1 (a round trip)" "$base" "-"
for script in discard_all reset_keeping_prepared; do
  tps="$(run "$script")"
  case "$script" in
    discard_all) label="DISCARD ALL (reset without prepared statements)";;
    reset_keeping_prepared) label="7-statement reset (connection with prepared statements)";;
  esac
  printf '%-58s %10.0f %22.1f\n' "$label" "$tps" "$(awk -v a="$tps" -v b="$base" -v c="$cores" 'BEGIN { print c * 1e6 / a - c * 1e6 / b }')"
done
