#!/usr/bin/env bash
# Local backing services for the Idempotency test suites, all bound to 127.0.0.1:
#   PostgreSQL 15 :5432, Redis 7 :6379, RabbitMQ :5672, fauxqs (SQS emulator) :4566.
# State lives in <repo>/.services (git-ignored). Every daemon is stopped by its own pid file.
#
# usage: scripts/services.sh up|down|status|env
#        scripts/services.sh restart-postgres|stop-postgres|start-postgres   (fault injection)
#        scripts/services.sh rabbitmqctl ARGS...   (rabbitmqctl with this node's environment)
#        scripts/services.sh cluster-up|cluster-down|cluster-status|cluster-env   (Redis Cluster, on demand)
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
SCRIPT_DIR="$(dirname "$SCRIPT")"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE="$REPO/.services"

PGBIN=/usr/lib/postgresql/15/bin
PG_PORT=5432
REDIS_PORT=6379
RABBIT_PORT=5672
RABBIT_DIST_PORT=25672
FAUXQS_PORT=4566
FAUXQS_VERSION=1.9.2

PG_TIMEOUT=${IDEMPOTENCY_PG_TIMEOUT:-60}
REDIS_TIMEOUT=${IDEMPOTENCY_REDIS_TIMEOUT:-30}
RABBIT_TIMEOUT=${IDEMPOTENCY_RABBIT_TIMEOUT:-120}
FAUXQS_TIMEOUT=${IDEMPOTENCY_FAUXQS_TIMEOUT:-30}

# rabbitmq's and util-linux's tools live in /usr/sbin, which a non-login PATH (CI, cron) may lack
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin:/sbin" ;; esac

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

# true if something accepts TCP connections on 127.0.0.1:$1
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# true if the pid in file $1 is a live process
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid="$(head -n1 "$1" 2>/dev/null | tr -dc '0-9')"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

pid_of() { { head -n1 "$1" 2>/dev/null || true; } | tr -dc "0-9"; }

# describe who holds a port (for error messages)
port_holder() {
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null | sed 's/^/    /' || true
  fi
}

# refuse to start when the port is taken by a process that is not ours
ensure_port_free() { # name port
  if port_open "$2"; then
    die "$1: port $2 on 127.0.0.1 is already in use by a process this script did not start
$(port_holder "$2")
    stop it (e.g. 'scripts/services.sh down' in the checkout that started it) and retry"
  fi
}

# wait_for NAME TIMEOUT LOGFILE CMD...: poll CMD every 0.2 s until it succeeds
wait_for() {
  local name=$1 timeout=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name did not answer within ${timeout}s; last lines of $logfile:"
      tail -n 20 "$logfile" 2>/dev/null | sed 's/^/    /' >&2 || true
      die "$name failed to start; see $logfile"
    fi
    sleep 0.2
  done
}

# wait until process $2 is gone (up to $3 seconds), then SIGKILL it
wait_pid_gone() { # name pid timeout
  local pid=$2 deadline=$((SECONDS + $3))
  [ -n "$pid" ] || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$1 (pid $pid) still running after $3 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------- install

ensure_packages() {
  local missing=()
  [ -x "$PGBIN/pg_ctl" ] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root; install them first"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get update -qq </dev/null >"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get update failed; see $STATE/apt.log"; }
    timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >>"$STATE/apt.log" 2>&1 ||
      { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install ${missing[*]} failed; see $STATE/apt.log"; }
  fi
}

# The postgres and rabbitmq users must be able to enter STATE and every parent of it.
ensure_state_dir() {
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  local d="$REPO"
  while [ "$d" != / ]; do
    if [ "$(( 0$(stat -c '%a' "$d") & 1 ))" -eq 0 ]; then
      log "chmod o+x $d (postgres and rabbitmq must be able to enter $STATE)"
      chmod o+x "$d"
    fi
    d="$(dirname "$d")"
  done
}

# ---------------------------------------------------------------- PostgreSQL

# (fd 9 is the lock; no daemon may inherit it)
pg() { (cd "$STATE" && exec 9>&- && runuser -u postgres -- "$PGBIN/$1" "${@:2}"); }
pg_ctl() { pg pg_ctl -D "$STATE/pgdata" "$@"; }
pg_running() { [ -s "$STATE/pgdata/PG_VERSION" ] && pg_ctl status >/dev/null 2>&1; }
pg_ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }
psql_admin() { pg psql -h "$STATE/pgsock" -p "$PG_PORT" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }

pg_init() {
  install -d -o postgres -g postgres -m 755 "$STATE/pgsock"
  if [ ! -s "$STATE/pgdata/PG_VERSION" ]; then
    log "postgres: initdb $STATE/pgdata"
    rm -rf "$STATE/pgdata"
    install -d -o postgres -g postgres -m 700 "$STATE/pgdata"
    pg initdb -D "$STATE/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 || die "postgres: initdb failed; see $STATE/initdb.log"
  fi
  # Settings live in the data directory, so a bare 'pg_ctl start|restart' (fault tests) keeps them.
  # fsync stays on: benchmarks depend on real commits.
  local conf="$STATE/pgdata/idempotency.conf" want
  want="# written by scripts/services.sh
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$STATE/pgsock'
max_connections = 200
fsync = on
synchronous_commit = on"
  if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" >"$conf"
    chown postgres:postgres "$conf"
  fi
  grep -q "^include_if_exists = 'idempotency.conf'" "$STATE/pgdata/postgresql.conf" ||
    echo "include_if_exists = 'idempotency.conf'" >>"$STATE/pgdata/postgresql.conf"
  touch "$STATE/pg.log"
  chown postgres:postgres "$STATE/pg.log"
}

pg_start() {
  if pg_running; then
    pg_ready || wait_for postgres "$PG_TIMEOUT" "$STATE/pg.log" pg_ready
  else
    ensure_port_free postgres "$PG_PORT"
    pg_init
    log "postgres: starting"
    pg_ctl -l "$STATE/pg.log" -w -t "$PG_TIMEOUT" start >/dev/null 2>&1 ||
      { tail -n 20 "$STATE/pg.log" | sed 's/^/    /' >&2; die "postgres failed to start; see $STATE/pg.log"; }
    wait_for postgres "$PG_TIMEOUT" "$STATE/pg.log" pg_ready
  fi
  psql_admin -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN PASSWORD 'app'; END IF; END\$\$" ||
    die "postgres: could not create role app; see $STATE/pg.log"
  # CREATEROLE: the misconfiguration tests create a role of their own whose password they change (never app's).
  psql_admin -c "ALTER ROLE app CREATEROLE" >/dev/null || die "postgres: could not grant CREATEROLE to app"
  [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'appdb'")" = 1 ] ||
    psql_admin -c "CREATE DATABASE appdb OWNER app" || die "postgres: could not create database appdb"
}

pg_stop() {
  if pg_running; then
    log "postgres: stopping"
    pg_ctl -m fast -w -t 60 stop >/dev/null
  fi
}

pg_restart() {
  pg_running || die "postgres is not running (run 'scripts/services.sh up' first)"
  log "postgres: restarting (-m fast)"
  pg_ctl -l "$STATE/pg.log" -m fast -w -t "$PG_TIMEOUT" restart >/dev/null 2>&1 ||
    die "postgres failed to restart; see $STATE/pg.log"
  wait_for postgres "$PG_TIMEOUT" "$STATE/pg.log" pg_ready
}

pg_status() {
  if pg_running; then
    local pid; pid="$(head -n1 "$STATE/pgdata/postmaster.pid")"
    if pg_ready; then echo "postgres  running  pid $pid  127.0.0.1:$PG_PORT  (log $STATE/pg.log)"
    else echo "postgres  NOT ANSWERING  pid $pid  127.0.0.1:$PG_PORT  (log $STATE/pg.log)"; fi
  else
    echo "postgres  stopped"
  fi
}

# ---------------------------------------------------------------- Redis

REDIS_PID="$STATE/redis/redis.pid"
redis_running() { pid_alive "$REDIS_PID"; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_start() {
  if ! redis_running; then
    ensure_port_free redis "$REDIS_PORT"
    mkdir -p "$STATE/redis"
    rm -f "$REDIS_PID"
    log "redis: starting"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --dir "$STATE/redis" \
      --pidfile "$REDIS_PID" --logfile "$STATE/redis/redis.log" --save '' \
      --appendonly yes --appendfsync everysec </dev/null >/dev/null 2>&1 9>&- ||
      die "redis failed to start; see $STATE/redis/redis.log"
  fi
  redis_ready || wait_for redis "$REDIS_TIMEOUT" "$STATE/redis/redis.log" redis_ready
}

redis_stop() {
  if redis_running; then
    local pid; pid="$(pid_of "$REDIS_PID")"
    log "redis: stopping"
    kill "$pid" 2>/dev/null || true
    wait_pid_gone redis "$pid" 30
  fi
  rm -f "$REDIS_PID"
}

redis_status() {
  if redis_running; then
    if redis_ready; then echo "redis     running  pid $(pid_of "$REDIS_PID")  127.0.0.1:$REDIS_PORT  (log $STATE/redis/redis.log)"
    else echo "redis     NOT ANSWERING  pid $(pid_of "$REDIS_PID")  (log $STATE/redis/redis.log)"; fi
  else
    echo "redis     stopped"
  fi
}

# ---------------------------------------------------------------- RabbitMQ

# The one place that defines RabbitMQ's environment. Every rabbitmq command (server and CLI)
# runs through it, or the CLI looks for the wrong node / epmd listens on every interface.
rabbit_env() {
  export RABBITMQ_NODENAME=rabbit@localhost \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$RABBIT_PORT" \
    RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_MNESIA_BASE="$STATE/rabbitmq/mnesia" \
    RABBITMQ_LOG_BASE="$STATE/rabbitmq/log" \
    RABBITMQ_PID_FILE="$STATE/rabbitmq/rabbit.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/rabbitmq/enabled_plugins"
}
# run a rabbitmq command (rabbitmqctl, rabbitmq-diagnostics, rabbitmq-server, epmd) in that environment
rabbit() { (rabbit_env && { cd "$STATE" 2>/dev/null || cd /; } && exec 9>&- && "$@"); }

RABBIT_PID="$STATE/rabbitmq/rabbit.pid"
RABBIT_LOG="$STATE/rabbitmq/log"
rabbit_running() { pid_alive "$RABBIT_PID"; }
# fast readiness probe: the AMQP 0-9-1 header gets a Connection.Start frame (type 1) back
amqp_ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$RABBIT_PORT" || exit 1
    printf 'AMQP\x00\x00\x09\x01' >&3
    IFS= read -r -t 3 -n 1 -d '' b <&3 || exit 1
    [ "$b" = $'\x01' ]
  ) 2>/dev/null
}

rabbit_start() {
  if rabbit_running; then
    amqp_ready || wait_for rabbitmq "$RABBIT_TIMEOUT" "$RABBIT_LOG" amqp_ready
    return
  fi
  ensure_port_free rabbitmq "$RABBIT_PORT"
  ensure_port_free "rabbitmq (distribution)" "$RABBIT_DIST_PORT"
  install -d -o rabbitmq -g rabbitmq "$STATE/rabbitmq" "$STATE/rabbitmq/mnesia" "$STATE/rabbitmq/log"
  if [ ! -f "$STATE/rabbitmq/enabled_plugins" ]; then
    echo '[].' >"$STATE/rabbitmq/enabled_plugins"
    chown rabbitmq:rabbitmq "$STATE/rabbitmq/enabled_plugins"
  fi
  rm -f "$RABBIT_PID"
  log "rabbitmq: starting (takes a few seconds)"
  rabbit rabbitmq-server -detached </dev/null >>"$RABBIT_LOG/detached.log" 2>&1 ||
    die "rabbitmq-server failed to start; see $RABBIT_LOG"
  rabbit timeout $((RABBIT_TIMEOUT + 10)) rabbitmqctl -q wait --timeout "$RABBIT_TIMEOUT" "$RABBIT_PID" \
    </dev/null >>"$RABBIT_LOG/detached.log" 2>&1 || {
    tail -n 20 "$RABBIT_LOG"/*.log 2>/dev/null | sed 's/^/    /' >&2 || true
    die "rabbitmq did not come up within ${RABBIT_TIMEOUT}s; see $RABBIT_LOG"
  }
  rabbit rabbitmq-diagnostics -q ping </dev/null >/dev/null 2>&1 || die "rabbitmq-diagnostics ping failed; see $RABBIT_LOG"
  wait_for rabbitmq "$RABBIT_TIMEOUT" "$RABBIT_LOG" amqp_ready
}

rabbit_stop() {
  if rabbit_running; then
    local pid; pid="$(pid_of "$RABBIT_PID")"
    log "rabbitmq: stopping"
    rabbit rabbitmqctl -q stop "$RABBIT_PID" </dev/null >/dev/null 2>&1 || true
    wait_pid_gone rabbitmq "$pid" 30
  fi
  rm -f "$RABBIT_PID"
  # epmd outlives the node; it was started by our node with ERL_EPMD_ADDRESS=127.0.0.1
  if port_open 4369; then rabbit epmd -kill </dev/null >/dev/null 2>&1 || true; fi
}

rabbit_status() {
  if rabbit_running; then
    if amqp_ready; then echo "rabbitmq  running  pid $(pid_of "$RABBIT_PID")  127.0.0.1:$RABBIT_PORT  (log $RABBIT_LOG)"
    else echo "rabbitmq  NOT ANSWERING  pid $(pid_of "$RABBIT_PID")  (log $RABBIT_LOG)"; fi
  else
    echo "rabbitmq  stopped"
  fi
}

# ---------------------------------------------------------------- fauxqs (SQS emulator)

FAUXQS_DIR="$STATE/fauxqs"
FAUXQS_PID="$FAUXQS_DIR/fauxqs.pid"
FAUXQS_LOG="$FAUXQS_DIR/fauxqs.log"
fauxqs_running() { pid_alive "$FAUXQS_PID"; }
fauxqs_ready() { curl -sf -m 2 "http://127.0.0.1:$FAUXQS_PORT/health" >/dev/null; }

fauxqs_install() {
  mkdir -p "$FAUXQS_DIR"
  if ! grep -q "\"version\": *\"$FAUXQS_VERSION\"" "$FAUXQS_DIR/node_modules/fauxqs/package.json" 2>/dev/null; then
    log "fauxqs: npm install fauxqs@$FAUXQS_VERSION"
    timeout 300 npm install --prefix "$FAUXQS_DIR" --no-audit --no-fund --loglevel=error "fauxqs@$FAUXQS_VERSION" \
      </dev/null >"$FAUXQS_DIR/npm.log" 2>&1 || { tail -n 20 "$FAUXQS_DIR/npm.log" >&2; die "npm install fauxqs failed or timed out (300 s); see $FAUXQS_DIR/npm.log"; }
  fi
  # fauxqs's own CLI always listens on 0.0.0.0; this launcher binds loopback only.
  local want
  want='// written by scripts/services.sh: start fauxqs bound to loopback only
import { buildApp } from "fauxqs";
const app = buildApp({ logger: process.env.FAUXQS_LOGGER === "true", host: process.env.FAUXQS_HOST });
await app.listen({ port: +(process.env.FAUXQS_PORT ?? 4566), host: "127.0.0.1" });'
  [ "$(cat "$FAUXQS_DIR/launcher.mjs" 2>/dev/null)" = "$want" ] || printf '%s\n' "$want" >"$FAUXQS_DIR/launcher.mjs"
}

fauxqs_start() {
  if ! fauxqs_running; then
    ensure_port_free fauxqs "$FAUXQS_PORT"
    fauxqs_install
    rm -f "$FAUXQS_PID"
    log "fauxqs: starting"
    (cd "$FAUXQS_DIR" && FAUXQS_PORT=$FAUXQS_PORT exec setsid nohup node launcher.mjs </dev/null >"$FAUXQS_LOG" 2>&1 9>&-) &
    echo $! >"$FAUXQS_PID"
  fi
  fauxqs_ready || wait_for fauxqs "$FAUXQS_TIMEOUT" "$FAUXQS_LOG" fauxqs_ready
}

fauxqs_stop() {
  if fauxqs_running; then
    local pid; pid="$(pid_of "$FAUXQS_PID")"
    log "fauxqs: stopping"
    kill "$pid" 2>/dev/null || true
    wait_pid_gone fauxqs "$pid" 10
  fi
  rm -f "$FAUXQS_PID"
}

fauxqs_status() {
  if fauxqs_running; then
    if fauxqs_ready; then echo "fauxqs    running  pid $(pid_of "$FAUXQS_PID")  127.0.0.1:$FAUXQS_PORT  (log $FAUXQS_LOG)"
    else echo "fauxqs    NOT ANSWERING  pid $(pid_of "$FAUXQS_PID")  (log $FAUXQS_LOG)"; fi
  else
    echo "fauxqs    stopped"
  fi
}

# ---------------------------------------------------------------- Redis Cluster (on demand, not part of `up`)
#
# Six redis-server processes on 127.0.0.1:$CLUSTER_BASE..+5, joined by `redis-cli --cluster create` as 3 masters
# with one replica each. State (nodes.conf, pid and log per node) in $STATE/redis-cluster/<port>. Short
# cluster-node-timeout so that a killed master's replica takes over in a few seconds (failover tests).

CLUSTER_BASE=${IDEMPOTENCY_REDIS_CLUSTER_BASE_PORT:-7000}
CLUSTER_NODE_TIMEOUT=${IDEMPOTENCY_REDIS_CLUSTER_NODE_TIMEOUT:-1000}
CLUSTER_DIR="$STATE/redis-cluster"
cluster_ports() { local i; for i in 0 1 2 3 4 5; do echo $((CLUSTER_BASE + i)); done; }
cluster_node_pid() { echo "$CLUSTER_DIR/$1/redis.pid"; }
cluster_node_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
cluster_ok() { redis-cli -h 127.0.0.1 -p "$CLUSTER_BASE" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
cluster_all_ok() {
  local p
  for p in $(cluster_ports); do
    redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

# start one node (also used to bring a killed node back: it rejoins from its nodes.conf, as a replica if its
# replica was promoted meanwhile)
cluster_node_start() { # port
  local port=$1 dir="$CLUSTER_DIR/$1"
  if ! pid_alive "$(cluster_node_pid "$port")"; then
    ensure_port_free "redis cluster node" "$port"
    mkdir -p "$dir"
    rm -f "$(cluster_node_pid "$port")"
    redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
      --pidfile "$(cluster_node_pid "$port")" --logfile "$dir/redis.log" --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT" \
      --cluster-replica-validity-factor 0 --maxmemory-policy noeviction </dev/null >/dev/null 2>&1 9>&- ||
      die "redis cluster node $port failed to start; see $dir/redis.log"
  fi
  cluster_node_ready "$port" || wait_for "redis cluster node $port" "$REDIS_TIMEOUT" "$dir/redis.log" cluster_node_ready "$port"
}

cluster_up() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server is not installed (scripts/services.sh up installs it)"
  local p
  for p in $(cluster_ports); do cluster_node_start "$p"; done
  if ! redis-cli -h 127.0.0.1 -p "$CLUSTER_BASE" cluster info 2>/dev/null | grep -q '^cluster_slots_assigned:16384'; then
    log "redis cluster: creating (3 masters, 3 replicas)"
    local nodes=()
    for p in $(cluster_ports); do nodes+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_DIR/create.log" 2>&1 ||
      { tail -n 20 "$CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed; see $CLUSTER_DIR/create.log"; }
  fi
  cluster_all_ok || wait_for "redis cluster" "$REDIS_TIMEOUT" "$CLUSTER_DIR/create.log" cluster_all_ok
  # every replica attached to its master (a failover test needs one to promote)
  wait_for "redis cluster replicas" "$REDIS_TIMEOUT" "$CLUSTER_DIR/create.log" cluster_replicas_synced
}

cluster_replicas_synced() {
  [ "$(redis-cli -h 127.0.0.1 -p "$CLUSTER_BASE" cluster nodes 2>/dev/null | grep -c 'slave.* connected')" -ge 3 ] || return 1
  local p
  for p in $(cluster_ports); do
    if redis-cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null | grep -q '^role:slave'; then
      redis-cli -h 127.0.0.1 -p "$p" info replication | grep -q '^master_link_status:up' || return 1
    fi
  done
}

cluster_down() {
  local p pid
  for p in $(cluster_ports); do
    if pid_alive "$(cluster_node_pid "$p")"; then
      pid="$(pid_of "$(cluster_node_pid "$p")")"
      kill "$pid" 2>/dev/null || true
      wait_pid_gone "redis cluster node $p" "$pid" 30
    fi
    rm -f "$(cluster_node_pid "$p")"
  done
  # forget the cluster: the next cluster-up creates a fresh one
  [ -d "$CLUSTER_DIR" ] && rm -rf "$CLUSTER_DIR"
  return 0
}

cluster_status() {
  local p role
  for p in $(cluster_ports); do
    if pid_alive "$(cluster_node_pid "$p")"; then
      role="$(redis-cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null | sed -n 's/^role:\(.*\)\r$/\1/p')"
      echo "redis-cluster  127.0.0.1:$p  pid $(pid_of "$(cluster_node_pid "$p")")  ${role:-NOT ANSWERING}"
    else
      echo "redis-cluster  127.0.0.1:$p  stopped"
    fi
  done
  cluster_ok && echo "redis-cluster  state ok" || echo "redis-cluster  state NOT ok"
}

print_cluster_env() {
  local nodes=() p
  for p in $(cluster_ports); do nodes+=("127.0.0.1:$p"); done
  local IFS=,
  echo "export IDEMPOTENCY_REDIS_CLUSTER=\"${nodes[*]}\""
  echo "export IDEMPOTENCY_REDIS_CLUSTER_STATE=\"$CLUSTER_DIR\""
  echo "export IDEMPOTENCY_REDIS_CLUSTER_SERVICES=\"$SCRIPT\""
}

# ---------------------------------------------------------------- PostgreSQL primary + synchronous standby (on demand)
#
# A private pair for failover tests, never the shared :5432 server: a primary on $HA_PRIMARY_PORT and a streaming
# standby on $HA_STANDBY_PORT cloned with pg_basebackup, synchronous (synchronous_standby_names = 'standby1': a commit
# returns once the standby has its WAL). The standby's own synchronous_standby_names is empty, so once promoted it
# commits alone (it has no standby to wait for). State in $STATE/pg-ha/{primary,standby}.

HA_PRIMARY_PORT=${IDEMPOTENCY_PG_HA_PRIMARY_PORT:-5433}
HA_STANDBY_PORT=${IDEMPOTENCY_PG_HA_STANDBY_PORT:-5434}
HA_DIR="$STATE/pg-ha"
ha_ctl() { pg pg_ctl -D "$HA_DIR/$1" "${@:2}"; }
ha_ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2; }
# admin statements commit locally: they must not wait for a synchronous standby that is not there yet (or any more)
ha_psql() { (cd "$STATE" && exec 9>&- && runuser -u postgres -- env PGOPTIONS='-c synchronous_commit=local' \
  "$PGBIN/psql" -h "$HA_DIR/sock" -p "$1" -U postgres -qAtX -v ON_ERROR_STOP=1 "${@:2}"); }
ha_running() { [ -s "$HA_DIR/$1/PG_VERSION" ] && ha_ctl "$1" status >/dev/null 2>&1; }
ha_sync() { [ "$(ha_psql "$HA_PRIMARY_PORT" -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND sync_state = 'sync' AND state = 'streaming'" 2>/dev/null)" = 1 ]; }

ha_up() {
  [ -x "$PGBIN/pg_ctl" ] || die "PostgreSQL 15 is not installed (scripts/services.sh up installs it)"
  install -d -o postgres -g postgres -m 755 "$HA_DIR" "$HA_DIR/sock"
  if ha_running standby && ! ha_psql "$HA_STANDBY_PORT" -c "SELECT pg_is_in_recovery()" | grep -q t; then
    die "the pg-ha standby on $HA_STANDBY_PORT was promoted (a failover test): run pg-ha-down, then pg-ha-up"
  fi
  if ! ha_running primary; then
    ensure_port_free "postgres primary" "$HA_PRIMARY_PORT"
    if [ ! -s "$HA_DIR/primary/PG_VERSION" ]; then
      rm -rf "$HA_DIR/primary" "$HA_DIR/standby"
      install -d -o postgres -g postgres -m 700 "$HA_DIR/primary"
      pg initdb -D "$HA_DIR/primary" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 --no-sync >"$HA_DIR/initdb.log" 2>&1 || die "postgres primary: initdb failed; see $HA_DIR/initdb.log"
      cat >>"$HA_DIR/primary/postgresql.conf" <<CONF
# written by scripts/services.sh (pg-ha-up)
port = $HA_PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$HA_DIR/sock'
max_connections = 100
wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
hot_standby = on
synchronous_commit = on
synchronous_standby_names = 'standby1'
CONF
      echo "host replication replicator 127.0.0.1/32 scram-sha-256" >>"$HA_DIR/primary/pg_hba.conf"
    fi
    touch "$HA_DIR/primary.log"; chown postgres:postgres "$HA_DIR/primary.log"
    log "postgres primary: starting on $HA_PRIMARY_PORT"
    ha_ctl primary -l "$HA_DIR/primary.log" -w -t "$PG_TIMEOUT" start >/dev/null 2>&1 ||
      die "postgres primary failed to start; see $HA_DIR/primary.log"
  fi
  if ! ha_psql "$HA_PRIMARY_PORT" -c "SELECT pg_is_in_recovery()" | grep -q f; then
    die "the pg-ha primary on $HA_PRIMARY_PORT is not read-write (promoted pair after a failover test?): run pg-ha-down, then pg-ha-up"
  fi
  # the synchronous standby is not there yet: roles and database are created without waiting for it
  ha_psql "$HA_PRIMARY_PORT" -c "DO \$\$BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN PASSWORD 'app'; END IF;
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') THEN CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replicator'; END IF;
    END\$\$" || die "postgres primary: could not create roles"
  # synchronous again if pg-ha-async made it asynchronous
  [ "$(ha_psql "$HA_PRIMARY_PORT" -c "SHOW synchronous_standby_names")" = standby1 ] ||
    ha_psql "$HA_PRIMARY_PORT" -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" >/dev/null
  [ "$(ha_psql "$HA_PRIMARY_PORT" -c "SELECT 1 FROM pg_database WHERE datname = 'appdb'")" = 1 ] ||
    ha_psql "$HA_PRIMARY_PORT" -c "CREATE DATABASE appdb OWNER app" || die "postgres primary: could not create appdb"
  if ! ha_running standby; then
    ensure_port_free "postgres standby" "$HA_STANDBY_PORT"
    if [ ! -s "$HA_DIR/standby/PG_VERSION" ]; then
      install -d -o postgres -g postgres -m 700 "$HA_DIR/standby"
      log "postgres standby: pg_basebackup from $HA_PRIMARY_PORT"
      (cd "$STATE" && exec 9>&- && PGPASSWORD=replicator runuser -u postgres -- "$PGBIN/pg_basebackup" -h 127.0.0.1 \
        -p "$HA_PRIMARY_PORT" -U replicator -D "$HA_DIR/standby" -X stream -R --no-sync --checkpoint=fast) >"$HA_DIR/basebackup.log" 2>&1 ||
        die "pg_basebackup failed; see $HA_DIR/basebackup.log"
      cat >>"$HA_DIR/standby/postgresql.auto.conf" <<CONF
port = $HA_STANDBY_PORT
synchronous_standby_names = ''
primary_conninfo = 'host=127.0.0.1 port=$HA_PRIMARY_PORT user=replicator password=replicator application_name=standby1'
CONF
      chown postgres:postgres "$HA_DIR/standby/postgresql.auto.conf"
    fi
    touch "$HA_DIR/standby.log"; chown postgres:postgres "$HA_DIR/standby.log"
    log "postgres standby: starting on $HA_STANDBY_PORT"
    ha_ctl standby -l "$HA_DIR/standby.log" -w -t "$PG_TIMEOUT" start >/dev/null 2>&1 ||
      die "postgres standby failed to start; see $HA_DIR/standby.log"
  fi
  ha_sync || wait_for "synchronous standby" "$PG_TIMEOUT" "$HA_DIR/standby.log" ha_sync
}

ha_down() {
  local node
  for node in standby primary; do
    if ha_running "$node"; then ha_ctl "$node" -m immediate -w -t 60 stop >/dev/null 2>&1 || true; fi
  done
  rm -rf "$HA_DIR"
}

# SIGKILL the primary's postmaster (by its own postmaster.pid), as a crashed machine would stop
ha_kill_primary() {
  local pid
  pid="$(pid_of "$HA_DIR/primary/postmaster.pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "the pg-ha primary is not running"
  kill -KILL "$pid"
  wait_pid_gone "postgres primary" "$pid" 10
  echo "$pid"
}

# asynchronous replication (a commit returns before the standby has it), for the async-standby failover test
ha_async() {
  ha_psql "$HA_PRIMARY_PORT" -c "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >/dev/null ||
    die "could not make the pg-ha primary asynchronous"
  local deadline=$((SECONDS + 10))
  until [ -z "$(ha_psql "$HA_PRIMARY_PORT" -c "SHOW synchronous_standby_names")" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "the pg-ha primary did not reload its settings"
    sleep 0.1
  done
}

ha_promote() {
  ha_ctl standby -w -t "$PG_TIMEOUT" promote >/dev/null 2>&1 || die "pg_ctl promote failed; see $HA_DIR/standby.log"
}

ha_status() {
  local node port
  for node in primary standby; do
    port=$HA_PRIMARY_PORT; [ "$node" = standby ] && port=$HA_STANDBY_PORT
    if ha_running "$node"; then
      echo "pg-ha $node  127.0.0.1:$port  $(ha_psql "$port" -c "SELECT CASE WHEN pg_is_in_recovery() THEN 'in recovery (standby)' ELSE 'read-write' END" 2>/dev/null || echo 'NOT ANSWERING')"
    else
      echo "pg-ha $node  127.0.0.1:$port  stopped"
    fi
  done
  ha_sync 2>/dev/null && echo "pg-ha  synchronous standby streaming" || echo "pg-ha  no synchronous standby"
}

print_ha_env() {
  echo "export IDEMPOTENCY_PG_HA=\"Host=127.0.0.1:$HA_PRIMARY_PORT,127.0.0.1:$HA_STANDBY_PORT;Target Session Attributes=read-write;Username=app;Password=app;Database=appdb\""
  echo "export IDEMPOTENCY_PG_HA_SERVICES=\"$SCRIPT\""
}

# ---------------------------------------------------------------- commands

print_env() {
  cat <<EOF
export IDEMPOTENCY_POSTGRES="Host=127.0.0.1;Port=$PG_PORT;Username=app;Password=app;Database=appdb"
export IDEMPOTENCY_REDIS="127.0.0.1:$REDIS_PORT"
export IDEMPOTENCY_RABBITMQ="amqp://guest:guest@127.0.0.1:$RABBIT_PORT/"
export IDEMPOTENCY_SQS="http://127.0.0.1:$FAUXQS_PORT"
export IDEMPOTENCY_SERVICES_SCRIPT="$SCRIPT"
export IDEMPOTENCY_PG_CTL="$(command -v runuser || echo /usr/sbin/runuser) -u postgres -- $PGBIN/pg_ctl -D $STATE/pgdata -l $STATE/pg.log"
export IDEMPOTENCY_RABBITMQCTL="$SCRIPT_DIR/rabbitmqctl.sh"
EOF
}

usage() {
  cat <<EOF
usage: scripts/services.sh COMMAND
  up                start PostgreSQL, Redis, RabbitMQ and fauxqs (installs what is missing)
  down              stop them (each by its pid file)
  status            one line per service
  env               print the export lines the tests read: eval "\$(scripts/services.sh env)"
  restart-postgres  pg_ctl restart -m fast      (fault-injection tests)
  stop-postgres     pg_ctl stop -m fast
  start-postgres    start PostgreSQL again
  rabbitmqctl ARGS  run rabbitmqctl against this node (same as scripts/rabbitmqctl.sh)
  cluster-up        start a Redis Cluster on 127.0.0.1:$CLUSTER_BASE-$((CLUSTER_BASE + 5)) (3 masters + 3 replicas; on demand, not in up)
  cluster-down      stop its nodes and forget it (state in $CLUSTER_DIR)
  cluster-status    one line per node (role), and the cluster state
  cluster-env       print IDEMPOTENCY_REDIS_CLUSTER (seed nodes), IDEMPOTENCY_REDIS_CLUSTER_STATE and _SERVICES (this script)
  cluster-node-start PORT   start one node again (after a failover test killed it; it rejoins as a replica)
  pg-ha-up          a private PostgreSQL primary (:$HA_PRIMARY_PORT) + synchronous streaming standby (:$HA_STANDBY_PORT); on demand
  pg-ha-down        stop both (immediate) and delete their data
  pg-ha-status      role of each, and whether the synchronous standby streams
  pg-ha-env         print IDEMPOTENCY_PG_HA (multi-host connection string, read-write) and IDEMPOTENCY_PG_HA_SERVICES
  pg-ha-kill-primary  SIGKILL the pair's primary (never the shared server); prints its pid
  pg-ha-promote     pg_ctl promote the standby
  pg-ha-async       make the primary replicate asynchronously (pg-ha-up makes it synchronous again)
state: $STATE
EOF
}

# serialise up/down so that two callers do not start the same daemon twice
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 300 9 || die "another services.sh is still running (lock $STATE/.lock)"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  up)
    lock
    ensure_state_dir
    ensure_packages
    pg_start
    redis_start
    rabbit_start
    fauxqs_start
    ;;
  down)
    lock
    fauxqs_stop
    rabbit_stop
    redis_stop
    pg_stop
    ;;
  status)
    [ -d "$STATE" ] || { echo "postgres  stopped"; echo "redis     stopped"; echo "rabbitmq  stopped"; echo "fauxqs    stopped"; exit 0; }
    pg_status
    redis_status
    rabbit_status
    fauxqs_status
    ;;
  env) print_env ;;
  restart-postgres) lock; pg_restart ;;
  stop-postgres) lock; pg_stop ;;
  start-postgres) lock; ensure_state_dir; pg_start ;;
  rabbitmqctl) rabbit rabbitmqctl "$@" ;;
  cluster-up) lock; ensure_state_dir; cluster_up ;;
  cluster-down) lock; cluster_down ;;
  cluster-status) cluster_status ;;
  cluster-env) print_cluster_env ;;
  pg-ha-up) lock; ensure_state_dir; ha_up ;;
  pg-ha-down) lock; ha_down ;;
  pg-ha-status) ha_status ;;
  pg-ha-env) print_ha_env ;;
  pg-ha-kill-primary) ha_kill_primary ;;
  pg-ha-promote) ha_promote ;;
  pg-ha-async) ha_async ;;
  cluster-node-start) [ $# -eq 1 ] || die "usage: cluster-node-start PORT"; lock; cluster_node_start "$1" ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
