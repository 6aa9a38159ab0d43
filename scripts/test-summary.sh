#!/usr/bin/env bash
# Count test outcomes in TRX files and print one line:
#   tests: N passed, N failed            (", N skipped" is appended only when N > 0)
#
# usage: scripts/test-summary.sh [--add-failed N] DIR_OR_TRX...
#   DIR      every *.trx below it is read
#   --add-failed N   count N extra failures (e.g. a test host that crashed without a TRX)
# exit status: 0 when at least one test passed and none failed, 1 otherwise.
# Plain bash + grep + awk (no python), so it runs wherever build.sh runs.
set -euo pipefail

add_failed=0
paths=()
while [ $# -gt 0 ]; do
  case "$1" in
    --add-failed) add_failed="${2:?--add-failed needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) paths+=("$1"); shift ;;
  esac
done
[ ${#paths[@]} -gt 0 ] || { echo "usage: $0 [--add-failed N] DIR_OR_TRX..." >&2; exit 2; }

files=()
for p in "${paths[@]}"; do
  if [ -d "$p" ]; then
    while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$p" -type f -name '*.trx' -print0 | sort -z)
  elif [ -f "$p" ]; then
    files+=("$p")
  fi
done

counts="0 0 0"
if [ ${#files[@]} -gt 0 ]; then
  # One <UnitTestResult ... outcome="X" ...> start tag per executed test (attribute values are
  # XML-escaped, so a start tag never contains a raw '>').
  counts="$(cat "${files[@]}" | grep -o '<UnitTestResult [^>]*' | grep -o ' outcome="[A-Za-z]*"' |
    awk -F'"' '
      $2 ~ /^Passed/                                   { p++; next }
      $2 ~ /^(Failed|Error|Timeout|Aborted|Disconnected)$/ { f++; next }
                                                       { s++ }
      END { printf "%d %d %d\n", p, f, s }')" || counts="0 0 0"
fi
read -r passed failed skipped <<<"$counts"
failed=$((failed + add_failed))

line="tests: $passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"

[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
