#!/usr/bin/env bash
# tests/run.sh — every suite of `make test`: C units, Lua units, fuzz-corpus replay,
# the WeChat Pay SDK conformance test and the end-to-end tests over real HTTP.
# Each suite's full output goes to build/test-logs/; the last line is "N passed, N failed".
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
run "embed:libpaygate" tests/embed/run.sh
run "browser:console" env BUILD="$BUILD" tests/console/run.sh

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
