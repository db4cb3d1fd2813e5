#!/usr/bin/env bash
# Compares two revisions on this machine, where one build's throughput moves
# about ±10% from run to run: builds each, then runs the chosen scenarios in
# alternating rounds (A B, B A, A B, ...), each run on a fresh database and a
# fresh server of its own revision, and prints, per scenario row and revision,
# the mean rate and its range, the latencies, and the CPU each operation cost
# the server, Postgres and the load generator, then B against A. Compare a
# revision with itself (`. .`) to see the noise of the day.
#
#   bash bench/ab.sh [--rounds N] [--only LIST] [--smoke] A B
#
# A and B are git revisions (built from their own checkout, in release), or
# `.` for this working tree as it is. LIST is jobq-bench's --only (default
# drain,steady); N the rounds, each running both (default 3). --smoke: small
# sizes and debug builds, for CI. Runs use the database jobq_ab.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rounds=3 only=drain,steady smoke=() profile=release
revisions=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
        --only) only=${2:?--only needs a list}; shift 2 ;;
        --smoke) smoke=(--smoke); profile=dev; shift ;;
        -*) die "unknown option $1 (see the comment at the top of bench/ab.sh)" ;;
        *) revisions+=("$1"); shift ;;
    esac
done
[ ${#revisions[@]} = 2 ] || die "give two revisions, A and B (a git revision, or . for the working tree)"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, not $rounds"
check_postgres

root=$PWD
# The checkouts of the revisions live in the scratch directory.
after_run() { git -C "$root" worktree prune; }
begin_run jobq_ab

# build LABEL REVISION: the binaries of REVISION, in $work/LABEL.
build() {
    local label=$1 revision=$2 checkout commit built
    mkdir -p "$work/$label"
    if [ "$revision" = . ]; then
        echo "==> building $label: the working tree ($profile)"
        cargo build --quiet --profile "$profile" -p jobq-server -p jobq-bench
        built="${CARGO_TARGET_DIR:-target}/$(profile_dir "$profile")"
        cp "$built/jobq-server" "$built/jobq-bench" "$work/$label/"
        return
    fi
    commit=$(git rev-parse --verify --quiet "$revision^{commit}") || die "$revision is not a revision of this repository"
    echo "==> building $label: $revision ($commit, $profile)"
    checkout="$work/checkout-$label"
    git worktree add --quiet --detach "$checkout" "$commit"
    # One target directory for every revision: dependencies build once.
    (cd "$checkout" && CARGO_TARGET_DIR="$root/target/ab" \
        cargo build --quiet --profile "$profile" -p jobq-server -p jobq-bench)
    built="$root/target/ab/$(profile_dir "$profile")"
    cp "$built/jobq-server" "$built/jobq-bench" "$work/$label/"
    git worktree remove --force "$checkout"
}
build A "${revisions[0]}"
build B "${revisions[1]}"

for round in $(seq 1 "$rounds"); do
    order="A B"
    [ $((round % 2)) = 0 ] && order="B A"
    for label in $order; do
        echo "==> round $round of $rounds: $label"
        start_server "$work/$label" "$db" "$work"
        # The rates are not compared with a baseline here, so none is measured.
        "$work/$label/jobq-bench" --server-pid "$server_pid" --baseline-tps 1 --only "$only" \
            --json-out "$work/$label-$round.json" "${smoke[@]}" >"$work/$label-$round.txt" \
            || { cat "$work/$label-$round.txt" "$work/server.log"; die "the benchmark of $label failed in round $round"; }
        stop_server
    done
done

echo
echo "A = ${revisions[0]}, B = ${revisions[1]}; rounds: $rounds; $(nproc) cores; $(psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SHOW server_version')"
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys

work, rounds = sys.argv[1], int(sys.argv[2])
runs = {label: [json.load(open(f"{work}/{label}-{r}.json"))["scenarios"] for r in range(1, rounds + 1)]
        for label in "AB"}

def per_op(row, key):
    return row[key] / max(row["operations"], 1) * 1e6

def latency(rows, key):
    """The mean of a latency over the runs, or "-" for a row without latencies."""
    values = [row[key] for row in rows if row.get(key) is not None]
    return f"{statistics.mean(values):.2f}" if values else "-"

print(f"{'scenario':<24} {'':2} {'ops/s mean':>10} {'(min-max)':>17} {'p50 ms':>7} {'p99 ms':>7}"
      f" {'server':>7} {'pg':>7} {'gen':>7} {'µs CPU/op':>9}")
names = [row["scenario"] for row in runs["A"][0]]
for name in names:
    means = {}
    for label in "AB":
        rows = [row for run in runs[label] for row in run if row["scenario"] == name]
        if not rows:
            continue
        rate = [row["per_second"] for row in rows]
        cpu = {key: statistics.mean(per_op(row, key) for row in rows)
               for key in ("server_cpu_seconds", "postgres_cpu_seconds", "generator_cpu_seconds")}
        total = sum(cpu.values())
        means[label] = (statistics.mean(rate), total, rate)
        p50, p99 = (latency(rows, key) for key in ("p50_ms", "p99_ms"))
        print(f"{name:<24} {label:2} {statistics.mean(rate):>10.0f} {f'({min(rate):.0f}-{max(rate):.0f})':>17}"
              f" {p50:>7} {p99:>7} {cpu['server_cpu_seconds']:>7.1f} {cpu['postgres_cpu_seconds']:>7.1f}"
              f" {cpu['generator_cpu_seconds']:>7.1f} {total:>9.1f}")
    if len(means) == 2:
        (rate_a, cpu_a, rates_a), (rate_b, cpu_b, rates_b) = means["A"], means["B"]
        higher = sum(b > a for a, b in zip(rates_a, rates_b))
        print(f"{'':<24} B/A rate {rate_b / rate_a:.3f}x (B higher in {higher} of {len(rates_a)} rounds),"
              f" CPU per op {cpu_b / cpu_a:.3f}x")
PY
