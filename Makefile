# paygate — build, run, test.  `make run` and `make test` each do the whole set-up.

PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    := build
PKGS     := lua5.4 lua5.4-cjson libevent libcurl libcrypto sqlite3 zlib libpq
# Debian package that provides each pkg-config name above, in the same order.
DEB_PKGS := liblua5.4-dev lua-cjson-dev libevent-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev zlib1g-dev libpq-dev
TOOLS_DEB := pkg-config gcc make nodejs npm wrk sqlite3

CC       ?= cc
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CPPFLAGS += -D_GNU_SOURCE -Iengine
DEPCFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# lua-cjson is linked statically (liblua5.4-cjson.a) so the binary needs no Lua C modules at run time.
DEPLIBS   = -Wl,-Bstatic -llua5.4-cjson -Wl,-Bdynamic \
            $(shell pkg-config --libs lua5.4 libevent libcurl libcrypto sqlite3 zlib libpq 2>/dev/null) -lm

# The library is every engine file but the daemon's (main.c, and DAEMON_SRC: the master, its
# workers' board, options and signals), which the binaries add.
DAEMON_SRC := engine/daemon.c engine/master.c engine/board.c
DAEMON_OBJ := $(DAEMON_SRC:engine/%.c=$(BUILD)/obj/%.o)
ENGINE_SRC := $(filter-out engine/main.c $(DAEMON_SRC),$(wildcard engine/*.c))
ENGINE_OBJ := $(ENGINE_SRC:engine/%.c=$(BUILD)/obj/%.o)
# WeChat Pay's side of the protocol (examples/sandbox/): only in paygate-sandbox and the tests.
SANDBOX_SRC := $(wildcard examples/sandbox/*.c)
SANDBOX_OBJ := $(patsubst examples/sandbox/%.c,$(BUILD)/sandbox/%.o,$(filter-out examples/sandbox/main.c,$(SANDBOX_SRC)))
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test check bench bench-bills crash chaos fuzz faults clean sanitize install uninstall

all: deps $(BUILD)/paygate $(BUILD)/paygate-sandbox $(BUILD)/libpaygate.so

# ---- dependencies: install what is missing (root) or say exactly what to run ----
deps: $(BUILD)/.deps-ok
$(BUILD)/.deps-ok:
	@missing=""; \
	set -- $(DEB_PKGS); for pc in $(PKGS); do \
	  pkg-config --exists $$pc 2>/dev/null || missing="$$missing $$1"; shift; done; \
	for t in pkg-config gcc make; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing packages; run:  sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/obj/%.o: engine/%.c $(wildcard engine/*.h) | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) -fPIC -c $< -o $@

$(BUILD)/libpaygate.a: $(ENGINE_OBJ)
	ar rcs $@ $^

$(BUILD)/sandbox/%.o: examples/sandbox/%.c $(wildcard examples/sandbox/*.h) $(wildcard engine/*.h) | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Iexamples/sandbox $(CFLAGS) $(WARN) $(DEPCFLAGS) -c $< -o $@

$(BUILD)/libwxsandbox.a: $(SANDBOX_OBJ)
	ar rcs $@ $^

# ---- the embedding library: libpaygate.so exports paygate_* only (engine/libpaygate.map);
# the installed libpaygate.a is one relinked object whose other symbols are made local,
# so a host program's own log_init or config_load never meets ours. (build/libpaygate.a keeps
# every symbol: the unit tests link to the internals.) ----
VERSION := $(shell sed -n 's/^\#define PAYGATE_VERSION  *"\(.*\)"/\1/p' engine/paygate.h)
SONAME  := libpaygate.so.0

# Debian's liblua5.4-cjson.a is not position-independent: the shared library links its .so.
$(BUILD)/$(SONAME): $(ENGINE_OBJ) engine/libpaygate.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=engine/libpaygate.map -Wl,--no-undefined \
	  $(CFLAGS) $(ENGINE_OBJ) -llua5.4-cjson $(filter-out -Wl%,$(filter-out -llua5.4-cjson,$(DEPLIBS))) -o $@

$(BUILD)/libpaygate.so: $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

$(BUILD)/embed/libpaygate.a: $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	ld -r -o $(BUILD)/embed/paygate.o $(ENGINE_OBJ)
	objcopy --wildcard --keep-global-symbol='paygate_*' $(BUILD)/embed/paygate.o
	rm -f $@ && ar rcs $@ $(BUILD)/embed/paygate.o

$(BUILD)/paygate: engine/main.c $(DAEMON_OBJ) $(BUILD)/libpaygate.a
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $^ $(DEPLIBS) -o $@

# The local WeChat Pay sandbox: the same daemon plus WeChat Pay's side (TEST ONLY).
$(BUILD)/paygate-sandbox: $(BUILD)/sandbox/main.o $(DAEMON_OBJ) $(BUILD)/libwxsandbox.a $(BUILD)/libpaygate.a
	$(CC) $(CFLAGS) $^ $(DEPLIBS) -o $@

TEST_LIBS = $(BUILD)/libwxsandbox.a $(BUILD)/libpaygate.a

$(BUILD)/tests/%: tests/unit/%.c $(TEST_LIBS) tests/unit/unit.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Iexamples/sandbox -Itests/unit $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(TEST_LIBS) $(DEPLIBS) -o $@

$(BUILD)/tests/wxp_tool: tests/tools/wxp_tool.c $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Iexamples/sandbox $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(TEST_LIBS) $(DEPLIBS) -o $@

# The daemon on a VFS that can cut the power (tests/crash/): the durability specs' gateway.
$(BUILD)/tests/paygate-crash: tests/crash/main.c tests/crash/crashvfs.c tests/crash/crashvfs.h tests/single_daemon.h \
                              $(DAEMON_OBJ) $(BUILD)/libpaygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests/crash $(CFLAGS) $(WARN) $(DEPCFLAGS) tests/crash/main.c tests/crash/crashvfs.c \
	  $(DAEMON_OBJ) $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

# The daemon whose Nth SQLite write, read, commit or allocation fails (tests/faults/): the fault sweep's gateway.
$(BUILD)/tests/paygate-faults: tests/faults/main.c tests/single_daemon.h $(DAEMON_OBJ) $(BUILD)/libpaygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(DAEMON_OBJ) $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

# The notification fuzz target, built as a corpus replayer (libFuzzer build: `make fuzz`).
$(BUILD)/tests/fuzz_notify: tests/fuzz/fuzz_notify.c $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Iexamples/sandbox $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(TEST_LIBS) $(DEPLIBS) -o $@

# The other fuzz targets (tests/fuzz/fuzz_*.c), built as corpus replayers for `make test`.
FUZZ_TARGETS := json config http lua_args
FUZZ_REPLAY  := $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz_%)
$(BUILD)/tests/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.h tests/fuzz/fixture.h $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -Wno-missing-prototypes $(DEPCFLAGS) $< $(TEST_LIBS) $(DEPLIBS) -o $@

# ---- faults: every SQLite write, read and commit of a purchase failing in turn, allocations at a stride ----
faults: all $(BUILD)/tests/paygate-faults
	PAYGATE_FAULTS_BIN=$(CURDIR)/$(BUILD)/tests/paygate-faults FAULT_SWEEP=full node --test --test-reporter=tap --test-timeout=3600000 tests/e2e/faults.test.mjs

# ---- fuzz: libFuzzer + ASan/UBSan, each target for FUZZ_SECONDS ----
FUZZ_SECONDS ?= 60
FUZZ_CC := clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DPAYGATE_LIBFUZZER
fuzz: deps
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq clang >/dev/null; }
	@mkdir -p $(BUILD)/fuzz-corpus/notify $(FUZZ_TARGETS:%=$(BUILD)/fuzz-corpus/%)
	$(FUZZ_CC) $(CPPFLAGS) -Iexamples/sandbox $(DEPCFLAGS) -o $(BUILD)/fuzz_notify_lf \
	  tests/fuzz/fuzz_notify.c engine/wechatpay.c engine/crypto.c examples/sandbox/wxserver.c $$(pkg-config --libs libcrypto)
	$(BUILD)/fuzz_notify_lf -max_total_time=$(FUZZ_SECONDS) $(BUILD)/fuzz-corpus/notify tests/fuzz/corpus/notify
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  $(FUZZ_CC) $(CPPFLAGS) $(DEPCFLAGS) -o $(BUILD)/fuzz_$${t}_lf tests/fuzz/fuzz_$$t.c $(ENGINE_SRC) $(DEPLIBS) \
	    || exit 1; \
	  ASAN_OPTIONS=detect_leaks=0 $(BUILD)/fuzz_$${t}_lf -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
	    -artifact_prefix=$(BUILD)/fuzz-$$t- \
	    $(BUILD)/fuzz-corpus/$$t tests/fuzz/corpus/$$t || exit 1; \
	done

# ---- run: the gateway with demo scripts on 127.0.0.1 ----
run: all
	@command -v openssl >/dev/null && command -v curl >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get install -y -qq openssl curl >/dev/null; }
	@PAYGATE_BIN=$(CURDIR)/$(BUILD)/paygate examples/run-demo.sh

# make check [CONFIG=path]: load any config and its scripts, report errors (the demo's by default).
CONFIG ?= examples/paygate.conf.lua
check: all
	@if [ "$(CONFIG)" = examples/paygate.conf.lua ]; then examples/sandbox/keys.sh var/sandbox >/dev/null; fi
	./$(BUILD)/paygate --config "$(CONFIG)" --check

# ---- tests: C units, Lua units, end-to-end over real HTTP; ends with "N passed, N failed" ----
test: all $(UNIT_BIN) $(BUILD)/tests/wxp_tool $(BUILD)/tests/fuzz_notify $(FUZZ_REPLAY) $(BUILD)/tests/paygate-crash $(BUILD)/tests/paygate-faults
	@command -v node >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nodejs >/dev/null; }
	@command -v lua5.4 >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq lua5.4 >/dev/null; }
	@command -v clang-format >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq clang-format >/dev/null; }
	@command -v sqlite3 >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq sqlite3 >/dev/null; }
	@pkg-config --exists libuv || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq libuv1-dev >/dev/null; } || true
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || true
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || true
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || true
	@BUILD=$(BUILD) tests/run.sh

# ---- crash: the power-cut durability specs with many seeds (make test runs seeds 1,2,3) ----
SEEDS ?= 50
crash: all $(BUILD)/tests/paygate-crash
	@CRASH_SEEDS=$$(seq -s, 1 $(SEEDS)) PAYGATE_BIN=$(CURDIR)/$(BUILD)/paygate \
	  PAYGATE_SANDBOX_BIN=$(CURDIR)/$(BUILD)/paygate-sandbox PAYGATE_CRASH_BIN=$(CURDIR)/$(BUILD)/tests/paygate-crash \
	  node --test --test-reporter=spec --test-timeout=3600000 tests/e2e/crash.test.mjs

# ---- chaos: a seeded storm with WeChat's faults and kill -9 of the gateway and the sandbox, then the
# invariants from both databases; seeds 1..SEEDS (make test runs 1,2,3 with a 2.5 s storm), or
# SEED=n alone (the replay a failing seed prints) ----
CHAOS_STORM_MS ?= 6000
chaos: all
	@command -v sqlite3 >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq sqlite3 >/dev/null; }
	@CHAOS_SEEDS=$${SEED:-$$(seq -s, 1 $(SEEDS))} CHAOS_STORM_MS=$(CHAOS_STORM_MS) PAYGATE_BIN=$(CURDIR)/$(BUILD)/paygate \
	  PAYGATE_SANDBOX_BIN=$(CURDIR)/$(BUILD)/paygate-sandbox \
	  node --test --test-reporter=spec --test-timeout=3600000 tests/e2e/chaos.test.mjs

# ---- benchmark: trivial JSON route and one SQLite write vs a bare evhttp baseline; the shop's routes
# against the OpenResty peer (PAYGATE_PEERS, default ../shared/peers) ----
$(BUILD)/bench/bare_evhttp: tests/bench/bare_evhttp.c | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(DEPLIBS) -o $@

bench: all $(BUILD)/bench/bare_evhttp
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; }
	@tests/bench/run.sh
	@echo
	@tests/bench/shop.sh

# A 200,000-line trade bill read by engine/bill.c and lualib/wechatpay/bills.lua (N=... for another size).
$(BUILD)/tests/bill_bench: tests/bench/bill_bench.c $(BUILD)/obj/bill.o
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $^ $(DEPLIBS) -o $@

bench-bills: $(BUILD)/tests/bill_bench
	@N=$${N:-200000} $(BUILD)/tests/bill_bench lualib tests/bench/bills.lua

# ---- sanitizers: the whole suite under ASan + UBSan ----
sanitize:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

# ---- install: PREFIX (default /usr/local) and DESTDIR (staging) as usual ----
BINDIR     = $(PREFIX)/bin
LIBDIR     = $(PREFIX)/lib
INCLUDEDIR = $(PREFIX)/include
DATADIR    = $(PREFIX)/share/paygate
MAN1DIR    = $(PREFIX)/share/man/man1

install: all $(BUILD)/embed/libpaygate.a
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) \
	  $(DESTDIR)$(DATADIR) $(DESTDIR)$(MAN1DIR)
	install -m 755 $(BUILD)/paygate $(DESTDIR)$(BINDIR)/paygate
	install -m 644 $(BUILD)/embed/libpaygate.a $(DESTDIR)$(LIBDIR)/libpaygate.a
	install -m 755 $(BUILD)/$(SONAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libpaygate.so
	install -m 644 engine/paygate.h $(DESTDIR)$(INCLUDEDIR)/paygate.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' paygate.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/paygate.pc
	rm -rf $(DESTDIR)$(DATADIR)/lualib $(DESTDIR)$(DATADIR)/scripts
	cp -R lualib $(DESTDIR)$(DATADIR)/lualib
	cp -R scripts $(DESTDIR)$(DATADIR)/scripts
	rm -rf $(DESTDIR)$(DATADIR)/console && cp -R console $(DESTDIR)$(DATADIR)/console
	chmod -R u=rwX,go=rX $(DESTDIR)$(DATADIR)
	install -m 644 man/paygate.1 $(DESTDIR)$(MAN1DIR)/paygate.1

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/paygate $(DESTDIR)$(LIBDIR)/libpaygate.a $(DESTDIR)$(LIBDIR)/$(SONAME) \
	  $(DESTDIR)$(LIBDIR)/libpaygate.so $(DESTDIR)$(INCLUDEDIR)/paygate.h \
	  $(DESTDIR)$(LIBDIR)/pkgconfig/paygate.pc $(DESTDIR)$(MAN1DIR)/paygate.1
	rm -rf $(DESTDIR)$(DATADIR)

clean:
	rm -rf build build-asan
