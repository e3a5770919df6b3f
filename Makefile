# paygate — build, run, test.  `make run` and `make test` each do the whole set-up.

PREFIX   ?= /usr/local
BUILD    := build
PKGS     := lua5.4 lua5.4-cjson libevent libcurl libcrypto sqlite3
# Debian package that provides each pkg-config name above, in the same order.
DEB_PKGS := liblua5.4-dev lua-cjson-dev libevent-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev
TOOLS_DEB := pkg-config gcc make nodejs npm wrk

CC       ?= cc
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CPPFLAGS += -D_GNU_SOURCE -Iengine
DEPCFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# lua-cjson is linked statically (liblua5.4-cjson.a) so the binary needs no Lua C modules at run time.
DEPLIBS   = -Wl,-Bstatic -llua5.4-cjson -Wl,-Bdynamic \
            $(shell pkg-config --libs lua5.4 libevent libcurl libcrypto sqlite3 2>/dev/null) -lm

ENGINE_SRC := $(filter-out engine/main.c,$(wildcard engine/*.c))
ENGINE_OBJ := $(ENGINE_SRC:engine/%.c=$(BUILD)/obj/%.o)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test check bench fuzz clean sanitize

all: deps $(BUILD)/paygate

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

$(BUILD)/paygate: engine/main.c $(BUILD)/libpaygate.a
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libpaygate.a tests/unit/unit.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

$(BUILD)/tests/wxp_tool: tests/tools/wxp_tool.c $(BUILD)/libpaygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

# The notification fuzz target, built as a corpus replayer (libFuzzer build: `make fuzz`).
$(BUILD)/tests/fuzz_notify: tests/fuzz/fuzz_notify.c $(BUILD)/libpaygate.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(BUILD)/libpaygate.a $(DEPLIBS) -o $@

# ---- fuzz: libFuzzer + ASan/UBSan on the notification path, bounded time ----
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq clang >/dev/null; }
	@mkdir -p $(BUILD)/fuzz-corpus
	clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -DPAYGATE_LIBFUZZER $(CPPFLAGS) $(DEPCFLAGS) -o $(BUILD)/fuzz_notify_lf \
	  tests/fuzz/fuzz_notify.c engine/wechatpay.c engine/crypto.c $$(pkg-config --libs libcrypto)
	$(BUILD)/fuzz_notify_lf -max_total_time=$(FUZZ_SECONDS) $(BUILD)/fuzz-corpus tests/fuzz/corpus/notify

# ---- run: the gateway with demo scripts on 127.0.0.1 ----
run: all
	@mkdir -p var
	./$(BUILD)/paygate --config examples/paygate.conf.lua

check: all
	@mkdir -p var
	./$(BUILD)/paygate --config examples/paygate.conf.lua --check

# ---- tests: C units, Lua units, end-to-end over real HTTP; ends with "N passed, N failed" ----
test: all $(UNIT_BIN) $(BUILD)/tests/wxp_tool $(BUILD)/tests/fuzz_notify
	@command -v node >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nodejs >/dev/null; }
	@command -v lua5.4 >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq lua5.4 >/dev/null; }
	@BUILD=$(BUILD) tests/run.sh

# ---- benchmark: trivial JSON route and one SQLite write vs a bare evhttp baseline ----
$(BUILD)/bench/bare_evhttp: tests/bench/bare_evhttp.c | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(DEPCFLAGS) $< $(DEPLIBS) -o $@

bench: all $(BUILD)/bench/bare_evhttp
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; }
	@tests/bench/run.sh

# ---- sanitizers: the whole suite under ASan + UBSan ----
sanitize:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

clean:
	rm -rf build build-asan
