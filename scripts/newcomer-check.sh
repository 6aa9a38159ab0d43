#!/usr/bin/env bash
# The newcomer check: does the library work the way the README tells a new team to use it, from packages?
#   1. packs every src/ project into a local folder feed (a fresh prerelease version per run),
#   2. builds samples/Idempotency.Newcomer against those packages (package references by version, no project references),
#   3. runs it against the local RabbitMQ and PostgreSQL: it publishes 40 orders (10 of them twice, plus one
#      malformed body) and consumes them with a typed handler configured from appsettings.json,
#   4. asserts the effects from SQL (every order stored exactly once, one processed key each, the malformed
#      body stored nowhere and dead-lettered) and that the consumer stops cleanly on SIGTERM.
# Writes one TRX result per step (newcomer.trx) so ./build.sh test counts them.
#
# usage: scripts/newcomer-check.sh [RESULTS_DIR]       (default artifacts/test-results)
# Needs the services of scripts/services.sh (IDEMPOTENCY_POSTGRES, IDEMPOTENCY_RABBITMQ; read from
# `scripts/services.sh env` when unset). Takes about a minute on 2 cores.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-$ROOT/artifacts/test-results}"
WORK="$ROOT/artifacts/newcomer"
FEED="$WORK/feed"
APP="$WORK/app"
STAMP="$(date +%s)"
VERSION="0.0.0-newcomer.$STAMP"
SCHEMA="newcomer_$STAMP"
QUEUE="newcomer-$STAMP"
SENT=40

say() { printf '==> newcomer: %s\n' "$*" >&2; }

if [ -z "${IDEMPOTENCY_POSTGRES:-}" ] || [ -z "${IDEMPOTENCY_RABBITMQ:-}" ]; then
  eval "$("${IDEMPOTENCY_SERVICES_SCRIPT:-$ROOT/scripts/services.sh}" env)"
fi
RABBITMQCTL="${IDEMPOTENCY_RABBITMQCTL:-$ROOT/scripts/rabbitmqctl.sh}"

# psql connection from the Npgsql connection string (Host=...;Port=...;Username=...;Password=...;Database=...).
pg_env() {
  local part k v
  IFS=';' read -r -a parts <<<"$IDEMPOTENCY_POSTGRES"
  for part in "${parts[@]}"; do
    k="${part%%=*}"; v="${part#*=}"
    case "${k,,}" in
      host|server) export PGHOST="$v" ;;
      port) export PGPORT="$v" ;;
      username|user\ id|userid|user) export PGUSER="$v" ;;
      password) export PGPASSWORD="$v" ;;
      database) export PGDATABASE="$v" ;;
    esac
  done
}
pg_env
sql() { psql -X -A -t -q -v ON_ERROR_STOP=1 -c "$1" 2>&1; }

# Results: name, outcome, seconds, message.
names=(); outcomes=(); durations=(); messages=()
record() { names+=("$1"); outcomes+=("$2"); durations+=("$3"); messages+=("${4:-}"); say "$2: $1${4:+ ($4)}"; }

write_trx() {
  mkdir -p "$RESULTS"
  local file="$RESULTS/newcomer.trx" now i exec id
  now="$(date -u +%Y-%m-%dT%H:%M:%S.0000000+00:00)"
  {
    echo '<?xml version="1.0" encoding="utf-8"?>'
    echo "<TestRun id=\"$(cat /proc/sys/kernel/random/uuid)\" name=\"newcomer $now\" xmlns=\"http://microsoft.com/schemas/VisualStudio/TeamTest/2010\">"
    echo "  <Results>"
    for i in "${!names[@]}"; do
      exec="$(cat /proc/sys/kernel/random/uuid)"; id="$(cat /proc/sys/kernel/random/uuid)"
      printf '    <UnitTestResult executionId="%s" testId="%s" testName="Newcomer.%s" computerName="%s" duration="%s" startTime="%s" endTime="%s" testType="13CDC9D9-DDB5-4fa4-A97D-D965CCFC6D4B" outcome="%s" testListId="8C84FA94-04C1-424b-9868-57A2D4851A1D">\n' \
        "$exec" "$id" "${names[$i]}" "$(hostname)" "$(printf '%02d:%02d:%02d.0000000' $(( durations[i] / 3600 )) $(( durations[i] / 60 % 60 )) $(( durations[i] % 60 )))" "$now" "$now" "${outcomes[$i]}"
      if [ -n "${messages[$i]}" ]; then
        printf '      <Output><ErrorInfo><Message>%s</Message></ErrorInfo></Output>\n' "$(printf '%s' "${messages[$i]}" | sed 's/&/\&amp;/g; s/</\&lt;/g; s/>/\&gt;/g; s/"/\&quot;/g')"
      fi
      echo "    </UnitTestResult>"
    done
    echo "  </Results>"
    echo "</TestRun>"
  } >"$file"
}

cleanup() {
  [ -n "${app_pid:-}" ] && kill -0 "$app_pid" 2>/dev/null && kill -KILL "$app_pid" 2>/dev/null
  sql "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  sql "DROP SCHEMA IF EXISTS ${SCHEMA}_tests CASCADE" >/dev/null 2>&1 || true
  timeout 60 "$RABBITMQCTL" -q delete_queue "$QUEUE" >/dev/null 2>&1 || true
  timeout 60 "$RABBITMQCTL" -q delete_queue "$QUEUE.dlq" >/dev/null 2>&1 || true
  # The packages of this run only: the global package cache keeps nothing of it.
  rm -rf "${NUGET_PACKAGES:-$HOME/.nuget/packages}"/idempotency.*/"$VERSION"
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # so that a timeout still runs the cleanup

rm -rf "$WORK"
mkdir -p "$FEED" "$APP"
log="$WORK/log"; mkdir -p "$log"

# 1. Pack. PackageVersion only (not Version): the assemblies already built stay valid.
t0=$SECONDS; failed=""
for project in src/Idempotency.Core src/Stores/Idempotency.Postgres src/Stores/Idempotency.Redis \
               src/Idempotency.Kafka src/Idempotency.RabbitMQ src/Idempotency.Sqs; do
  if ! dotnet pack "$ROOT/$project" -c Release -o "$FEED" -p:PackageVersion="$VERSION" -warnaserror </dev/null >"$log/pack-$(basename "$project").log" 2>&1; then
    failed+="$(basename "$project") "
  fi
done
packages=$(find "$FEED" -name "*.$VERSION.nupkg" | wc -l)
symbols=$(find "$FEED" -name "*.$VERSION.snupkg" | wc -l)
if [ -z "$failed" ] && [ "$packages" -eq 6 ] && [ "$symbols" -eq 6 ]; then
  record Packages_pack_with_symbols Passed $((SECONDS - t0))
else
  record Packages_pack_with_symbols Failed $((SECONDS - t0)) "failed: ${failed:-none}; $packages nupkg, $symbols snupkg (see $log)"
  write_trx; exit 1
fi

# 2. Build the sample from the packages.
t0=$SECONDS
if dotnet build "$ROOT/samples/Idempotency.Newcomer" -c Release -o "$APP" -p:IdempotencyVersion="$VERSION" \
     -p:RestoreAdditionalProjectSources="$FEED" </dev/null >"$log/build.log" 2>&1; then
  record Sample_builds_from_packages Passed $((SECONDS - t0))
else
  record Sample_builds_from_packages Failed $((SECONDS - t0)) "$(grep -m3 -E 'error' "$log/build.log" | tr '\n' ' ')"
  write_trx; exit 1
fi

# 3. Run it: publish, consume until every order is stored (or 90 s), let the malformed body reach the DLQ, stop.
t0=$SECONDS
(
  cd "$APP" &&
  ConnectionStrings__rabbitmq="$IDEMPOTENCY_RABBITMQ" \
  Idempotency__Postgres__ConnectionString="$IDEMPOTENCY_POSTGRES" \
  Idempotency__Postgres__Schema="$SCHEMA" \
  Newcomer__Queue="$QUEUE" \
  exec dotnet Idempotency.Newcomer.dll --send "$SENT" </dev/null >"$log/app.log" 2>&1
) &
app_pid=$!
stored=0
for _ in $(seq 1 90); do
  sleep 1
  kill -0 "$app_pid" 2>/dev/null || break
  stored="$(sql "SELECT count(*) FROM $SCHEMA.orders" 2>/dev/null | tr -d '[:space:]')"
  [ "$stored" = "$SENT" ] && break
done
dead=""
for _ in $(seq 1 30); do
  dead="$(timeout 60 "$RABBITMQCTL" -q list_queues name messages 2>/dev/null | awk -v q="$QUEUE.dlq" '$1 == q { print $2 }')"
  [ "$dead" = "1" ] && break
  kill -0 "$app_pid" 2>/dev/null || break
  sleep 1
done
running=false; kill -0 "$app_pid" 2>/dev/null && running=true
app_rc=0
if $running; then
  kill -TERM "$app_pid"
  for _ in $(seq 1 30); do kill -0 "$app_pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$app_pid" 2>/dev/null && { kill -KILL "$app_pid"; app_rc=137; }
fi
wait "$app_pid" 2>/dev/null || app_rc=$?
app_pid=""
if $running && [ "$app_rc" -eq 0 ]; then
  record Sample_consumes_and_stops_on_SIGTERM Passed $((SECONDS - t0))
else
  record Sample_consumes_and_stops_on_SIGTERM Failed $((SECONDS - t0)) "running before stop: $running, exit code $app_rc; $(grep -m3 -iE 'fail|exception' "$log/app.log" | tr '\n' ' ')"
fi

# 4. The effects, from SQL.
t0=$SECONDS
rows="$(sql "SELECT count(*) || ' ' || coalesce(sum(applied), 0) || ' ' || count(*) FILTER (WHERE applied <> 1) FROM $SCHEMA.orders")"
keys="$(sql "SELECT count(*) FROM $SCHEMA.processed_messages WHERE handler_name = 'orders'")"
expected="$SENT $SENT 0"
if [ "$rows" = "$expected" ] && [ "$keys" = "$SENT" ]; then
  record Every_order_stored_exactly_once Passed $((SECONDS - t0))
else
  record Every_order_stored_exactly_once Failed $((SECONDS - t0)) "orders (rows, applied, applied<>1) = '$rows', expected '$expected'; processed keys = '$keys', expected $SENT"
fi
poison="$(sql "SELECT count(*) FROM $SCHEMA.processed_messages WHERE idempotency_key = 'poison-1'")"
if [ "$dead" = "1" ] && [ "$poison" = "0" ]; then
  record Malformed_body_dead_lettered_not_stored Passed 0
else
  record Malformed_body_dead_lettered_not_stored Failed 0 "messages in $QUEUE.dlq: '${dead:-?}' (expected 1); processed rows for poison-1: '$poison' (expected 0)"
fi

# 5. The newcomer's unit test of the handler, written with the kit (Idempotency.Testing), against the packages.
t0=$SECONDS
if IDEMPOTENCY_POSTGRES="$IDEMPOTENCY_POSTGRES" NEWCOMER_TEST_SCHEMA="${SCHEMA}_tests" \
     dotnet test --project "$ROOT/samples/Idempotency.Newcomer.Tests" -c Release -p:IdempotencyVersion="$VERSION" \
     -p:RestoreAdditionalProjectSources="$FEED" </dev/null >"$log/unit-test.log" 2>&1; then
  record Handler_unit_test_with_the_kit Passed $((SECONDS - t0))
else
  record Handler_unit_test_with_the_kit Failed $((SECONDS - t0)) "$(grep -m3 -E 'error|failed|Exception' "$log/unit-test.log" | tr '\n' ' ')"
fi

write_trx
for o in "${outcomes[@]}"; do [ "$o" = Passed ] || exit 1; done
exit 0
