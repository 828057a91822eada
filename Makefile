# nerve — build, test, run, bench.
#
#   make            build ./nerve (installs missing Debian packages when root)
#   make test       unit + integration tests against a throwaway redis-server
#   make run        nerve serve with config/nerve.yaml (starts a local redis
#                   on a free port when REDIS_URL is unset and none answers)
#   make reload     reload the nerve of make run and report the outcome
#   make bench      benchmark suite (tests/bench/README.md)
#   make bench-cluster  sales on one Redis and on Redis Clusters of 1 and 3 nodes
#   make asan       the test suite built with ASan + UBSan
#   make fuzz       libFuzzer targets (tests/fuzz/README.md)
#   make lint       clang-format --dry-run over engine/ and include/ (.clang-format)
#   make clean
#
# Each target first installs the Debian packages its steps need (as root;
# otherwise it prints the apt-get line and stops): the build packages before
# any compile, cmocka before any test object, redis before `make run` and the
# tests run (postgresql too: the ledger tests start one), wrk before the
# bench, clang before the fuzz build, clang-format before lint. tests/deps/test_make_deps.sh checks that order.

CC        ?= cc
OPT       ?= -O2
SANITIZER ?=
BUILD     ?= build
# The binary: ./nerve by default; sanitizer builds put theirs in their BUILD dir.
BIN       ?= nerve

PKGS      := hiredis lua5.4 yaml-0.1 libcjson libcurl libcrypto sqlite3 libpq libsystemd
WARN      := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS    += -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -MMD -MP -Iinclude -pthread
LDLIBS    += -lcivetweb -lm -pthread

ifneq ($(SANITIZER),)
CFLAGS    += -fsanitize=$(SANITIZER) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS   += -fsanitize=$(SANITIZER)
endif

# Debian packages, by what needs them: compiling anything (build; the
# ledger links SQLite and libpq), the tests (cmocka to compile them, redis
# and a real PostgreSQL to run them, chromium driven by python3-selenium for
# the status page's browser test), make run, the bench (wrk, redis, PostgreSQL
# for the ledger row on PostgreSQL),
# make lint. make fuzz's are DEB_FUZZ, below.
DEB_BUILD := gcc make pkg-config libhiredis-dev liblua5.4-dev libyaml-dev \
             libcivetweb-dev libcjson-dev libcurl4-openssl-dev libssl-dev \
             libsqlite3-dev libpq-dev libsystemd-dev
DEB_REDIS := redis-server redis-tools
DEB_TEST  := libcmocka-dev postgresql $(DEB_REDIS) chromium chromium-driver python3-selenium \
             redis-sentinel
DEB_BENCH := wrk postgresql $(DEB_REDIS)
DEB_LINT  := clang-format

# pkg-config is only consulted once the packages are there (see deps).
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

ENGINE_SRC := $(filter-out engine/main.c,$(wildcard engine/*.c))
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ   := $(BUILD)/engine/main.o
LIB        := $(BUILD)/libnerve.a

UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HARN_SRC   := $(wildcard tests/integration/harness*.c)
HARN_OBJ   := $(HARN_SRC:%.c=$(BUILD)/%.o)
INTEG_SRC  := $(wildcard tests/integration/test_*.c)
INTEG_BIN  := $(INTEG_SRC:tests/integration/%.c=$(BUILD)/tests/%)
BENCH_SRC  := $(wildcard tests/bench/*.c)
BENCH_BIN  := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)

LINT_SRC   := $(wildcard engine/*.c engine/*.h include/nerve/*.h)

# One stamp per package list: a compile or run has its list's stamp as an
# order-only prerequisite, so the packages are there before it starts and
# installing them never makes anything out of date.
DEPS_STAMP  := $(BUILD)/.deps-build
TDEPS_STAMP := $(BUILD)/.deps-test
RDEPS_STAMP := $(BUILD)/.deps-run
BDEPS_STAMP := $(BUILD)/.deps-bench
LDEPS_STAMP := $(BUILD)/.deps-lint
# A stamp is redone (a dpkg-query per package) whenever dpkg's database or
# this Makefile changed since, so a package removed after the stamp was made,
# or one added to a list, is noticed by the next make.
DPKG_STATUS  ?= /var/lib/dpkg/status
STAMP_INPUTS := $(wildcard $(DPKG_STATUS)) $(lastword $(MAKEFILE_LIST))

.PHONY: all deps deps-test deps-bench test unit integration run reload bench bench-cluster asan valgrind fuzz lint clean
.DEFAULT_GOAL := all
# Keep test and bench objects between runs (they are intermediate files).
.SECONDARY:
# A recipe that fails or is interrupted leaves no half-written target (an
# archive cut short by Ctrl-C would otherwise look up to date).
.DELETE_ON_ERROR:

all: $(BIN)

# --- Debian packages -------------------------------------------------------
# install_pkgs LIST: install what dpkg does not report as installed, when we are
# root; otherwise print the exact command and fail. flock: two lists installed
# at once (make -j test bench) would otherwise race for dpkg's lock.
define install_pkgs
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    flock /tmp/nerve-apt.lock sh -c "apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing" >&2 || exit 1; \
	  else \
	    echo "deps: missing Debian packages; run as root:"; \
	    echo "  apt-get update && apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

# Test objects include the engine's headers too (hiredis, cJSON...), and the
# fuzz build needs them as well: those stamps come after the build one.
$(DEPS_STAMP): $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_BUILD))
	@mkdir -p $(@D) && touch $@
$(TDEPS_STAMP): $(DEPS_STAMP) $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_TEST))
	@mkdir -p $(@D) && touch $@
$(RDEPS_STAMP): $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_REDIS))
	@mkdir -p $(@D) && touch $@
$(BDEPS_STAMP): $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_BENCH))
	@mkdir -p $(@D) && touch $@
$(LDEPS_STAMP): $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_LINT))
	@mkdir -p $(@D) && touch $@

deps: $(DEPS_STAMP)
deps-test: $(TDEPS_STAMP)
deps-bench: $(BDEPS_STAMP)

# --- build -----------------------------------------------------------------
$(BIN): $(MAIN_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(LDLIBS)

$(LIB): $(ENGINE_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

# PKG_CFLAGS is expanded when a recipe runs, after its stamp: pkg-config and
# the .pc files are part of the build packages.
define compile
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<
endef

# Engine and bench objects need the build packages; unit and integration
# test objects (and the harness) include cmocka.h: the test packages first.
# make picks the most specific pattern.
$(BUILD)/%.o: %.c | $(DEPS_STAMP)
	$(compile)
$(BUILD)/tests/unit/%.o: tests/unit/%.c | $(TDEPS_STAMP)
	$(compile)
$(BUILD)/tests/integration/%.o: tests/integration/%.c | $(TDEPS_STAMP)
	$(compile)

# The status page's files are embedded with .incbin (engine/webui.c), which
# -MMD does not see.
$(BUILD)/engine/webui.o: $(wildcard engine/status/*)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB) | $(TDEPS_STAMP)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/integration/%.o $(HARN_OBJ) $(LIB) | $(TDEPS_STAMP)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka $(LDLIBS)

# The sale core (parse, lock, commit) alone: exactly these objects, with
# hiredis and cJSON and no Lua, libcurl, libyaml or CivetWeb. That it links
# is the test that the sale path depends on nothing above it.
SALE_CORE_OBJ := $(patsubst %,$(BUILD)/engine/%.o,sale mux park keys lock rds rds_cluster cluster sentinel backoff clock tslot jsonck log sku hist salewin)
CORE_BIN      := $(BUILD)/tests/test_sale_core
$(BUILD)/tests/core/%.o: tests/core/%.c | $(TDEPS_STAMP)
	$(compile)
$(CORE_BIN): $(BUILD)/tests/core/test_sale_core.o $(SALE_CORE_OBJ) | $(TDEPS_STAMP)
	$(CC) $(LDFLAGS) -o $@ $^ -lhiredis -lcjson -lcmocka -lm -pthread

$(BUILD)/bench/%: $(BUILD)/tests/bench/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(LDLIBS)

# --- run, test, bench --------------------------------------------------------
# tests/deps/test_make_deps.sh runs this Makefile in a scratch copy with
# stand-in apt-get, dpkg-query and compilers (a few seconds, no network).
test: $(BIN) $(UNIT_BIN) $(CORE_BIN) $(INTEG_BIN) | $(TDEPS_STAMP)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/run.sh $(UNIT_BIN) $(CORE_BIN) $(INTEG_BIN) \
	    tests/deps/test_make_deps.sh tests/deps_graph.sh tests/browser/test_status_page.sh

unit: $(UNIT_BIN)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/run.sh $(UNIT_BIN)

integration: $(BIN) $(INTEG_BIN) | $(TDEPS_STAMP)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/run.sh $(INTEG_BIN)

# make run builds quietly (one line when there is something to build; the
# compiler's output only when it fails) and writes its pidfile, which
# make reload (another terminal, the same ARGS) finds.
RUN_PIDFILE := $(BUILD)/nerve-run.pid
run: | $(RDEPS_STAMP)
	@mkdir -p $(BUILD)
	@$(MAKE) -q --no-print-directory $(BIN) 2>/dev/null || echo "make run: building ./$(BIN)..."
	@$(MAKE) -s --no-print-directory $(BIN) >$(BUILD)/run-build.log 2>&1 || \
	  { cat $(BUILD)/run-build.log; exit 1; }
	@NERVE_RUN_ARGS='$(ARGS)' exec tests/lib/run-local.sh ./$(BIN) serve -c config/nerve.yaml \
	  --set server.pidfile=$(RUN_PIDFILE) $(ARGS)

reload:
	@./$(BIN) reload -c config/nerve.yaml --set server.pidfile=$(RUN_PIDFILE) $(ARGS)

bench: $(BIN) $(BENCH_BIN) | $(BDEPS_STAMP)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/bench/run.sh

# Sales on one Redis and on Redis Clusters of 1 and 3 primaries (README,
# "Redis Cluster and Sentinel"): tests/bench/cluster.sh.
bench-cluster: $(BIN) | $(BDEPS_STAMP)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/bench/cluster.sh

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
# Reports of every process (test binaries and the daemons they start) go to
# files, and any report fails the run even when the test itself passed. The
# quarantine of freed memory is capped at 16 MiB (default 256) so that the
# bounded-memory tests measure nerve, not ASan's free list.
SAN_REPORTS := $(CURDIR)/build-asan/sanitizer-reports
asan:
	@rm -rf $(SAN_REPORTS) && mkdir -p $(SAN_REPORTS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16:log_path=$(SAN_REPORTS)/asan \
	 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SAN_REPORTS)/ubsan \
	 $(MAKE) BUILD=build-asan BIN=build-asan/nerve SANITIZER=address,undefined OPT=-O1 test; rc=$$?; \
	 if [ -n "$$(ls -A $(SAN_REPORTS))" ]; then \
	   echo "sanitizer reports:"; for f in $(SAN_REPORTS)/*; do echo "== $$f"; head -60 "$$f"; done; \
	   echo "0 passed, 1 failed"; exit 1; fi; \
	 exit $$rc

# Unit tests and a short daemon session under valgrind memcheck (zero leaks,
# zero errors, or it fails).
valgrind: $(BIN) $(UNIT_BIN) | $(TDEPS_STAMP)
	$(call install_pkgs,valgrind)
	@BUILD=$(BUILD) NERVE_BIN=$(abspath $(BIN)) tests/valgrind.sh $(UNIT_BIN)

# make lint: every file clang-format (Debian 12's, version 14) would change,
# with the number of places in each; `clang-format -i FILE...` fixes them.
lint: | $(LDEPS_STAMP)
	@clang-format --version | grep -q 'version 14\.' || \
	  echo "lint: warning: .clang-format is tuned for clang-format 14; this is $$(clang-format --version)"
	@out=$$(clang-format --dry-run --Werror $(LINT_SRC) 2>&1); rc=$$?; \
	if [ $$rc -ne 0 ]; then \
	  files=$$(printf '%s\n' "$$out" | sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' | uniq -c); \
	  if [ -z "$$files" ]; then printf '%s\n' "$$out"; exit $$rc; fi; \
	  echo "lint: not clang-formatted (places to change, file):"; printf '%s\n' "$$files"; \
	  echo "lint: $$(printf '%s\n' "$$files" | wc -l) files; fix with clang-format -i FILE..."; exit 1; \
	fi; \
	echo "lint: $(words $(LINT_SRC)) files clang-formatted"

# build-fuzz/ stays: it holds the fuzzers' corpus copies and crash artifacts.
clean:
	rm -rf build build-asan nerve $(BUILD) $(BIN)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# --- fuzzing -----------------------------------------------------------------
# make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="sale config rules event"]
# libFuzzer targets (tests/fuzz/README.md), built with clang + ASan + UBSan in
# build-fuzz/ (the engine too, with fuzzer-no-link coverage), each run for
# FUZZ_SECONDS on its corpus by tests/fuzz/run.sh, one process at a time, which
# prints execs, exec/s, coverage and corpus size per target. Saved inputs are
# replayed by tests/unit/test_fuzz_regressions.c in `make test`.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= sale config rules event
FUZZ_BUILD   := build-fuzz
FUZZ_SAN     := address,undefined
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) -MMD -MP -Iinclude -pthread \
                -fno-omit-frame-pointer -fno-sanitize-recover=all
DEB_FUZZ     := clang libclang-rt-14-dev
FUZZ_STAMP   := $(FUZZ_BUILD)/.deps-fuzz
FUZZ_OBJ     := $(ENGINE_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_LIB     := $(FUZZ_BUILD)/libnerve.a
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_STAMP): $(DEPS_STAMP) $(STAMP_INPUTS)
	$(call install_pkgs,$(DEB_FUZZ))
	@mkdir -p $(@D) && touch $@

$(FUZZ_BUILD)/%.o: %.c | $(FUZZ_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) $(PKG_CFLAGS) -c -o $@ $<

$(FUZZ_LIB): $(FUZZ_OBJ)
	@rm -f $@
	$(AR) rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB) | $(FUZZ_STAMP)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) $(PKG_CFLAGS) -o $@ $< \
	    $(FUZZ_LIB) $(PKG_LIBS) $(LDLIBS)

fuzz: $(FUZZ_BIN)
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_TARGETS)

ifneq ($(filter fuzz $(FUZZ_BUILD)/%,$(MAKECMDGOALS)),)
-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
endif
