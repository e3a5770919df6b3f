#!/usr/bin/env bash
# tests/embed/run.sh — libpaygate from the outside: install into a temporary prefix, build hosts with
# pkg-config, run four engines in one process, run the game-server examples end to end (libevent host; epoll and
# libuv hosts, paygate on its own thread or driven; under valgrind, and own-thread ones under ThreadSanitizer).
# Prints "ok - ..." / "not ok - ..." lines and a final "N passed, N failed". Bounded: < 3 minutes.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/paygate-embed.XXXXXX")
PREFIX=$WORK/prefix
PASS=0
FAIL=0
trap 'rm -rf "$WORK"' EXIT

ok() { PASS=$((PASS + 1)); echo "ok - $1"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $1"; [ -f "${2:-}" ] && tail -n 25 "$2" | sed 's/^/#   /'; }

# spec NAME COMMAND...: one check; the command's output goes to a log shown on failure.
spec() {
	local name=$1 log="$WORK/log.$((PASS + FAIL))"; shift
	if "$@" >"$log" 2>&1; then ok "$name"; else not_ok "$name" "$log"; fi
}

# suite NAME COMMAND...: a program printing its own ok/not ok lines and "N passed, N failed".
suite() {
	local name=$1 log="$WORK/suite.$((PASS + FAIL))" p f; shift
	"$@" >"$log" 2>"$log.stderr"
	local rc=$?
	grep -E '^(ok|not ok) - |^#' "$log"
	p=$(grep -cE '^ok - ' "$log"); f=$(grep -cE '^not ok - ' "$log")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1; echo "not ok - $name exited with $rc"; tail -n 25 "$log.stderr" | sed 's/^/#   /'
	fi
	PASS=$((PASS + p)); FAIL=$((FAIL + f))
}

# A clean make: nothing inherited from an outer make (sanitizer flags, another BUILD).
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CFLAGS -u BUILD make --no-print-directory -s "$@"; }

export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
WARN="-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror"

# ---- make install / uninstall ----

spec "make install PREFIX=... installs without errors" mk install PREFIX="$PREFIX"
spec "the prefix holds the binary, both libraries, the header, the .pc, lualib, scripts and the man page" \
	test -x "$PREFIX/bin/paygate" -a -f "$PREFIX/lib/libpaygate.a" -a -f "$PREFIX/lib/libpaygate.so.0" \
	     -a -L "$PREFIX/lib/libpaygate.so" -a -f "$PREFIX/include/paygate.h" -a -f "$PREFIX/lib/pkgconfig/paygate.pc" \
	     -a -f "$PREFIX/share/paygate/lualib/paygate.lua" -a -f "$PREFIX/share/paygate/scripts/init.lua" \
	     -a -f "$PREFIX/share/man/man1/paygate.1"
spec "pkg-config --cflags --libs paygate works from the installed .pc" \
	sh -c 'pkg-config --cflags --libs paygate | grep -q -- "-lpaygate" && pkg-config --modversion paygate | grep -qE "^[0-9]+\.[0-9]+"'
spec "the shared library exports paygate_* only" \
	sh -c "nm -D --defined-only '$PREFIX/lib/libpaygate.so.0' | awk '{print \$3}' | grep -v '^paygate_' | grep -q . && exit 1 || exit 0"
spec "the installed static library exports paygate_* only" \
	sh -c "nm -g --defined-only '$PREFIX/lib/libpaygate.a' | awk 'NF==3 {print \$3}' | grep -v '^paygate_' | grep -q . && exit 1 || exit 0"
# WeChat Pay's side of the protocol (signing as WeChat, encrypting notifications) lives in examples/sandbox/
# and is linked into build/paygate-sandbox only: the sandbox binary has it, the gateway never does.
WX_SIDE='wxsrv_sign_response|wxsrv_encrypt_resource|wxsrv_parse_authorization|wxsandbox_open'
spec "the sandbox binary holds WeChat Pay's side (signing as WeChat, encrypting resources)" \
	sh -c "test \$(nm '$ROOT/build/paygate-sandbox' | grep -cE '$WX_SIDE') -eq 4"
spec "the installed paygate, libpaygate.so and libpaygate.a hold none of WeChat Pay's side" \
	sh -c "! nm '$PREFIX/bin/paygate' '$PREFIX/lib/libpaygate.so.0' '$PREFIX/lib/libpaygate.a' 2>/dev/null | grep -E '$WX_SIDE'"
cat >"$WORK/header.c" <<'EOF'
#include <paygate.h>
static struct paygate *(*create)(struct event_base *, const struct paygate_options *, char *, size_t) = paygate_new;
int main(void) { struct paygate_options o = { 0 }; (void)o; return create == 0; }
EOF
cat >"$WORK/header.cc" <<'EOF'
#include <paygate.h>
static paygate_call_cb cb = nullptr;
int main() { paygate_options o{}; o.no_watch = 1; return cb != nullptr || !o.no_watch; }
EOF
spec "paygate.h compiles alone as C99 -pedantic and as C++" \
	sh -c "cc -std=c99 -pedantic $WARN \$(pkg-config --cflags paygate) -c '$WORK/header.c' -o '$WORK/h.o' &&
	       c++ -std=c++11 -Wall -Wextra -Werror \$(pkg-config --cflags paygate) -c '$WORK/header.cc' -o '$WORK/hh.o'"
spec "make install DESTDIR=... then make uninstall leaves no file behind" \
	sh -c "make_() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CFLAGS -u BUILD make --no-print-directory -s \"\$@\"; };
	       make_ install DESTDIR='$WORK/stage' PREFIX=/opt/pg && test -f '$WORK/stage/opt/pg/lib/pkgconfig/paygate.pc' &&
	       grep -q '^prefix=/opt/pg$' '$WORK/stage/opt/pg/lib/pkgconfig/paygate.pc' &&
	       make_ uninstall DESTDIR='$WORK/stage' PREFIX=/opt/pg && test -z \"\$(find '$WORK/stage' -type f -o -type l)\""

# ---- hosts built from the installed library ----

LUALIB=$(pkg-config --variable=lualibdir paygate)
spec "examples/game-server builds with pkg-config, without warnings" \
	sh -c "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s -C examples/game-server OUT='$WORK' \
	       CFLAGS='-O2 -g -Werror' && test -x '$WORK/game'"
spec "examples/epoll-game (a plain epoll loop, paygate on its own thread) builds with pkg-config, without warnings" \
	sh -c "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s -C examples/epoll-game OUT='$WORK' \
	       CFLAGS='-O2 -g -Werror' && test -x '$WORK/epoll-game'"
# examples/game-common/ (the inventory and host.deliver all three games share) counts as their own code.
NO_LIBEVENT='event2/|event_base|evhttp|bufferevent|evbuffer_'
spec "the epoll game's own code and the shared inventory use no libevent (only paygate.h and the C library)" \
	sh -c "! grep -nE '$NO_LIBEVENT' examples/epoll-game/game.c examples/game-common/inventory.[ch]"
if pkg-config --exists libuv; then
	spec "examples/uv-game (libuv: paygate on its own thread or driven by the libuv loop) builds, without warnings" \
		sh -c "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s -C examples/uv-game OUT='$WORK' \
		       CFLAGS='-O2 -g -Werror' && test -x '$WORK/uv-game' &&
		       ! grep -nE '$NO_LIBEVENT' examples/uv-game/game.c examples/game-common/inventory.[ch]"
else
	not_ok "libuv is installed (apt-get install libuv1-dev; make test installs it as root)"
fi
# The epoll game and libpaygate compiled with ThreadSanitizer (the engine from the tree, in its own build dir).
if cc -fsanitize=thread -x c -o "$WORK/tsan-probe" - <<<'int main(void){return 0;}' >/dev/null 2>&1; then
	spec "libpaygate and the epoll game build with -fsanitize=thread" \
		sh -c "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s BUILD='$WORK/tsan' \
		       CFLAGS='-O1 -g -fsanitize=thread' '$WORK/tsan/libpaygate.a' &&
		       cc -O1 -g -fsanitize=thread -Iengine -Iexamples/game-common -DPAYGATE_LUALIB='\"$LUALIB\"' \
		       \$(pkg-config --cflags lua5.4 libevent) examples/epoll-game/game.c examples/game-common/inventory.c \
		       '$WORK/tsan/libpaygate.a' -Wl,-Bstatic -llua5.4-cjson -Wl,-Bdynamic \
		       \$(pkg-config --libs lua5.4 libevent libcurl libcrypto sqlite3 zlib libpq) -lm -o '$WORK/epoll-game-tsan' &&
		       cc -O1 -g -fsanitize=thread -Iengine -DPAYGATE_LUALIB='\"$LUALIB\"' \$(pkg-config --cflags lua5.4 libevent) \
		       tests/embed/engines.c '$WORK/tsan/libpaygate.a' -Wl,-Bstatic -llua5.4-cjson -Wl,-Bdynamic \
		       \$(pkg-config --libs lua5.4 libevent libcurl libcrypto sqlite3 zlib libpq) -lm -o '$WORK/engines-tsan' &&
		       { ! pkg-config --exists libuv ||
		         cc -O1 -g -fsanitize=thread -Iengine -Iexamples/game-common -DPAYGATE_LUALIB='\"$LUALIB\"' \
		         \$(pkg-config --cflags lua5.4 libuv) examples/uv-game/game.c examples/game-common/inventory.c \
		         '$WORK/tsan/libpaygate.a' -Wl,-Bstatic -llua5.4-cjson -Wl,-Bdynamic \
		         \$(pkg-config --libs lua5.4 libevent libcurl libcrypto sqlite3 zlib libpq libuv) -lm -o '$WORK/uv-game-tsan'; }"
fi
# libpaygate.a linked statically, its dependencies dynamically (Debian ships no static libcurl
# dependencies, so `pkg-config --static` cannot link a fully static program there).
spec "tests/embed/engines.c links the installed static library (no shared libpaygate needed)" \
	sh -c "cc -O1 -g $WARN -DPAYGATE_LUALIB='\"$LUALIB\"' \$(pkg-config --cflags paygate) tests/embed/engines.c \
	       '$PREFIX/lib/libpaygate.a' \$(pkg-config --libs libevent lua5.4 libcurl libcrypto sqlite3 zlib libpq) \
	       -llua5.4-cjson -lm -o '$WORK/engines' &&
	       ! ldd '$WORK/engines' | grep -q libpaygate"

if [ -x "$WORK/engines" ]; then
	mkdir -p "$WORK/engines-run" "$WORK/engines-vg"
	suite "two engines in one process" "$WORK/engines" "$WORK/engines-run"
	if [ -x "$WORK/engines-tsan" ]; then
		mkdir -p "$WORK/engines-tsan-run"
		spec "ThreadSanitizer: own-thread engines, calls from four threads at once, register, reload, free: no report" \
			env TSAN_OPTIONS="exitcode=66 halt_on_error=0" "$WORK/engines-tsan" "$WORK/engines-tsan-run"
	fi
	if command -v valgrind >/dev/null; then
		spec "valgrind: two engines, calls both ways, reload, shutdown and free leak nothing" \
			valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
			"$WORK/engines" "$WORK/engines-vg"
	fi
fi

# ---- the game server against the WeChat Pay sandbox ----

if [ -x "$WORK/game" ] && examples/sandbox/keys.sh "$WORK/keys" >/dev/null 2>&1; then
	command -v valgrind >/dev/null || export SKIP_VALGRIND=1
	EXTRA=()
	[ -x "$WORK/epoll-game" ] && EXTRA+=(GAME_EPOLL="$WORK/epoll-game")
	[ -x "$WORK/epoll-game-tsan" ] && EXTRA+=(GAME_TSAN="$WORK/epoll-game-tsan")
	[ -x "$WORK/uv-game" ] && EXTRA+=(GAME_UV="$WORK/uv-game")
	[ -x "$WORK/uv-game-tsan" ] && EXTRA+=(GAME_TSAN_UV="$WORK/uv-game-tsan")
	suite "game server" env GAME="$WORK/game" "${EXTRA[@]}" SANDBOX="$ROOT/build/paygate-sandbox" LUALIB="$LUALIB" KEYS="$WORK/keys" \
		WORK="$WORK/game-run" timeout 235 node tests/embed/game.mjs
	[ "$FAIL" -eq 0 ] || cp -r "$WORK/game-run" "${BUILD:-build}/test-logs/embed-game-run" 2>/dev/null
else
	not_ok "the game server and the sandbox keys are there"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
