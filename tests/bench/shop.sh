#!/usr/bin/env bash
# tests/bench/shop.sh — the shop's real routes, paygate against the OpenResty reference peer, in one run.
#
# paygate runs the real scripts/ (signed session tokens, stock/reserved/sold, the expiry job) wired to
# the WeChat Pay sandbox, three times: durable (the default), with the bench-only unsafe_no_sync knob,
# and durable with workers = 2 (on the same core as the others: no collapse is what it shows).
# The peer (PEERS, default ../shared/peers: not part of this repository) is started with its own
# start.sh at synchronous=FULL. wrk -t1 -c$CONN; servers on core 1, wrk on core 0 when there are
# two cores; the servers take turns, ROUNDS times, and the medians are reported with their ratios.
# BENCH_PROFILE=NAME (pg_orders, ns_orders, pg_products, notify) writes where that run's server
# time went (perf, cpu-clock) to build/bench-profile.txt.
# Everything listens on 127.0.0.1; every process started here is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
PEERS=${PAYGATE_PEERS:-$ROOT/../shared/peers}
DUR=${BENCH_SECONDS:-5}
CONN=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-3}
NOTIFY=${BENCH_NOTIFICATIONS:-60000}
TMP=$(mktemp -d)
chmod 755 "$TMP"   # the peer's nginx workers run as nobody and need to reach their database in it
PIDS=()
PEER_RUN=$TMP/peer
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	[ -s "$PEER_RUN/logs/nginx.pid" ] && RUN_DIR=$PEER_RUN "$PEERS/openresty/stop.sh" >/dev/null 2>&1 || true
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

shop_conf() { # NAME EXTRA: a shop config on its own database
	cat >"$TMP/$1.conf.lua" <<CONF
listen = "127.0.0.1:0"
scripts = "$TMP/scripts"
lualib = "$ROOT/lualib"
database = "$TMP/$1.db"
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
	for port in "$PG" "$NS" "$W2" $PEER; do
		curl -sf -X PUT "http://127.0.0.1:$port/admin/products/$id" -H 'Content-Type: application/json' \
			-d "{\"name\":\"product $id\",\"price\":$((100 * id)),\"stock\":100000000}" >/dev/null
	done
done
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
median() { # FILE COLUMN
	sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'
}

S=tests/bench/shop
export TOKENS=$TMP/tokens NOTIFICATIONS=$TMP/notifications
printf 'wrk -t1 -c%s -d%ss per run, %s rounds, servers taking turns, loopback, %s cores%s\n\n' "$CONN" "$DUR" \
	"$ROUNDS" "$(nproc)" "${PIN_SERVER:+ (servers on core 1, wrk on core 0)}"

# Notifications first: their signatures carry a timestamp that must stay within WeChat's 300 s.
run "$PG_PID" notify -s "$S/notify.lua" "http://127.0.0.1:$PG"
for _ in $(seq "$ROUNDS"); do
	[ -z "$PEER" ] || run "$PEER_PID" peer_orders -s "$PEERS/wrk/create_order.lua" "http://127.0.0.1:$PEER"
	run "$PG_PID" pg_orders -s "$S/create_order.lua" "http://127.0.0.1:$PG"
	run "$NS_PID" ns_orders -s "$S/create_order.lua" "http://127.0.0.1:$NS"
	run "$W2_PID" w2_orders -s "$S/create_order.lua" "http://127.0.0.1:$W2"
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
