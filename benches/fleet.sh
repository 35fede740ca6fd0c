#!/usr/bin/env bash
# The fleet benchmark (issue 16): items/s of `fleet_agent` with 1, 2, 4, 8
# workers (--work-ms 5, I/O-bound work) against a plain SKIP LOCKED queue
# doing the same work without an effect journal (`fleet_baseline`), in the
# same run, cell by cell; PostgreSQL round trips per unit counted by the
# workers themselves. Prints a Markdown table (docs/benchmarks.md, "Fleet").
#
# Uses AGENTWAL_PG_URL when set, else starts a throwaway cluster (.ci/fleet-pg).
# FLEET_BENCH_WORKERS ("1 2 4 8"), FLEET_BENCH_ITEMS_PER_WORKER (400),
# FLEET_BENCH_WORK_MS (5), FLEET_BENCH_ROUNDS (3: the table shows medians),
# FLEET_BENCH_NO_BUILD=1 (use the release examples already built).
set -euo pipefail
cd "$(dirname "$0")/.."
workers_list=${FLEET_BENCH_WORKERS:-"1 2 4 8"}
per=${FLEET_BENCH_ITEMS_PER_WORKER:-400}
work_ms=${FLEET_BENCH_WORK_MS:-5}
rounds=${FLEET_BENCH_ROUNDS:-3}

tmp=$(mktemp -d)
cleanup() {
    rm -rf "$tmp"
    if declare -F fleet_pg_stop >/dev/null; then fleet_pg_stop; fi
}
trap cleanup EXIT
if [ -z "${AGENTWAL_PG_URL:-}" ]; then
    . .ci/fleet-pg
    fleet_pg_start
fi
[ -n "${FLEET_BENCH_NO_BUILD:-}" ] || cargo build --release -q --example fleet_agent --example fleet_baseline
bin="${CARGO_TARGET_DIR:-target}/release/examples"

url_db() {
    case "$AGENTWAL_PG_URL" in
        *\?*) echo "$AGENTWAL_PG_URL&dbname=$1" ;;
        *) echo "$AGENTWAL_PG_URL?dbname=$1" ;;
    esac
}
fresh_db() {
    psql -q "$AGENTWAL_PG_URL" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}

# cell SYSTEM WORKERS -> "items_per_s round_trips_per_unit"
cell() {
    local sys=$1 w=$2 db="fb_$1_$2" n=$(($2 * per)) out="$tmp/$1-$2"
    fresh_db "$db"
    local url
    url=$(url_db "$db")
    rm -rf "$out" && mkdir -p "$out"
    if [ "$sys" = fleet_agent ]; then
        "$bin/$sys" enqueue --pg "$url" --records "$n" >/dev/null
    else
        # The baseline's table, filled the way `fleet_baseline enqueue` does.
        psql -q "$url" -c "CREATE TABLE baseline_items (key text PRIMARY KEY, state text NOT NULL DEFAULT 'pending')" \
            -c "CREATE INDEX baseline_pending ON baseline_items (key) WHERE state = 'pending'" \
            -c "INSERT INTO baseline_items (key) SELECT 'record-' || lpad(i::text, 6, '0') FROM generate_series(0, $n - 1) i" >/dev/null
    fi
    local t0 t1 i
    t0=$(date +%s.%N)
    for i in $(seq 1 "$w"); do
        if [ "$sys" = fleet_agent ]; then
            "$bin/fleet_agent" work --pg "$url" --journal "$out/j$i" --sink "$out/sink" \
                --ledger "$out/ledger" --work-ms "$work_ms" --worker-id "w$i" --exit-when-drained >"$out/w$i.log" 2>&1 &
        else
            "$bin/fleet_baseline" work --pg "$url" --sink "$out/sink" --ledger "$out/ledger" \
                --work-ms "$work_ms" --worker-id "w$i" >"$out/w$i.log" 2>&1 &
        fi
    done
    wait
    t1=$(date +%s.%N)
    local lines rts
    lines=$(wc -l <"$out/ledger")
    [ "$lines" -eq "$n" ] || { echo "!! $sys $w: $lines ledger lines for $n items" >&2; exit 1; }
    rts=$(cat "$out"/w*.log | sed -n 's/.* \([0-9][0-9]*\) PostgreSQL round trips.*/\1/p' | paste -sd+ | bc)
    echo "$(echo "$n / ($t1 - $t0)" | bc -l) $(echo "$rts / $n" | bc -l)"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A F B FR BR
for w in $workers_list; do
    : >"$tmp/f$w"; : >"$tmp/b$w"; : >"$tmp/fr$w"; : >"$tmp/br$w"
done
for r in $(seq 1 "$rounds"); do
    for w in $workers_list; do
        read -r ips rt < <(cell fleet_agent "$w"); echo "$ips" >>"$tmp/f$w"; echo "$rt" >>"$tmp/fr$w"
        read -r ips rt < <(cell fleet_baseline "$w"); echo "$ips" >>"$tmp/b$w"; echo "$rt" >>"$tmp/br$w"
        echo "round $r, $w workers: fleet $(tail -1 "$tmp/f$w") items/s, baseline $(tail -1 "$tmp/b$w") items/s" >&2
    done
done
for w in $workers_list; do
    F[$w]=$(median <"$tmp/f$w"); B[$w]=$(median <"$tmp/b$w")
    FR[$w]=$(median <"$tmp/fr$w"); BR[$w]=$(median <"$tmp/br$w")
done

echo
echo "Fleet: $per items per worker, --work-ms $work_ms, median of $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| workers | fleet_agent items/s | SKIP LOCKED baseline items/s | fleet / baseline | fleet round trips per unit | baseline round trips per unit |"
echo "|---:|---:|---:|---:|---:|---:|"
for w in $workers_list; do
    printf "| %s | %.0f | %.0f | %.2f | %.2f | %.2f |\n" "$w" "${F[$w]}" "${B[$w]}" \
        "$(echo "${F[$w]} / ${B[$w]}" | bc -l)" "${FR[$w]}" "${BR[$w]}"
done
first=$(echo "$workers_list" | awk '{print $1}')
if [[ " $workers_list " == *" 4 "* ]]; then
    printf "\nScaling 1 -> 4 workers: fleet %.2fx, baseline %.2fx\n" \
        "$(echo "${F[4]} / ${F[$first]}" | bc -l)" "$(echo "${B[4]} / ${B[$first]}" | bc -l)"
fi
