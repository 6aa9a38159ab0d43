#!/usr/bin/env bash
# Runs the built chaos suite N times in a row with the same arguments and prints one summary line per run, e.g.
#   scripts/chaos-repeat.sh 3 --quick --under-load
# Needs a Release build of tests/Idempotency.Chaos (./build.sh chaos builds it; or dotnet build tests/Idempotency.Chaos -c Release)
# and the services' variables (eval "$(scripts/services.sh env)"). Each run writes to artifacts/chaos-repeat/run-<i>/.
# CHAOS_DLL overrides the binary (e.g. a copy, so that a rebuild cannot change the children of a running suite).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n="${1:?usage: scripts/chaos-repeat.sh N [chaos options...]}"; shift
dll="${CHAOS_DLL:-$ROOT/tests/Idempotency.Chaos/bin/Release/net10.0/Idempotency.Chaos.dll}"
[ -f "$dll" ] || { echo "chaos-repeat: $dll not built (dotnet build tests/Idempotency.Chaos -c Release)" >&2; exit 2; }
out="${CHAOS_REPEAT_DIR:-$ROOT/artifacts/chaos-repeat}"
mkdir -p "$out"
failed=0
for i in $(seq 1 "$n"); do
  dir="$out/run-$i"; rm -rf "$dir"; mkdir -p "$dir"
  start=$SECONDS; rc=0
  timeout --kill-after=30 3600 dotnet "$dll" "$@" --results "$dir" </dev/null >"$dir/console.log" 2>&1 || rc=$?
  line="$(grep -E '^chaos: [0-9]+ passed' "$dir/console.log" | tail -1 || true)"
  echo "run $i/$n: exit $rc in $((SECONDS - start)) s: ${line:-no summary line (see $dir/console.log)}"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
done
echo "chaos-repeat: $((n - failed))/$n runs passed ($*)"
[ "$failed" -eq 0 ]
