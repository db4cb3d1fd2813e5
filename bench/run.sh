#!/usr/bin/env bash
# The jobq benchmark, in one command: builds in release, makes a fresh database,
# starts a release server (plans without limits, API keys required), measures
# pgbench's single-row-insert rate on a table shaped like the jobs table, runs
# the scenarios through the client crate, and prints one table of figures and
# ratios (also written as JSON to target/bench/results.json).
#
#   bash bench/run.sh            the full run (a few minutes)
#   bash bench/run.sh --smoke    seconds, for CI: small sizes, no targets
#
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=()
pgbench_seconds=15
if [ "${1:-}" = "--smoke" ]; then
    smoke=(--smoke)
    pgbench_seconds=3
fi
source bench/lib.sh
command -v pgbench >/dev/null || die "pgbench not found (apt-get install postgresql-contrib, or the postgresql package)"
check_postgres

profile=release
[ ${#smoke[@]} -gt 0 ] && profile=dev
target_dir=${CARGO_TARGET_DIR:-target}/$(profile_dir "$profile")
echo "==> building ($profile)"
cargo build --quiet --profile "$profile" -p jobq-server -p jobq-bench

begin_run jobq_bench
start_server "$target_dir" "$db" "$work"

echo "==> pgbench baseline: one single-row INSERT per transaction, -M prepared -c 16 -j 2 -T $pgbench_seconds"
psql "$DATABASE_URL" -q -c "CREATE TABLE pgbench_jobs (LIKE menu_extraction_jobs INCLUDING DEFAULTS INCLUDING INDEXES)"
cat > "$work/insert.sql" <<'SQL'
INSERT INTO pgbench_jobs (id, user_id, image_url, image_hash, status)
VALUES (gen_random_uuid(), gen_random_uuid(), 'https://bench.example/pgbench.jpg',
        md5(random()::text) || md5(random()::text), 'queued');
SQL
pgbench -n -M prepared -c 16 -j 2 -T "$pgbench_seconds" -f "$work/insert.sql" "$DATABASE_URL" >"$work/pgbench.txt" 2>&1 \
    || { cat "$work/pgbench.txt"; die "pgbench failed"; }
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/pgbench.txt" | head -1)
[ -n "$tps" ] || { cat "$work/pgbench.txt"; die "no tps in pgbench's output"; }
psql "$DATABASE_URL" -q -c "DROP TABLE pgbench_jobs"

echo "==> scenarios"
mkdir -p target/bench
"$target_dir/jobq-bench" --server-pid "$server_pid" --baseline-tps "$tps" \
    --json-out target/bench/results.json "${smoke[@]}"
echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(psql "$DATABASE_URL" -Atqc 'SHOW server_version') Postgres"
