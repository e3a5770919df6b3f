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

port_of() { # wait for "listening on http://127.0.0.1:PORT" in $1
	for _ in $(seq 100); do
		p=$(grep -o '127\.0\.0\.1:[0-9]*' "$1" 2>/dev/null | head -1 | cut -d: -f2)
		[ -n "$p" ] && { echo "$p"; return; }
		sleep 0.05
	done
	echo "server did not start: $(cat "$1")" >&2; exit 1
}

rps() { # wrk args... → requests/s
	wrk -t1 -c"$CONN" -d"${DUR}s" "$@" | awk '/Requests\/sec/ {print $2}'
}

./build/bench/bare_evhttp 0 >"$TMP/bare.out" 2>&1 & PIDS+=($!)
BARE=$(port_of "$TMP/bare.out")

cat >"$TMP/bench.conf.lua" <<CONF
listen = "127.0.0.1:0"
scripts = "$PWD/tests/bench/scripts"
lualib = "$PWD/lualib"
database = "$TMP/bench.db"
watch = false
log_level = "warn"
CONF
./build/paygate --config "$TMP/bench.conf.lua" >"$TMP/pg.out" 2>"$TMP/pg.err" & PIDS+=($!)
PG=$(port_of "$TMP/pg.out")

printf 'wrk -t1 -c%s -d%ss per round, loopback, %s cores (load generator and server share them)\n\n' "$CONN" "$DUR" "$(nproc)"
curl -sf "http://127.0.0.1:$PG/hello" >/dev/null
# The two servers take turns (ROUNDS times) so that a change in machine load
# during the run hits both alike; the figures are the sums over all rounds.
ROUNDS=${BENCH_ROUNDS:-3}
rps "http://127.0.0.1:$BARE/hello" >/dev/null          # warm-up
B=0; P=0
for _ in $(seq "$ROUNDS"); do
	B=$(awk -v a="$B" -v b="$(rps "http://127.0.0.1:$BARE/hello")" 'BEGIN {print a + b}')
	P=$(awk -v a="$P" -v b="$(rps "http://127.0.0.1:$PG/hello")" 'BEGIN {print a + b}')
done
B=$(awk -v a="$B" -v n="$ROUNDS" 'BEGIN {printf "%.2f", a / n}')
P=$(awk -v a="$P" -v n="$ROUNDS" 'BEGIN {printf "%.2f", a / n}')
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
LUA
W=$(rps -s "$TMP/post.lua" "http://127.0.0.1:$PG/write")
ROWS=$(curl -s "http://127.0.0.1:$PG/metrics" | awk '/^paygate_db_commits_total/ {print $2}')

printf '%-44s %10s req/s\n' "bare evhttp, GET /hello" "$B"
printf '%-44s %10s req/s\n' "paygate Lua route, GET /hello" "$P"
printf '%-44s %10s req/s\n' "paygate Lua route, POST /write (1 SQLite txn)" "$W"
awk -v b="$B" -v p="$P" -v w="$W" 'BEGIN {
	printf "\ntrivial route / bare evhttp: %.1f%%  (target >= 80%%)\n", 100 * p / b;
	printf "SQLite write route / bare evhttp: %.1f%%  (WAL, synchronous=FULL, one fsync per request)\n", 100 * w / b }'
echo "durable commits during the run: $ROWS"
