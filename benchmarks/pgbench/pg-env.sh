# Sourced by the pgbench scripts: libpq's connection variables (the local services' defaults unless set) and the
# PostgreSQL client binaries, from PATH or the newest /usr/lib/postgresql/*/bin.
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-app}" PGPASSWORD="${PGPASSWORD:-app}" PGDATABASE="${PGDATABASE:-appdb}"
pg_bin_dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
pgbench="$(command -v pgbench || echo "$pg_bin_dir/pgbench")"
psql="$(command -v psql || echo "$pg_bin_dir/psql")"
