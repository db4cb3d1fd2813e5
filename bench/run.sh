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
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
command -v pgbench >/dev/null || die "pgbench not found (apt-get install postgresql-contrib, or the postgresql package)"
pg_isready -q -h 127.0.0.1 -p 5432 -U postgres || die "PostgreSQL does not answer at 127.0.0.1:5432"

profile=release
[ ${#smoke[@]} -gt 0 ] && profile=dev
target_dir=target/$([ "$profile" = dev ] && echo debug || echo release)
echo "==> building ($profile)"
cargo build --quiet --profile "$profile" -p jobq-server -p jobq-bench

db=jobq_bench
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1

# Every benchmark user unlimited.
printf '[plans.free]\nmonthly_jobs = -1\nhourly_jobs = -1\n' > "$work/plans.toml"
"$target_dir/jobq-server" migrate >/dev/null 2>&1
export JOBQ_API_KEY=$("$target_dir/jobq-server" keys create --role admin --name bench 2>/dev/null)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JOBQ_URL="http://127.0.0.1:$port"
RUST_LOG=warn JOBQ_LISTEN="127.0.0.1:$port" JOBQ_PLANS="$work/plans.toml" \
    "$target_dir/jobq-server" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    grpc_up=$(python3 -c "import socket; s=socket.socket(); print(s.connect_ex(('127.0.0.1', $port)))")
    [ "$grpc_up" = 0 ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; die "the server stopped"; }
    sleep 0.1
done

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
