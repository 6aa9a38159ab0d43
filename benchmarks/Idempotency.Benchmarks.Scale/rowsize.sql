-- Bytes per row of the processed-keys table (schema of src/Stores/Idempotency.Postgres/Sql/schema.sql), for sizing:
--   psql "host=127.0.0.1 port=5433 user=app dbname=appdb" -X -f benchmarks/Idempotency.Benchmarks.Scale/rowsize.sql
-- Creates and drops its own schema "sizing".
\timing off
DROP SCHEMA IF EXISTS sizing CASCADE;
CREATE SCHEMA sizing;
CREATE TABLE sizing.processed_messages (
    handler_name    text        COLLATE "C" NOT NULL,
    idempotency_key text        COLLATE "C" NOT NULL,
    fingerprint     bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    duration_ms     double precision,
    expires_at      timestamptz NOT NULL,
    result          bytea,
    PRIMARY KEY (idempotency_key, handler_name)
) WITH (fillfactor = 90);
CREATE INDEX ON sizing.processed_messages (expires_at);
-- 1,000,000 rows as the store writes them: 36-character UUID keys, a 32-byte SHA-256 fingerprint, no stored result
INSERT INTO sizing.processed_messages (handler_name, idempotency_key, fingerprint, completed_at, expires_at)
SELECT 'orders', gen_random_uuid()::text, sha256(i::text::bytea), now(), now() + interval '7 days' + (i % 86400) * interval '1 second'
FROM generate_series(1, 1000000) AS i;
VACUUM ANALYZE sizing.processed_messages;
SELECT pg_relation_size('sizing.processed_messages') AS heap,
       pg_relation_size('sizing.processed_messages_pkey') AS pkey,
       pg_relation_size('sizing.processed_messages_expires_at_idx') AS expires_idx,
       pg_total_relation_size('sizing.processed_messages') AS total,
       round(pg_total_relation_size('sizing.processed_messages') / 1000000.0, 1) AS bytes_per_row;
DROP SCHEMA sizing CASCADE;
