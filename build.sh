#!/usr/bin/env bash
# Build, test and run the Idempotency solution against local services (see docs/running-tests.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 \
  DOTNET_GENERATE_ASPNET_CERTIFICATE=false
# On CI nothing may linger after the run (MSBuild nodes, compiler server) holding the log pipe open.
if [ "${CI:-}" = true ]; then
  export MSBUILDDISABLENODEREUSE=1 DOTNET_CLI_USE_MSBUILD_SERVER=0 UseSharedCompilation=false
fi

RESULTS="$ROOT/artifacts/test-results"
TEST_TIMEOUT="${IDEMPOTENCY_TEST_TIMEOUT:-3600}"   # seconds for the whole `dotnet test` run

usage() {
  cat <<'EOF'
usage: ./build.sh COMMAND [ARGS...]
  test [ARGS...]     start services, build Release with -warnaserror, run every test project;
                     ARGS (and $IDEMPOTENCY_TEST_ARGS) go to `dotnet test`, e.g.
                       ./build.sh test --filter-class 'Idempotency.Core.Tests.*'
                       ./build.sh test --filter 'FullyQualifiedName~Redis'
                       ./build.sh test --project tests/Idempotency.Redis.Tests
                     last line: tests: N passed, N failed[, N skipped]
  demo [ARGS...]     dotnet run samples/Idempotency.Demo with the services up
  bench [ARGS...]    dotnet run benchmarks/Idempotency.Benchmarks
  chaos [ARGS...]    dotnet run tests/Idempotency.Chaos (e.g. --quick, --under-load; --help lists them)
  soak [ARGS...]     the soak run (not part of test): 1,000,000 messages through each broker's default consumer
                     options (--broker kafka,rabbitmq,sqs, one after another) over PostgreSQL with the retention
                     pruner; RSS and keys-table size every 10 s; fails unless every key has one effect and the RSS
                     after the warm-up stays within 50 MB; to benchmarks/results/soak-<broker>.{csv,md,png}, soak.md
  newcomer           scripts/newcomer-check.sh: pack src/, build samples/Idempotency.Newcomer from the
                     packages, run it against RabbitMQ + PostgreSQL and check its effects (also part of test)
  services CMD       scripts/services.sh up|down|status|env|restart-postgres|...
  help               this text
EOF
}

say() { printf '==> %s\n' "$*" >&2; }

# The solution at the repo root: $IDEMPOTENCY_SOLUTION, Idempotency.sln, Idempotency.slnx, or the only one.
solution() {
  if [ -n "${IDEMPOTENCY_SOLUTION:-}" ]; then echo "$IDEMPOTENCY_SOLUTION"; return; fi
  local f
  for f in Idempotency.sln Idempotency.slnx; do [ -f "$f" ] && { echo "$f"; return; }; done
  local found=(*.sln *.slnx)
  local existing=()
  for f in "${found[@]}"; do [ -f "$f" ] && existing+=("$f"); done
  [ ${#existing[@]} -eq 1 ] && { echo "${existing[0]}"; return; }
  return 1
}

services_up() {
  say "services up"
  "$ROOT/scripts/services.sh" up || return 1
  local env
  env="$("$ROOT/scripts/services.sh" env)" || return 1
  eval "$env"
}

# What the scale-out tests need besides the shared services: the Redis Cluster (127.0.0.1:7000-7005, about 7 s the
# first time) and the private PostgreSQL primary + synchronous standby (5433/5434, about 5 s); under a second after.
scale_services_up() {
  say "redis cluster and postgres primary + standby up"
  "$ROOT/scripts/services.sh" cluster-up || return 1
  "$ROOT/scripts/services.sh" pg-ha-up || return 1
  local env
  env="$("$ROOT/scripts/services.sh" cluster-env && "$ROOT/scripts/services.sh" pg-ha-env)" || return 1
  eval "$env"
}

cmd_test() {
  local sln rc=0
  if ! sln="$(solution)"; then
    echo "build.sh: no solution found at $ROOT (expected Idempotency.sln or Idempotency.slnx)" >&2
    echo "tests: 0 passed, 1 failed"
    return 1
  fi

  if ! services_up || ! scale_services_up; then
    echo "build.sh: starting the services failed (see the message above)" >&2
    echo "tests: 0 passed, 1 failed"
    return 1
  fi

  say "dotnet build $sln -c Release -warnaserror"
  local t0=$SECONDS
  if ! dotnet build "$sln" -c Release -warnaserror </dev/null; then
    echo "build.sh: build failed" >&2
    echo "tests: 0 passed, 1 failed"
    return 1
  fi
  say "build took $((SECONDS - t0)) s"

  # Extra runner arguments: command line first, then $IDEMPOTENCY_TEST_ARGS (word-split).
  local args=("$@")
  if [ -n "${IDEMPOTENCY_TEST_ARGS:-}" ]; then
    local extra
    read -r -a extra <<<"$IDEMPOTENCY_TEST_ARGS"
    args+=("${extra[@]}")
  fi
  # Run the whole solution unless the caller picked a project.
  local target=(--solution "$sln")
  local a
  for a in "${args[@]}"; do
    case "$a" in --project|--project=*|--solution|--solution=*|--test-modules|--test-modules=*) target=() ;; esac
  done

  rm -rf "$RESULTS"
  mkdir -p "$RESULTS"
  # --ignore-exit-code 8: a project in which a filter matched nothing is not a failure by itself;
  # the summary still fails the run when no test at all passed.
  local run=(dotnet test "${target[@]}" -c Release --no-build
             --report-xunit-trx --results-directory "$RESULTS" --ignore-exit-code 8 "${args[@]}")
  say "${run[*]}"
  t0=$SECONDS
  timeout --kill-after=30 "$TEST_TIMEOUT" "${run[@]}" </dev/null || rc=$?
  say "dotnet test took $((SECONDS - t0)) s (exit code $rc)"

  # The reduced chaos suite (SIGKILLs, store and broker faults per broker and store) runs with the full suite;
  # it writes chaos.trx next to the other results so the summary counts each scenario as a test.
  local chaos_rc=0
  if [ ${#args[@]} -eq 0 ] && [ "${IDEMPOTENCY_SKIP_CHAOS:-}" != 1 ]; then
    local chaos_dll="$ROOT/tests/Idempotency.Chaos/bin/Release/net10.0/Idempotency.Chaos.dll"
    say "chaos --quick"
    t0=$SECONDS
    timeout --kill-after=30 900 dotnet "$chaos_dll" --quick --results "$ROOT/artifacts" </dev/null || chaos_rc=$?
    say "chaos --quick took $((SECONDS - t0)) s (exit code $chaos_rc)"
  fi

  # The newcomer check (scripts/newcomer-check.sh) packs src/, builds samples/Idempotency.Newcomer from those
  # packages and checks its effects in PostgreSQL; it writes newcomer.trx, one result per step.
  local newcomer_rc=0
  if [ ${#args[@]} -eq 0 ] && [ "${IDEMPOTENCY_SKIP_NEWCOMER:-}" != 1 ]; then
    say "newcomer check"
    t0=$SECONDS
    timeout --kill-after=30 600 "$ROOT/scripts/newcomer-check.sh" "$RESULTS" </dev/null || newcomer_rc=$?
    say "newcomer check took $((SECONDS - t0)) s (exit code $newcomer_rc)"
  fi

  local add=0 chaos_add=0
  if [ "$chaos_rc" -ne 0 ] && [ ! -s "$RESULTS/chaos.trx" ]; then
    echo "build.sh: the chaos suite failed without writing its results; counting it as a failure" >&2
    chaos_add=1
  fi
  if [ "$newcomer_rc" -ne 0 ] && [ ! -s "$RESULTS/newcomer.trx" ]; then
    echo "build.sh: the newcomer check failed without writing its results; counting it as a failure" >&2
    chaos_add=$((chaos_add + 1))
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "build.sh: dotnet test timed out after ${TEST_TIMEOUT}s (IDEMPOTENCY_TEST_TIMEOUT)" >&2
    add=1
  elif [ "$rc" -ne 0 ]; then
    # exit code 2 means failed tests, which the TRX files count; anything else (a crashed test
    # host, bad arguments) may leave no TRX behind, so it counts as one failure unless one is seen.
    add=-1
  fi
  local summary
  summary="$("$ROOT/scripts/test-summary.sh" "$RESULTS" || true)"
  if [ "$add" -lt 0 ]; then
    if [[ "$summary" =~ ,\ 0\ failed ]]; then
      echo "build.sh: dotnet test exited with code $rc but no failed test was recorded; counting it as a failure" >&2
      add=1
    else
      add=0
    fi
  fi
  add=$((add + chaos_add))
  summary="$("$ROOT/scripts/test-summary.sh" --add-failed "$add" "$RESULTS")" && rc=0 || rc=1
  if [[ "$summary" =~ ^tests:\ 0\ passed,\ 0\ failed ]]; then
    echo "build.sh: no test ran" >&2
  fi
  echo "$summary"
  return "$rc"
}

# dotnet run a project directory with the services up; fails clearly if it does not exist yet.
cmd_run() {
  local dir="$1"; shift
  if ! compgen -G "$ROOT/$dir/*.csproj" >/dev/null; then
    echo "build.sh: $dir/*.csproj does not exist (yet); nothing to run" >&2
    return 1
  fi
  services_up
  say "dotnet run --project $dir -c Release -- $*"
  dotnet run --project "$dir" -c Release -- "$@"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  test) cmd_test "$@" ;;
  demo) cmd_run samples/Idempotency.Demo "$@" ;;
  bench) cmd_run benchmarks/Idempotency.Benchmarks "$@" ;;
  chaos) cmd_run tests/Idempotency.Chaos "$@" ;;
  newcomer) services_up && "$ROOT/scripts/newcomer-check.sh" "$@" ;;
  soak) cmd_run tests/Idempotency.Chaos --soak "$@" ;;
  services) exec "$ROOT/scripts/services.sh" "$@" ;;
  help|-h|--help) usage ;;
  *) echo "build.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
