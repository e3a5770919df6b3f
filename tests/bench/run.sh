#!/usr/bin/env bash
# tests/bench/run.sh — wrk against bare evhttp and paygate in the same run; prints the ratios.
# Everything listens on 127.0.0.1; every process started here is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."
DUR=${BENCH_SECONDS:-5}
CONN=${BENCH_CONNECTIONS:-64}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

. tests/bench/lib.sh


# run PID wrk-args...: one wrk run against the server PID; prints "req_per_s requests cpu_ticks"
# (cpu_ticks: the server's user + system CPU during the run, in clock ticks).
run() {
	local pid=$1 t0 t1 out; shift
	t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	out=$($PIN_WRK wrk -t1 -c"$CONN" -d"${DUR}s" "$@")
	t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	echo "$out" | awk -v t="$((t1 - t0))" '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {print r, n, t}'
}

$PIN_SERVER ./build/bench/bare_evhttp 0 >"$TMP/bare.out" 2>&1 & PIDS+=($!)
BARE=$(port_of "$TMP/bare.out")

cat >"$TMP/bench.conf.lua" <<CONF
listen = "127.0.0.1:0"
scripts = "$PWD/tests/bench/scripts"
lualib = "$PWD/lualib"
database = "$TMP/bench.db"
watch = false
log_level = "warn"
CONF
$PIN_SERVER ./build/paygate --config "$TMP/bench.conf.lua" >"$TMP/pg.out" 2>"$TMP/pg.err" & PIDS+=($!)
PG=$(port_of "$TMP/pg.out")

printf 'wrk -t1 -c%s -d%ss per round, %s rounds, loopback, %s cores%s\n\n' "$CONN" "$DUR" "${BENCH_ROUNDS:-3}" "$(nproc)" \
	"${PIN_SERVER:+ (servers on core 1, wrk on core 0)}"
curl -sf "http://127.0.0.1:$PG/hello" >/dev/null
# The two servers take turns (ROUNDS times) so that a change in machine load during the
# run hits both alike. Two figures: throughput (requests/s, as wrk sees it) and the server's
# own CPU per request (from /proc), which the load generator's limits cannot hide.
ROUNDS=${BENCH_ROUNDS:-3}
BARE_PID=${PIDS[0]}; PG_PID=$(worker_pid "$PG") # the worker's CPU: the master only supervises
run "$BARE_PID" "http://127.0.0.1:$BARE/hello" >/dev/null        # warm-up
run "$PG_PID" "http://127.0.0.1:$PG/hello" >/dev/null
: >"$TMP/bare.runs"; : >"$TMP/pg.runs"
for _ in $(seq "$ROUNDS"); do
	run "$BARE_PID" "http://127.0.0.1:$BARE/hello" >>"$TMP/bare.runs"
	run "$PG_PID" "http://127.0.0.1:$PG/hello" >>"$TMP/pg.runs"
done
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
LUA
run "$PG_PID" -s "$TMP/post.lua" "http://127.0.0.1:$PG/write" >"$TMP/write.runs"
ROWS=$(curl -s "http://127.0.0.1:$PG/metrics" | awk '/^paygate_db_commits_total/ {print $2}')
BATCHES=$(curl -s "http://127.0.0.1:$PG/metrics" | awk '/^paygate_db_batches_total/ {print $2}')
HZ=$(getconf CLK_TCK)

# summary FILE → "req_per_s microseconds_of_server_cpu_per_request"
summary() {
	awk -v hz="$HZ" '{r += $1; n += $2; t += $3; k++} END {printf "%.0f %.1f\n", r / k, 1e6 * t / hz / n}' "$1"
}
read -r B BC < <(summary "$TMP/bare.runs")
read -r P PC < <(summary "$TMP/pg.runs")
read -r W WC < <(summary "$TMP/write.runs")

printf '%-46s %9s req/s %8s us CPU/request\n' "bare evhttp, GET /hello" "$B" "$BC"
printf '%-46s %9s req/s %8s us CPU/request\n' "paygate Lua route, GET /hello" "$P" "$PC"
printf '%-46s %9s req/s %8s us CPU/request\n' "paygate Lua route, POST /write (1 SQLite txn)" "$W" "$WC"
awk -v b="$B" -v p="$P" -v w="$W" -v bc="$BC" -v pc="$PC" 'BEGIN {
	printf "\ntrivial route / bare evhttp: %.1f%% of the throughput, %.1f%% of the CPU efficiency  (target >= 80%%)\n",
		100 * p / b, 100 * bc / pc;
	printf "SQLite write route / bare evhttp: %.1f%% of the throughput (WAL, synchronous=FULL, group commit)\n",
		100 * w / b }'
echo "durable transactions during the run: $ROWS, in $BATCHES batches (one sync each)"
