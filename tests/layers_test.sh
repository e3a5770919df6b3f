#!/usr/bin/env bash
# tests/layers_test.sh — specs of the layering check: the engine passes it, and a back edge fails it.
set -u
cd "$(dirname "$0")/.."
OBJ=${BUILD:-build}/obj
WORK=$(mktemp -d "${TMPDIR:-/tmp}/paygate-layers.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pass=0; fail=0
spec() { # name, command (true = ok)
	if eval "$2" >"$WORK/out" 2>&1; then pass=$((pass + 1)); echo "ok - $1"
	else fail=$((fail + 1)); echo "not ok - $1"; sed 's/^/#   /' "$WORK/out" | head -20; fi
}

spec "the engine's includes and calls all point down its layers" "tests/layers.sh engine '$OBJ'"

mkdir -p "$WORK/up/engine" "$WORK/up/obj"
cp engine/*.c engine/*.h "$WORK/up/engine/"
printf '#include "coro.h"\n' >>"$WORK/up/engine/log.c"
spec "an #include of a higher layer (log.c including coro.h) fails the check and is named" \
	"! tests/layers.sh '$WORK/up/engine' '$OBJ' >'$WORK/up/out'; grep -q 'log.c:.* includes coro.h' '$WORK/up/out'"

printf 'void coro_go(void *c);\nvoid log_calls_up(void);\nvoid log_calls_up(void) { coro_go(0); }\n' >"$WORK/log.c"
cc -c "$WORK/log.c" -o "$WORK/up/obj/log.o" && cp "$OBJ/coro.o" "$WORK/up/obj/"
spec "a call into a higher layer (log calling coro_go) fails the check and is named" \
	"! tests/layers.sh engine '$WORK/up/obj' >'$WORK/up/out2'; grep -q 'log calls coro_go of coro' '$WORK/up/out2'"

touch "$WORK/up/engine/newthing.c"
spec "a new engine file without a declared layer fails the check" \
	"! tests/layers.sh '$WORK/up/engine' '$OBJ' >'$WORK/up/out3'; grep -q 'newthing.c is in no layer' '$WORK/up/out3'"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
