#!/usr/bin/env bash
# tests/run.sh — every suite of `make test`: C units, Lua units, fuzz-corpus replay,
# the WeChat Pay SDK conformance test and the end-to-end tests over real HTTP.
# Each suite's full output goes to build/test-logs/; the last line is "N passed, N failed".
# The PostgreSQL specs run against a private cluster this script starts (tests/pg/cluster.sh)
# and stops by its PID at the end, whatever happens; its URL is PAYGATE_TEST_PG.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export PAYGATE_BIN="$PWD/$BUILD/paygate"
export PAYGATE_SANDBOX_BIN="$PWD/$BUILD/paygate-sandbox"
export PAYGATE_CRASH_BIN="$PWD/$BUILD/tests/paygate-crash"
export PAYGATE_FAULTS_BIN="$PWD/$BUILD/tests/paygate-faults"
LOGS=$BUILD/test-logs
mkdir -p "$LOGS"
PASS=0
FAIL=0

# summarize NAME LOGFILE EXIT_CODE: add the suite's counts (a suite that printed none counts as one failure)
summarize() {
	local name=$1 log=$2 rc=$3 p f
	if grep -aqE '^# pass [0-9]+' "$log"; then                       # node --test (TAP)
		p=$(grep -aE '^# pass [0-9]+' "$log" | tail -1 | awk '{print $3}')
		f=$(grep -aE '^# fail [0-9]+' "$log" | tail -1 | awk '{print $3}')
	elif grep -aqE '^[0-9]+ passed, [0-9]+ failed' "$log"; then       # our C and Lua runners
		p=$(grep -aE '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1 | awk '{print $1}')
		f=$(grep -aE '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1 | awk '{print $3}')
	else
		p=0; f=1
	fi
	if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
	PASS=$((PASS + p)); FAIL=$((FAIL + f))
	printf '%-28s %4d passed, %d failed\n' "$name" "$p" "$f"
	if [ "$f" -ne 0 ]; then
		grep -aE '^(not ok|#   |# Subtest|\s+(error|expected|actual):)' "$log" | head -40 | sed 's/^/    /'
		echo "    (full output: $log)"
	fi
}

run() {
	local name=$1; shift
	local log="$LOGS/$name.log"
	"$@" >"$log" 2>&1
	summarize "$name" "$log" $?
}

# A private PostgreSQL for every suite (docs/testing.md): the Lua units check the shop's SQL on
# it (tests/pg/sql_check.lua), the e2e specs run gateways on it. Without Debian's postgresql the
# PostgreSQL runs are skipped, loudly; on CI (CI=true) that is a failure. A PAYGATE_TEST_PG
# given by the caller is used as it is (a server of the caller's; nothing is started).
PG_NOTE=""
if [ -n "${PAYGATE_TEST_PG:-}" ]; then
	PG_NOTE="PostgreSQL: the server given in PAYGATE_TEST_PG ($PAYGATE_TEST_PG)"
elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
	# One directory per checkout (so parallel checkouts do not meet, and a killed run's is reused).
	PG_DIR=${PAYGATE_PG_DIR:-/tmp/paygate-pg-$(id -u)-$(printf %s "$PWD" | md5sum | cut -c1-8)}
	trap 'tests/pg/cluster.sh stop "$PG_DIR"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if PAYGATE_TEST_PG=$(tests/pg/cluster.sh start "$PG_DIR" 2>"$LOGS/pg-cluster.log"); then
		export PAYGATE_TEST_PG
		PG_VERSION=$("$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/postgres" --version | awk '{print $3}')
		PG_NOTE="PostgreSQL: a private PostgreSQL $PG_VERSION this run started at ${PAYGATE_TEST_PG#postgresql://postgres@} (stopped at exit)"
	else
		printf '%-28s %4d passed, %d failed\n' pg:cluster 0 1
		sed 's/^/    /' "$LOGS/pg-cluster.log" | head -20
		FAIL=$((FAIL + 1))
		PG_NOTE="PostgreSQL suites SKIPPED: the private cluster did not start ($LOGS/pg-cluster.log)"
	fi
elif [ "${CI:-}" = true ]; then
	printf '%-28s %4d passed, %d failed\n' pg:cluster 0 1
	echo "    no /usr/lib/postgresql/*/bin/initdb: CI must run the PostgreSQL suites (apt-get install postgresql)"
	FAIL=$((FAIL + 1))
	PG_NOTE="PostgreSQL suites NOT RUN: postgresql is not installed (a failure under CI=true)"
else
	PG_NOTE="PostgreSQL suites SKIPPED: postgresql is not installed (apt-get install postgresql; .ci/run does)"
	echo "*** $PG_NOTE ***"
fi

for t in "$BUILD"/tests/test_*; do
	[ -x "$t" ] && run "c:$(basename "$t")" "$t"
done
run "lua:lualib" lua5.4 tests/lua/run.lua .
run "style" tests/style.sh
run "layers" env BUILD="$BUILD" tests/layers_test.sh
for t in notify json config http lua_args; do
	if [ -x "$BUILD"/tests/fuzz_$t ] && [ -d tests/fuzz/corpus/$t ]; then
		run "fuzz-replay:$t" "$BUILD"/tests/fuzz_$t tests/fuzz/corpus/$t/*
	fi
done
if [ -x tests/conformance/run.sh ]; then
	run "conformance:wechatpay-node" env WXP_TOOL="$PWD/$BUILD/tests/wxp_tool" tests/conformance/run.sh
fi
for t in tests/e2e/*.test.mjs; do
	run "e2e:$(basename "$t" .test.mjs)" node --test --test-reporter=tap --test-timeout=120000 "$t"
done
# Which suites ran on PostgreSQL (the harness's backends() prints a "backends:" line per suite).
if [ -n "${PAYGATE_TEST_PG:-}" ]; then
	pg_ran=$(grep -l '^# backends: .*postgresql' "$LOGS"/e2e:*.log 2>/dev/null | xargs -r grep -L 'postgresql SKIPPED' | wc -l)
	pg_why=$(grep -h '^# backends: .*postgresql SKIPPED' "$LOGS"/e2e:*.log 2>/dev/null | head -1 | sed 's/.*SKIPPED: //')
	pg_skipped=$(grep -l '^# backends: .*postgresql SKIPPED' "$LOGS"/e2e:*.log 2>/dev/null | wc -l)
	PG_NOTE="$PG_NOTE; $pg_ran suites ran on PostgreSQL"
	if [ "$pg_skipped" -ne 0 ]; then PG_NOTE="$PG_NOTE, $pg_skipped skipped it: $pg_why"; fi
fi
run "embed:libpaygate" tests/embed/run.sh
run "browser:console" env BUILD="$BUILD" tests/console/run.sh

echo
echo "$PG_NOTE"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
