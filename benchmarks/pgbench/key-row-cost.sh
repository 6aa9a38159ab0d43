#!/usr/bin/env bash
# What recording one key row per message costs PostgreSQL by itself, with no .NET in the way: pgbench (prepared
# statements) runs the plain consumer's transaction (BEGIN; UPDATE; COMMIT) and the same transaction plus the store's
# key INSERT, into a copy of the store's table with its expires_at index, without it, with a BRIN index instead, and
# into a table of nothing but a text primary key (the least any key row can cost).
# Usage: benchmarks/pgbench/key-row-cost.sh [seconds] [clients]   (services from scripts/services.sh; PG* variables
# override the defaults below). Prints tps per variant and its ratio to the plain transaction.
set -euo pipefail
seconds="${1:-10}"
clients="${2:-16}"
. "$(dirname "$0")/pg-env.sh"
schema="keycost_$$"
work="$(mktemp -d)"
trap '"$psql" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$psql" -q -v ON_ERROR_STOP=1 <<SQL
CREATE SCHEMA $schema;
CREATE TABLE $schema.accounts (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
INSERT INTO $schema.accounts (id) SELECT generate_series(0, 99999);
CREATE TABLE $schema.keys_btree (handler_name text COLLATE "C" NOT NULL, idempotency_key text COLLATE "C" NOT NULL,
  fingerprint bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), completed_at timestamptz,
  duration_ms double precision, expires_at timestamptz NOT NULL, result bytea,
  PRIMARY KEY (idempotency_key, handler_name)) WITH (fillfactor = 90);
CREATE INDEX ON $schema.keys_btree (expires_at);
CREATE TABLE $schema.keys_none (LIKE $schema.keys_btree INCLUDING DEFAULTS INCLUDING STORAGE,
  PRIMARY KEY (idempotency_key, handler_name)) WITH (fillfactor = 90);
CREATE TABLE $schema.keys_brin (LIKE $schema.keys_none INCLUDING DEFAULTS INCLUDING STORAGE,
  PRIMARY KEY (idempotency_key, handler_name)) WITH (fillfactor = 90);
CREATE INDEX ON $schema.keys_brin USING brin (expires_at);
CREATE TABLE $schema.keys_minimal (key text COLLATE "C" PRIMARY KEY);
SQL

printf '\\set id random(0, 99999)\nBEGIN;\nUPDATE %s.accounts SET balance = balance + 1 WHERE id = :id;\nCOMMIT;\n' "$schema" > "$work/plain.sql"
printf '\\set id random(0, 99999)\nBEGIN;\nUPDATE %s.accounts SET balance = balance + 1 WHERE id = :id;\nINSERT INTO %s.keys_minimal (key) VALUES (md5(random()::text || :client_id));\nCOMMIT;\n' "$schema" "$schema" > "$work/keys_minimal.sql"
for table in keys_btree keys_none keys_brin; do
  printf '\\set id random(0, 99999)\nBEGIN;\nUPDATE %s.accounts SET balance = balance + 1 WHERE id = :id;\nINSERT INTO %s.%s (handler_name, idempotency_key, fingerprint, expires_at, completed_at, duration_ms) VALUES (%s, md5(random()::text || :client_id), %s, now() + interval %s, clock_timestamp(), 1.5);\nCOMMIT;\n' \
    "$schema" "$schema" "$table" "'orders'" "'\\x0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'" "'7 days'" > "$work/$table.sql"
done

run() { "$pgbench" -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$work/$1.sql" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
plain="$(run plain)"
printf '%-52s %10s %7s\n' "transaction ($clients clients, ${seconds} s, prepared)" "tps" "ratio"
printf '%-52s %10.0f %7s\n' "plain: UPDATE" "$plain" "1.00"
for table in keys_btree keys_none keys_brin keys_minimal; do
  tps="$(run "$table")"
  case "$table" in
    keys_btree) label="UPDATE + key INSERT (store's table, expires_at btree)";;
    keys_none) label="UPDATE + key INSERT (no expires_at index)";;
    keys_brin) label="UPDATE + key INSERT (expires_at BRIN)";;
    keys_minimal) label="UPDATE + INSERT into a one-column key table";;
  esac
  printf '%-52s %10.0f %7.2f\n' "$label" "$tps" "$(awk -v a="$tps" -v b="$plain" 'BEGIN { print a / b }')"
done
