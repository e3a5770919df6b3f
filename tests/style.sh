#!/usr/bin/env bash
# tests/style.sh — a small style check instead of style debates (run by make test).
# All C: one dialect, the one .clang-format describes (tabs, struct names without typedefs);
# no banned functions, no trailing white space. engine/: lines of at most 120 columns, every
# file starts with a one-line comment saying what it is.
cd "$(dirname "$0")/.."
pass=0; fail=0
check() { # name, command producing offending lines (empty = ok)
	local out; out=$(eval "$2")
	if [ -z "$out" ]; then pass=$((pass + 1)); echo "ok - $1"
	else fail=$((fail + 1)); echo "not ok - $1"; echo "$out" | head -20 | sed 's/^/#   /'; fi
}
C="engine/*.c engine/*.h examples/sandbox/*.c examples/sandbox/*.h examples/game-server/*.c examples/epoll-game/*.c examples/uv-game/*.c examples/game-common/*.c examples/game-common/*.h"
C="$C tests/unit/*.c tests/unit/*.h tests/tools/*.c tests/fuzz/*.c tests/bench/*.c tests/embed/*.c tests/*.h tests/crash/*.[ch] tests/faults/*.c"
check "no sprintf, strcpy, strcat, gets, atoi, atol or system in C" \
	"grep -nE '\\b(sprintf|vsprintf|strcpy|strcat|gets|atoi|atol|system)\\s*\\(' $C | grep -v '^\\s*\\*' | grep -vE '(snprintf|vsnprintf)'"
check "no trailing white space in C and Lua" \
	"grep -nE '[[:space:]]+\$' $C lualib/*.lua lualib/*/*.lua scripts/*.lua"
check "engine lines are at most 120 columns" \
	"awk 'length(\$0) > 120 { print FILENAME \":\" FNR }' engine/*.c engine/*.h"
check "every engine file says what it is on its first line" \
	"for f in engine/*.c engine/*.h; do head -1 \"\$f\" | grep -qE '^/\\* [a-z_]+\\.[ch] — ' || echo \"\$f\"; done"
check "no raw malloc of Lua memory outside the jail allocator (lua_newstate only in jail.c)" \
	"grep -n 'lua_newstate' engine/*.c | grep -v '^engine/jail.c'"
check "C is formatted as .clang-format says (clang-format -i to fix)" \
	"clang-format --dry-run $C 2>&1 | grep -E '(warning|error):' | sed 's/: warning: code should be clang-formatted.*//' | sort -u"
check "no typedef'd structs or enums in C (write struct x, enum x)" \
	"grep -nE '^typedef (struct|enum)' $C"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
