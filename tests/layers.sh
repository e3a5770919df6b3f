#!/usr/bin/env bash
# tests/layers.sh — the engine's calls go one way: a file may include and call only files of lower layers.
#
# LAYERS lists engine/'s modules bottom-up (a module is name.c with name.h). Each module may
# `#include "x.h"` and call functions of modules listed before it, never after. Includes are
# read from the source; calls from the objects' symbol tables (nm), so a call through any
# header, macro or prototype is seen. Usage: tests/layers.sh [ENGINE_DIR [OBJ_DIR]].
# Prints ok / not ok lines and "N passed, N failed"; exits non-zero on a back edge.
set -u
cd "$(dirname "$0")/.."
ENGINE=${1:-engine}
OBJ=${2:-${BUILD:-build}/obj}

LAYERS="clock log json crypto pattern jail metrics config wechatpay bill engine gen coro checkpoint pg pgdb store secure fetch jobs
        http wxclient host script reload admin routes thread drive paygate board master daemon main"

pass=0; fail=0
report() { # name, offending lines (empty = ok)
	if [ -z "$2" ]; then pass=$((pass + 1)); echo "ok - $1"
	else fail=$((fail + 1)); echo "not ok - $1"; echo "$2" | head -30 | sed 's/^/#   /'; fi
}

declare -A rank
i=0
for m in $LAYERS; do rank[$m]=$i; i=$((i + 1)); done

# Every engine file belongs to a declared layer (a new file must be placed in LAYERS).
unplaced=""
for f in "$ENGINE"/*.c "$ENGINE"/*.h; do
	m=$(basename "${f%.[ch]}")
	[ -n "${rank[$m]+x}" ] || unplaced+="$f is in no layer (add it to LAYERS in tests/layers.sh)"$'\n'
done
report "every engine file has a declared layer" "${unplaced%$'\n'}"

# Includes point down: #include "x.h" in module m needs rank(x) <= rank(m) (equal: its own header).
up=""
for f in "$ENGINE"/*.c "$ENGINE"/*.h; do
	m=$(basename "${f%.[ch]}")
	[ -n "${rank[$m]+x}" ] || continue
	while IFS=: read -r line inc; do
		x=${inc%.h}
		[ -n "${rank[$x]+x}" ] || continue
		[ "${rank[$x]}" -le "${rank[$m]}" ] || up+="$f:$line includes $inc (layer $x is above $m)"$'\n'
	done < <(grep -n '^#include "' "$f" | sed 's/^\([0-9]*\):#include "\([a-z_]*\.h\)".*/\1:\2/')
done
report "every #include in engine/ points down the layers" "${up%$'\n'}"

# Calls point down: a symbol that m.o uses and n.o defines needs rank(n) < rank(m).
if ls "$OBJ"/*.o >/dev/null 2>&1; then
	defs=$(for o in "$OBJ"/*.o; do nm --defined-only -g "$o" | awk -v m="$(basename "${o%.o}")" '$2 ~ /[TDBR]/ { print $3, m }'; done | sort)
	uses=$(for o in "$OBJ"/*.o; do nm -u "$o" | awk -v m="$(basename "${o%.o}")" '{ print $2, m }'; done | sort)
	back=$(join <(echo "$uses") <(echo "$defs") | while read -r sym user owner; do
		[ "$user" = "$owner" ] && continue
		[ -n "${rank[$user]+x}" ] && [ -n "${rank[$owner]+x}" ] || continue
		[ "${rank[$owner]}" -lt "${rank[$user]}" ] || echo "$user calls $sym of $owner (a higher layer)"
	done)
	report "every call in engine/ points down the layers" "$back"
else
	report "every call in engine/ points down the layers" "no objects in $OBJ: build first (make)"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
