# Shared by bench/run.sh, bench/statements-only.sh and bench/ab.sh (sourced,
# not run): a benchmark server on a fresh database. Needs PostgreSQL at
# 127.0.0.1:5432 (user postgres, trust auth) and python3 (to find a free port).

die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# profile_dir PROFILE: the directory cargo builds PROFILE into, under a target
# directory (debug for dev, release for release).
profile_dir() { [ "$1" = dev ] && echo debug || echo release; }

check_postgres() {
    pg_isready -q -h 127.0.0.1 -p 5432 -U postgres || die "PostgreSQL does not answer at 127.0.0.1:5432"
}

drop_database() {
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
}

# begin_run DATABASE: sets db, a scratch directory in work, and, for when the
# script exits however it exits, the server stopped, DATABASE dropped and the
# directory removed, then after_run called if the script defines one.
begin_run() {
    db=$1
    work=$(mktemp -d)
    server_pid=
    trap end_run EXIT
}

end_run() {
    stop_server
    drop_database "$db"
    rm -rf "$work"
    if declare -F after_run >/dev/null; then after_run; fi
}

# start_server BIN_DIR DATABASE WORK_DIR: drops DATABASE, lets BIN_DIR's
# jobq-server create and migrate it, makes an admin key, and starts the server
# on a free port with every benchmark user on an unlimited plan. Exports
# DATABASE_URL, JOBQ_API_KEY and JOBQ_URL (what jobq-bench reads) and sets
# server_pid; the server's log is WORK_DIR/server.log.
start_server() {
    local bin=$1 database=$2 work=$3 port up
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
    drop_database "$database"
    printf '[plans.free]\nmonthly_jobs = -1\nhourly_jobs = -1\n' > "$work/plans.toml"
    "$bin/jobq-server" migrate >/dev/null 2>&1 || die "$bin/jobq-server could not create and migrate $database"
    JOBQ_API_KEY=$("$bin/jobq-server" keys create --role admin --name bench 2>/dev/null) \
        || die "$bin/jobq-server could not create an API key"
    export JOBQ_API_KEY
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export JOBQ_URL="http://127.0.0.1:$port"
    RUST_LOG=warn JOBQ_LISTEN="127.0.0.1:$port" JOBQ_PLANS="$work/plans.toml" \
        "$bin/jobq-server" >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        up=$(python3 -c "import socket; s=socket.socket(); print(s.connect_ex(('127.0.0.1', $port)))")
        [ "$up" = 0 ] && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; die "the server stopped"; }
        sleep 0.1
    done
    cat "$work/server.log"
    die "the server did not listen on port $port within 10 s"
}

# stop_server: stops the server start_server started, if it runs.
stop_server() {
    if [ -n "${server_pid:-}" ]; then
        kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
