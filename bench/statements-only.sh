#!/usr/bin/env bash
# The drain's database work with no server: pgbench claims and completes 100
# jobs per transaction on a fresh jobq database, with the statements jobq's
# worker protocol runs (in their single-batch form), beside the same pgbench
# baseline as bench/run.sh. It shows the ceiling Postgres itself puts on the
# drain scenario on this machine and schema (README, Performance).
#
#   bash bench/statements-only.sh           about a minute
#   bash bench/statements-only.sh --smoke   seconds, for CI (a debug build, small sizes)
#
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
check_postgres
profile=release seconds=15 jobs=300000 transactions=1200
if [ "${1:-}" = "--smoke" ]; then
    profile=dev seconds=2 jobs=4000 transactions=20
fi
target_dir=${CARGO_TARGET_DIR:-target}/$(profile_dir "$profile")
begin_run jobq_statements
url="postgres://postgres@127.0.0.1:5432/$db"
cargo build --quiet --profile "$profile" -p jobq-server
drop_database "$db"
DATABASE_URL="$url" "$target_dir/jobq-server" migrate >/dev/null 2>&1

cat > "$work/insert.sql" <<'SQL'
INSERT INTO pgbench_jobs (id, user_id, image_url, image_hash, status)
VALUES (gen_random_uuid(), gen_random_uuid(), 'https://bench.example/pgbench.jpg',
        md5(random()::text) || md5(random()::text), 'queued');
SQL
cat > "$work/drain.sql" <<'SQL'
\set w random(1, 1000000000)
SELECT count(*) FROM jobq_claim(array_fill(0, ARRAY[100]), ARRAY[(:w)::text], ARRAY[60000::bigint], NULL::timestamptz);
UPDATE menu_extraction_jobs
SET status = 'completed', result = '{}'::jsonb, completed_at = now(), processing_time = 1,
    lease_expires_at = NULL,
    version = nextval('menu_extraction_jobs_version_seq'), updated_at = now(), changed_xid = pg_current_xact_id()
WHERE status = 'processing' AND lease_expires_at IS NOT NULL AND worker_id = (:w)::text;
SQL

psql "$url" -q -c "CREATE TABLE pgbench_jobs (LIKE menu_extraction_jobs INCLUDING DEFAULTS INCLUDING INDEXES)"
baseline=$(pgbench -n -M prepared -c 16 -j 2 -T "$seconds" -f "$work/insert.sql" "$url" 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
psql "$url" -q -c "DROP TABLE pgbench_jobs" \
    -c "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, created_at)
        SELECT gen_random_uuid(), 'https://bench.example/' || g || '.jpg',
               encode(sha256(g::text::bytea), 'hex'), now() - interval '1 hour' + g * interval '1 ms'
        FROM generate_series(1, $jobs) g"
psql "$url" -q -c "VACUUM ANALYZE menu_extraction_jobs"
psql "$url" -q -c "CHECKPOINT"
tps=$(pgbench -n -M prepared -c 2 -j 2 -t "$transactions" -f "$work/drain.sql" "$url" 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
# Every claimed job was completed, and as many as the transactions claimed.
read -r claimed completed < <(psql "$url" -Atc "SELECT count(*) FILTER (WHERE status <> 'queued'),
    count(*) FILTER (WHERE status = 'completed') FROM menu_extraction_jobs" | tr '|' ' ')
[ "$claimed" = "$completed" ] && [ "$completed" = $((transactions * 2 * 100)) ] \
    || { echo "statements-only: $completed of $claimed claimed jobs completed, $((transactions * 2 * 100)) expected" >&2; exit 1; }
python3 -c "
b, t = $baseline, $tps * 100
print(f'pgbench baseline (single-row INSERT, -M prepared -c 16 -j 2): {b:.0f} tps')
print(f'drain statements alone (claim + complete 100 jobs a transaction, -c 2): {t:.0f} jobs/s = {t / b:.2f}x')"
