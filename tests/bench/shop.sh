#!/usr/bin/env bash
# tests/bench/shop.sh — the shop's real routes, paygate against the OpenResty reference peer, in one run.
#
# paygate runs the real scripts/ (signed session tokens, stock/reserved/sold, the expiry job) wired to
# the WeChat Pay sandbox, three times: durable (the default), with the bench-only unsafe_no_sync knob,
# and durable with workers = 2 (on the same core as the others: no collapse is what it shows).
# The peer (PEERS, default ../shared/peers: not part of this repository) is started with its own
# start.sh at synchronous=FULL. wrk -t1 -c$CONN; servers on core 1, wrk on core 0 when there are
# two cores; the servers take turns, ROUNDS times, and the medians are reported with their ratios.
# BENCH_PROFILE=NAME (pg_orders, ns_orders, pg_products, notify, postgres1_orders) writes where that run's server
# time went (perf, cpu-clock) to build/bench-profile.txt.
# PostgreSQL: the same routes on one node and on two nodes (separate paygate processes on one
# database, each driven by a wrk of its own with half the connections: a round-robin client),
# on a private cluster started here (tests/pg/cluster.sh) and stopped by its PID at the end, or
# on the server in PAYGATE_BENCH_PG (a database per run is created there). BENCH_PG=0 skips it;
# BENCH_PG_POOL sets the nodes' postgresql.pool_size (default 4), BENCH_PG_TX their
# postgresql.transactions ("serial", the default, or "concurrent").
# Everything listens on 127.0.0.1; every process started here is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
PEERS=${PAYGATE_PEERS:-$ROOT/../shared/peers}
DUR=${BENCH_SECONDS:-5}
CONN=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-3}
NOTIFY=${BENCH_NOTIFICATIONS:-60000}
PG_NOTIFY=${BENCH_PG_NOTIFICATIONS:-4000}
TMP=$(mktemp -d)
chmod 755 "$TMP"   # the peer's nginx workers run as nobody and need to reach their database in it
PIDS=()
PEER_RUN=$TMP/peer
PG_DIR=""; PGURL=""; SUFFIX=""
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	[ -s "$PEER_RUN/logs/nginx.pid" ] && RUN_DIR=$PEER_RUN "$PEERS/openresty/stop.sh" >/dev/null 2>&1 || true
	if [ -n "$PG_DIR" ]; then tests/pg/cluster.sh stop "$PG_DIR" >/dev/null 2>&1 || true
	elif [ -n "$SUFFIX" ]; then # on the caller's server: the run's databases go
		for db in one two; do psql -X -q -d "$PGURL" -c "DROP DATABASE IF EXISTS bench_${db}_$SUFFIX WITH (FORCE)" >/dev/null 2>&1 || true; done
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

. tests/bench/lib.sh

# ---- the WeChat Pay sandbox (login codes only) and two shop gateways ----
examples/sandbox/keys.sh "$TMP/keys" >/dev/null
K=$TMP/keys
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/session_secret"
cat >"$TMP/sandbox.conf.lua" <<CONF
listen = "127.0.0.1:0"
scripts = "$ROOT/examples/sandbox/scripts"
lualib = "$ROOT/lualib"
database = "$TMP/sandbox.db"
watch = false
log_level = "warn"
app = { mchid = "1900007291", appid = "wxd678efh567hg6787", mode = "certificate", clock_speed = 1000,
  keys = { platform_key_file = "$K/platform_key.pem", platform_cert_file = "$K/platform_cert.pem",
           merchant_cert_file = "$K/merchant_cert.pem", apiv3_key_file = "$K/apiv3_key",
           public_key_file = "$K/pubkey_key.pem", public_key_id_file = "$K/pubkey_id",
           app_secret_file = "$K/app_secret" } }
CONF
./build/paygate-sandbox --config "$TMP/sandbox.conf.lua" >"$TMP/sandbox.out" 2>"$TMP/sandbox.err" & PIDS+=($!)
SB=$(port_of "$TMP/sandbox.out")

mkdir -p "$TMP/scripts"
cp -R scripts/. "$TMP/scripts/"
cp tests/bench/shop/bench_hooks.lua "$TMP/scripts/"
echo 'require "bench_hooks"' >>"$TMP/scripts/init.lua"

shop_conf() { # NAME EXTRA [DATABASE]: a shop config on its own database (a SQLite file unless given)
	cat >"$TMP/$1.conf.lua" <<CONF
listen = "127.0.0.1:0"
scripts = "$TMP/scripts"
lualib = "$ROOT/lualib"
database = "${3:-$TMP/$1.db}"
watch = false
log_level = "warn"
session_secret_file = "$TMP/session_secret"
admin = { trust_loopback = true }
$2
wechatpay = { mchid = "1900007291", appid = "wxd678efh567hg6787",
  merchant_serial = "$(cat "$K/merchant_serial")", private_key_file = "$K/merchant_key.pem",
  apiv3_key_file = "$K/apiv3_key", app_secret_file = "$K/app_secret",
  platform_cert_files = { "$K/platform_cert.pem" }, download_certificates = false,
  base_url = "http://127.0.0.1:$SB", login_base_url = "http://127.0.0.1:$SB", sandbox = true,
  notify_url = "http://127.0.0.1:1/wechat/notify/pay" }
CONF
}
shop_conf durable ""
shop_conf nosync "unsafe_no_sync = true"
shop_conf w2 "workers = 2"
$PIN_SERVER ./build/paygate --config "$TMP/durable.conf.lua" >"$TMP/durable.out" 2>"$TMP/durable.err" & PIDS+=($!)
PG=$(port_of "$TMP/durable.out")
PG_PID=$(worker_pid "$PG") # profiled and watched: the worker, not its master
PAYGATE_BENCH=1 $PIN_SERVER ./build/paygate --config "$TMP/nosync.conf.lua" >"$TMP/nosync.out" 2>"$TMP/nosync.err" &
PIDS+=($!)
NS=$(port_of "$TMP/nosync.out")
NS_PID=$(worker_pid "$NS")
$PIN_SERVER ./build/paygate --config "$TMP/w2.conf.lua" >"$TMP/w2.out" 2>"$TMP/w2.err" & PIDS+=($!)
W2_PID=$!
W2=$(port_of "$TMP/w2.out")

# ---- PostgreSQL: one node on a database, two nodes on another ----
if [ "${BENCH_PG:-1}" = 0 ]; then
	echo "BENCH_PG=0: no PostgreSQL figures"
elif [ -n "${PAYGATE_BENCH_PG:-}" ]; then
	PGURL=$PAYGATE_BENCH_PG
elif [ -x tests/pg/cluster.sh ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
	PG_DIR=$TMP/pg
	PGURL=$(tests/pg/cluster.sh start "$PG_DIR" 2>"$TMP/pg-cluster.err") ||
		{ echo "the private PostgreSQL cluster did not start: $(cat "$TMP/pg-cluster.err")" >&2; exit 1; }
else
	echo "no PostgreSQL (apt-get install postgresql, or PAYGATE_BENCH_PG=URL): SQLite figures only"
fi
if [ -n "$PGURL" ]; then
	SUFFIX=$$_$RANDOM
	for db in one two; do psql -X -q -v ON_ERROR_STOP=1 -d "$PGURL" -c "CREATE DATABASE bench_${db}_$SUFFIX" >/dev/null; done
	PGAPP="postgresql = { pool_size = ${BENCH_PG_POOL:-4}, transactions = \"${BENCH_PG_TX:-serial}\" }"
	shop_conf pg1 "$PGAPP" "${PGURL%/*}/bench_one_$SUFFIX"
	shop_conf pg2a "$PGAPP" "${PGURL%/*}/bench_two_$SUFFIX"
	shop_conf pg2b "$PGAPP" "${PGURL%/*}/bench_two_$SUFFIX"
	for n in pg1 pg2a pg2b; do
		$PIN_SERVER ./build/paygate --config "$TMP/$n.conf.lua" >"$TMP/$n.out" 2>"$TMP/$n.err" & PIDS+=($!)
		port=$(port_of "$TMP/$n.out")
		eval "${n^^}=$port; ${n^^}_PID=$(worker_pid "$port")"
	done
fi

# ---- the peer (when its folder is there: it is not part of this repository) ----
PEER=""
if [ -x "$PEERS/openresty/start.sh" ]; then
	PORT=$((PG + 1000))
	PORT=$PORT RUN_DIR=$PEER_RUN SYNC=FULL WORKERS=1 FRESH=1 $PIN_SERVER "$PEERS/openresty/start.sh" >"$TMP/peer.out"
	PEER=$PORT
	PEER_PID=$(cat "$PEER_RUN/logs/nginx.pid")
else
	echo "no OpenResty peer at $PEERS (set PAYGATE_PEERS): paygate's figures only"
fi

# ---- data: five products with a deep stock everywhere; users and notifications for paygate ----
for id in 1 2 3 4 5; do
	for port in "$PG" "$NS" "$W2" $PEER ${PGURL:+"$PG1" "$PG2A"}; do
		curl -sf -X PUT "http://127.0.0.1:$port/admin/products/$id" -H 'Content-Type: application/json' \
			-d "{\"name\":\"product $id\",\"price\":$((100 * id)),\"stock\":100000000}" >/dev/null
	done
done
if [ -n "$PGURL" ]; then # PAYING orders and their notifications in each PostgreSQL database
	node tests/bench/shop/setup.mjs "http://127.0.0.1:$SB" "http://127.0.0.1:$PG1" "$K" 1 "$TMP/pg1.tokens" \
		"$PG_NOTIFY" "$TMP/pg1.notifications"
	node tests/bench/shop/setup.mjs "http://127.0.0.1:$SB" "http://127.0.0.1:$PG2A" "$K" 1 "$TMP/pg2.tokens" \
		"$PG_NOTIFY" "$TMP/pg2.notifications"
	awk 'NR % 2 == 1' "$TMP/pg2.notifications" >"$TMP/pg2a.notifications" # each node's wrk its own half
	awk 'NR % 2 == 0' "$TMP/pg2.notifications" >"$TMP/pg2b.notifications"
fi
# The session secret is shared: these tokens are valid on every gateway of the run.
node tests/bench/shop/setup.mjs "http://127.0.0.1:$SB" "http://127.0.0.1:$PG" "$K" 1000 "$TMP/tokens" \
	"$NOTIFY" "$TMP/notifications"

# run PID NAME wrk-args...: one wrk run; appends "rps p99_ms" to $TMP/NAME.runs
run() {
	local pid=$1 name=$2; shift 2
	if [ "${BENCH_PROFILE:-}" = "$name" ]; then # where the server's time goes, for one kind of run
		perf record -e cpu-clock -F 999 -g -p "$pid" -o "$TMP/perf.data" -- sleep "$DUR" >/dev/null 2>&1 &
		local perf_pid=$!
	fi
	$PIN_WRK wrk -t1 -c"$CONN" -d"${DUR}s" --latency "$@" >"$TMP/wrk.out" 2>&1 || true
	if [ "${BENCH_PROFILE:-}" = "$name" ]; then
		wait "$perf_pid"
		{
			perf report -i "$TMP/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]'
			perf report -i "$TMP/perf.data" --no-children --sort sym --percent-limit 0.5 --stdio -g none 2>/dev/null |
				grep -E '^ +[0-9]'
		} >"${BENCH_PROFILE_OUT:-build/bench-profile.txt}"
	fi
	kill -0 "$pid" 2>/dev/null || { echo "the server of '$name' died; see $TMP" >&2; cat "$TMP/wrk.out" >&2; exit 1; }
	awk '/^RESULT / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
	                  print v["rps"], v["p99_ms"], v["non2xx"] }' "$TMP/wrk.out" >>"$TMP/$name.runs"
}
# run2 NAME SCRIPT PORT_A PID_A PORT_B PID_B [NOTIFY_A NOTIFY_B]: two nodes at once, each driven by a
# wrk of its own with half the connections; appends "rps(sum) p99_ms(worse) non2xx(sum)".
run2() {
	local name=$1 script=$2 pa=$3 ia=$4 pb=$5 ib=$6 wa
	NOTIFICATIONS=${7:-$NOTIFICATIONS} $PIN_WRK wrk -t1 -c$((CONN / 2)) -d"${DUR}s" --latency -s "$script" \
		"http://127.0.0.1:$pa" >"$TMP/wrk_a.out" 2>&1 &
	wa=$!
	NOTIFICATIONS=${8:-$NOTIFICATIONS} $PIN_WRK wrk -t1 -c$((CONN / 2)) -d"${DUR}s" --latency -s "$script" \
		"http://127.0.0.1:$pb" >"$TMP/wrk_b.out" 2>&1 || true
	wait "$wa" || true
	for p in "$ia" "$ib"; do
		kill -0 "$p" 2>/dev/null || { echo "a node of '$name' died; see $TMP" >&2; cat "$TMP"/wrk_?.out >&2; exit 1; }
	done
	cat "$TMP/wrk_a.out" "$TMP/wrk_b.out" | awk '/^RESULT / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		rps += v["rps"]; if (v["p99_ms"] + 0 > p99 + 0) p99 = v["p99_ms"]; bad += v["non2xx"]; n++ }
		END { if (n == 2) print rps, p99, bad }' >"$TMP/run2.out"
	if [ -s "$TMP/run2.out" ]; then cat "$TMP/run2.out" >>"$TMP/$name.runs"
	else echo "'$name': a wrk did not report; left out:" >&2; cat "$TMP/wrk_a.out" "$TMP/wrk_b.out" >&2; fi
}
median() { # FILE COLUMN
	sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'
}

S=tests/bench/shop
export TOKENS=$TMP/tokens NOTIFICATIONS=$TMP/notifications
printf 'wrk -t1 -c%s -d%ss per run, %s rounds, servers taking turns, loopback, %s cores%s\n\n' "$CONN" "$DUR" \
	"$ROUNDS" "$(nproc)" "${PIN_SERVER:+ (servers on core 1, wrk on core 0)}"

# Notifications first: their signatures carry a timestamp that must stay within WeChat's 300 s.
run "$PG_PID" notify -s "$S/notify.lua" "http://127.0.0.1:$PG"
if [ -n "$PGURL" ]; then
	NOTIFICATIONS=$TMP/pg1.notifications run "$PG1_PID" postgres1_notify -s "$S/notify.lua" "http://127.0.0.1:$PG1"
	run2 postgres2_notify "$S/notify.lua" "$PG2A" "$PG2A_PID" "$PG2B" "$PG2B_PID" "$TMP/pg2a.notifications" "$TMP/pg2b.notifications"
fi
for _ in $(seq "$ROUNDS"); do
	[ -z "$PEER" ] || run "$PEER_PID" peer_orders -s "$PEERS/wrk/create_order.lua" "http://127.0.0.1:$PEER"
	run "$PG_PID" pg_orders -s "$S/create_order.lua" "http://127.0.0.1:$PG"
	run "$NS_PID" ns_orders -s "$S/create_order.lua" "http://127.0.0.1:$NS"
	run "$W2_PID" w2_orders -s "$S/create_order.lua" "http://127.0.0.1:$W2"
	if [ -n "$PGURL" ]; then
		run "$PG1_PID" postgres1_orders -s "$S/create_order.lua" "http://127.0.0.1:$PG1"
		run2 postgres2_orders "$S/create_order.lua" "$PG2A" "$PG2A_PID" "$PG2B" "$PG2B_PID"
	fi
	[ -z "$PEER" ] || run "$PEER_PID" peer_products -s "$PEERS/wrk/products.lua" "http://127.0.0.1:$PEER/api/products"
	run "$PG_PID" pg_products -s "$S/products.lua" "http://127.0.0.1:$PG/api/products"
	run "$W2_PID" w2_products -s "$S/products.lua" "http://127.0.0.1:$W2/api/products"
done

line() { # LABEL FILE
	printf '%-58s %9.0f req/s   p99 %7.1f ms   non-2xx %s\n' "$1" "$(median "$2" 1)" "$(median "$2" 2)" \
		"$(awk '{n += $3} END {print n + 0}' "$2")"
}
[ -z "$PEER" ] || line "OpenResty peer, POST /api/orders (synchronous=FULL)" "$TMP/peer_orders.runs"
line "paygate, POST /api/orders, durable (group commit)" "$TMP/pg_orders.runs"
line "paygate, POST /api/orders, unsafe_no_sync (bench only)" "$TMP/ns_orders.runs"
line "paygate, POST /api/orders, durable, 2 workers" "$TMP/w2_orders.runs"
[ -z "$PEER" ] || line "OpenResty peer, GET /api/products" "$TMP/peer_products.runs"
line "paygate, GET /api/products" "$TMP/pg_products.runs"
line "paygate, GET /api/products, 2 workers" "$TMP/w2_products.runs"
line "paygate, POST /wechat/notify/pay, durable (1 round)" "$TMP/notify.runs"
NOTES=$(awk '{print int($1 * '"$DUR"')}' "$TMP/notify.runs")
[ "$NOTES" -le "$NOTIFY" ] || echo "  (the notification run needed more than the $NOTIFY made: some were duplicates)"
if [ -n "$PGURL" ]; then
	line "paygate on PostgreSQL, POST /api/orders, 1 node" "$TMP/postgres1_orders.runs"
	line "paygate on PostgreSQL, POST /api/orders, 2 nodes" "$TMP/postgres2_orders.runs"
	line "paygate on PostgreSQL, POST /wechat/notify/pay, 1 node (1 round)" "$TMP/postgres1_notify.runs"
	line "paygate on PostgreSQL, POST /wechat/notify/pay, 2 nodes (1 round)" "$TMP/postgres2_notify.runs"
	for f in postgres1_notify postgres2_notify; do
		[ "$(awk '{print int($1 * '"$DUR"')}' "$TMP/$f.runs")" -le "$PG_NOTIFY" ] ||
			echo "  ($f needed more than the $PG_NOTIFY notifications made: some were duplicates)"
	done
	CONFLICTS=0
	for port in "$PG1" "$PG2A" "$PG2B"; do
		c=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^paygate_db_conflicts_total/ {print $2}')
		CONFLICTS=$((CONFLICTS + ${c:-0}))
	done
	echo "  PostgreSQL $(psql -X -A -t -d "$PGURL" -c 'SHOW server_version' | awk '{print $1}'), synchronous_commit on;" \
		"transactions run again after a serialization conflict, all PostgreSQL nodes: $CONFLICTS"
fi
echo
PO=0; PP=0
[ -z "$PEER" ] || { PO=$(median "$TMP/peer_orders.runs" 1); PP=$(median "$TMP/peer_products.runs" 1); }
GO=$(median "$TMP/pg_orders.runs" 1); NO=$(median "$TMP/ns_orders.runs" 1)
GP=$(median "$TMP/pg_products.runs" 1)
awk -v po="$PO" -v go="$GO" -v no="$NO" -v pp="$PP" -v gp="$GP" -v p99="$(median "$TMP/pg_orders.runs" 2)" \
	-v nr="$(median "$TMP/notify.runs" 1)" -v w2p99="$(median "$TMP/w2_orders.runs" 2)" 'BEGIN {
	if (po > 0) printf "create order, durable / OpenResty peer at FULL:  %.2fx  (target >= 3x)\n", go / po
	printf "create order p99, durable:                        %.1f ms (target <= 10 ms)\n", p99
	printf "create order, durable / paygate unsafe_no_sync:  %.0f%%  (target >= 70%%)\n", 100 * go / no
	if (pp > 0) printf "GET /api/products / OpenResty peer:              %.2fx  (target >= 1.0x)\n", gp / pp
	printf "payment notifications, durable:                  %.0f/s (target >= 10,000/s)\n", nr
	printf "create order p99, 2 workers / 1 worker:          %.2fx  (target <= 2x)\n", w2p99 / p99
}'
if [ -n "$PGURL" ]; then
	awk -v go="$GO" -v nr="$(median "$TMP/notify.runs" 1)" -v p1="$(median "$TMP/postgres1_orders.runs" 1)" \
		-v p2="$(median "$TMP/postgres2_orders.runs" 1)" -v n1="$(median "$TMP/postgres1_notify.runs" 1)" \
		-v n2="$(median "$TMP/postgres2_notify.runs" 1)" 'BEGIN {
		printf "create order, PostgreSQL 1 node / SQLite durable: %.0f%%;  2 nodes / 1 node: %.2fx\n", 100 * p1 / go, p2 / p1
		printf "notifications, PostgreSQL 1 node / SQLite durable: %.0f%%;  2 nodes / 1 node: %.2fx\n", 100 * n1 / nr, n2 / n1
		print "(one machine: the nodes share one core, wrk the other, PostgreSQL both; not a deployment'"'"'s figures)"
	}'
fi
