#!/usr/bin/env bash
# test_make_deps.sh -- each make target installs the Debian packages a step
# needs before that step runs (issue 10: on a fresh Debian 12, `make test`
# compiled tests/unit/test_config.c before libcmocka-dev was installed).
#
#   tests/deps/test_make_deps.sh          (make test runs it through tests/run.sh)
#
# Runs the real Makefile, in a scratch copy of the tree (source files by name
# only, empty), as a fresh machine would see it: stand-in programs first on
# PATH say that no package is installed (dpkg-query), that we are root (id),
# pretend to install (apt-get) and to compile (cc, gcc, clang, ar: they create
# the output file), and every one logs what it was asked, in order, to one
# file. tests/run.sh, tests/lib/run-local.sh, tests/bench/run.sh and
# tests/fuzz/run.sh of the copy only log that they ran. Then, for make, make
# test, make run, make bench, make asan, make fuzz and make lint, each started
# from a clean copy, it checks that every package a step needs was installed
# before the first such step, e.g. libcmocka-dev before the first compile of a
# tests/unit or tests/integration source. Make runs serially (-j1: its order
# is then fixed, so a missing edge shows on every run, not by chance) and once
# with -j8 (a missing edge that the serial order happens to hide can show).
# No network, no real apt, nothing outside a mktemp -d directory; a few seconds.
#
# Output is cmocka's summary format, one test per target, so run.sh counts it.

set -u
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nerve-deps.XXXXXX") || exit 1
[ -n "${KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT

# Debian packages as the issue and README name them (not read from the
# Makefile: the test says what must be true, the Makefile how).
BUILD_PKGS="gcc make pkg-config libhiredis-dev liblua5.4-dev libyaml-dev libcivetweb-dev
            libcjson-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev libpq-dev libsystemd-dev"
REDIS_PKGS="redis-server redis-tools"
# The ledger tests start a real PostgreSQL (issue 11), as they start redis.
PG_PKGS="postgresql"
FUZZ_PKGS="clang libclang-rt-14-dev"
# The status page's test drives a real browser (issue 14).
BROWSER_PKGS="chromium chromium-driver python3-selenium"
# test_sentinel.c starts Debian's redis-sentinel (issue 15).
SENTINEL_PKGS="redis-sentinel"

# The sources that need cmocka: those that include cmocka.h, directly or
# through a header of tests/ (harness.h), wherever they live.
cm_hdrs=$(cd "$root" && grep -rl --include='*.h' 'cmocka\.h' tests | xargs -r -n1 basename)
cm_re='cmocka\.h'
for h in $cm_hdrs; do cm_re+="|\"${h//./\\.}\""; done
cm_src=$(cd "$root" && grep -rlE --include='*.c' "#include *(<|\")?($cm_re)" tests | sort)
CMOCKA_COMPILE="^compile [^ ]+ ($(printf '%s\n' $cm_src | sed 's/\./\\./g' | paste -sd'|'))\$"

# --- stand-ins -------------------------------------------------------------
stub=$tmp/bin
mkdir -p "$stub"
log=$tmp/log

# Nothing is installed; or, when DEPS_STATE names a file, what it lists.
cat >"$stub/dpkg-query" <<'EOF'
#!/bin/sh
echo "dpkg-query $*" >>"$DEPS_LOG"
for pkg; do :; done
if [ -n "${DEPS_STATE:-}" ] && grep -qxF "$pkg" "$DEPS_STATE"; then
    printf 'install ok installed'
    exit 0
fi
exit 1
EOF
# Log "install PKG..." for `apt-get install`, then pretend it worked (and
# with DEPS_STATE, remember the packages and touch dpkg's database, as dpkg
# would).
cat >"$stub/apt-get" <<'EOF'
#!/bin/sh
echo "apt-get $*" >>"$DEPS_LOG"
if [ "$(echo " $* " | grep -c ' install ')" -gt 0 ]; then
    pkgs=""
    for a in "$@"; do
        case $a in -*|install) ;; *) pkgs="$pkgs $a" ;; esac
    done
    echo "install$pkgs" >>"$DEPS_LOG"
    if [ -n "${DEPS_STATE:-}" ]; then
        printf '%s\n' $pkgs >>"$DEPS_STATE"
        touch "$DPKG_STATUS"
    fi
fi
exit 0
EOF
cat >"$stub/id" <<'EOF'
#!/bin/sh
# root, so the Makefile takes its install branch.
[ "${1:-}" = -u ] && { echo 0; exit 0; }
exec /usr/bin/id "$@"
EOF
# cc, gcc, clang: log "compile TOOL SRC" per .c argument ("link TOOL OUT"
# when there is none) and create the -o file, so make carries on.
cat >"$stub/cc" <<'EOF'
#!/bin/sh
tool=$(basename "$0"); out=""; srcs=""; prev=""
for a in "$@"; do
    [ "$prev" = -o ] && out=$a
    case $a in *.c) srcs="$srcs $a" ;; esac
    prev=$a
done
if [ -n "$srcs" ]; then
    for s in $srcs; do echo "compile $tool $s" >>"$DEPS_LOG"; done
else
    echo "link $tool $out" >>"$DEPS_LOG"
fi
[ -n "$out" ] && : >"$out" && chmod +x "$out"
exit 0
EOF
chmod +x "$stub/cc"
ln -s cc "$stub/gcc"
ln -s cc "$stub/clang"
cat >"$stub/ar" <<'EOF'
#!/bin/sh
echo "ar $2" >>"$DEPS_LOG"
: >"$2"
EOF
cat >"$stub/pkg-config" <<'EOF'
#!/bin/sh
echo "pkg-config $*" >>"$DEPS_LOG"
exit 0
EOF
cat >"$stub/clang-format" <<'EOF'
#!/bin/sh
echo "clang-format $*" >>"$DEPS_LOG"
[ "${1:-}" = --version ] && echo "Debian clang-format version 14.0.6"
exit 0
EOF
chmod +x "$stub"/*

# --- the scratch tree --------------------------------------------------------
tree=$tmp/tree
mkdir -p "$tree"
cp "$root/Makefile" "$tree/"
[ -f "$root/.clang-format" ] && cp "$root/.clang-format" "$tree/"
(cd "$root" && find -H engine include tests config -type f \( -name '*.c' -o -name '*.h' -o -name '*.yaml' \) \
    -not -path 'tests/fuzz/corpus/*' -not -path 'tests/fuzz/regressions/*') |
    while read -r f; do mkdir -p "$tree/$(dirname "$f")" && : >"$tree/$f"; done
for s in tests/run.sh tests/lib/run-local.sh tests/bench/run.sh tests/fuzz/run.sh; do
    mkdir -p "$tree/$(dirname "$s")"
    printf '#!/bin/sh\necho "run %s" >>"$DEPS_LOG"\n' "$s" >"$tree/$s"
    chmod +x "$tree/$s"
done

# --- checks ------------------------------------------------------------------
why=""      # the reasons the current target failed, one per line

# first LINE_REGEX: line number of the first log line matching, or 0.
first() {
    grep -n -E -m1 "$1" "$log" | cut -d: -f1 | grep . || echo 0
}

# installed_before PKGS REGEX WHAT: each PKG has an install line before the
# first log line matching REGEX, which must be there.
installed_before() {
    local at p i
    at=$(first "$2")
    if [ "$at" -eq 0 ]; then
        why+="  no $3 in the log (expected one)"$'\n'
        return
    fi
    for p in $1; do
        i=$(first "^install( .*)? $p( |\$)")
        if [ "$i" -eq 0 ]; then
            why+="  $p never installed, needed by $3 (log line $at)"$'\n'
        elif [ "$i" -gt "$at" ]; then
            why+="  $p installed at log line $i, after $3 at line $at: $(sed -n "${at}p" "$log")"$'\n'
        fi
    done
}

# not_installed PKGS WHY: none of PKGS was installed.
not_installed() {
    local p
    for p in $1; do
        if [ "$(first "^install( .*)? $p( |\$)")" -ne 0 ]; then
            why+="  $p installed, but $2"$'\n'
        fi
    done
}

# run_make TARGET JOBS [VAR=VALUE...]: make TARGET in the scratch tree, with
# the stand-ins; a failure is a reason.
run_make() {
    local target=$1 jobs=$2 rc
    shift 2
    # env -i: nothing of the caller's make (MAKEFLAGS, BUILD, CC, CFLAGS...)
    # reaches this one.
    env -i PATH="$stub:$PATH" HOME="$tmp" DEPS_LOG="$log" DPKG_STATUS="$tmp/status" "$@" \
        make -C "$tree" --no-print-directory "$jobs" ${target:+"$target"} >"$tmp/make.out" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || why+="  make $target exited $rc: $(tail -3 "$tmp/make.out" | tr '\n' ' ')"$'\n'
}

# check TARGET: make TARGET in a clean copy, then the rules for TARGET.
check() {
    local target=$1 jobs=$2
    rm -rf "$tree"/build "$tree"/build-* "$tree/nerve"
    : >"$log"
    run_make "$target" "$jobs"

    # Everything is compiled after the build packages, pkg-config included.
    case $target in
        lint) ;;
        *) installed_before "$BUILD_PKGS" '^compile ' "the first compile"
           installed_before "pkg-config" '^pkg-config ' "the first pkg-config call" ;;
    esac
    case $target in
        "")
            installed_before "$BUILD_PKGS" '^compile [^ ]+ engine/' "the first engine compile"
            not_installed "libcmocka-dev $PG_PKGS wrk $FUZZ_PKGS clang-format $BROWSER_PKGS" "make only builds ./nerve" ;;
        test|asan)
            installed_before "libcmocka-dev" "$CMOCKA_COMPILE" \
                "the first compile of a source that includes cmocka.h"
            installed_before "libcmocka-dev $REDIS_PKGS $PG_PKGS $BROWSER_PKGS $SENTINEL_PKGS" '^run tests/run\.sh' "tests/run.sh"
            not_installed "wrk $FUZZ_PKGS" "make $target does not bench or fuzz" ;;
        run)
            installed_before "$REDIS_PKGS" '^run tests/lib/run-local\.sh' "tests/lib/run-local.sh"
            not_installed "libcmocka-dev $PG_PKGS wrk" "make run neither tests nor benches (SQLite is linked in)" ;;
        bench)
            installed_before "$BUILD_PKGS" '^compile [^ ]+ tests/bench/' "the first bench compile"
            installed_before "wrk $REDIS_PKGS $PG_PKGS" '^run tests/bench/run\.sh' "tests/bench/run.sh" ;;
        fuzz)
            installed_before "$BUILD_PKGS $FUZZ_PKGS" '^compile clang ' "the first clang compile"
            installed_before "$FUZZ_PKGS" '^run tests/fuzz/run\.sh' "tests/fuzz/run.sh" ;;
        lint)
            installed_before "clang-format" '^clang-format ' "the first clang-format call"
            not_installed "libcmocka-dev wrk $FUZZ_PKGS" "make lint compiles nothing" ;;
    esac
}

# check_removed: the stamps do not outlive the packages. make test installs
# everything; a second make test installs nothing; libcmocka-dev is removed
# (dpkg's database changes); the next make test installs it again.
check_removed() {
    local state=$tmp/installed
    rm -rf "$tree"/build "$tree"/build-* "$tree/nerve"
    : >"$state"
    touch "$tmp/status"
    : >"$log"; run_make test -j1 DEPS_STATE="$state"
    installed_before "libcmocka-dev" '^run tests/run\.sh' "tests/run.sh (first make test)"
    : >"$log"; run_make test -j1 DEPS_STATE="$state"
    if grep -q '^install' "$log"; then
        why+="  a second make test installed again: $(grep '^install' "$log" | tr '\n' ' ')"$'\n'
    fi
    grep -vxF libcmocka-dev "$state" >"$state.new"; mv "$state.new" "$state"
    touch "$tmp/status"
    : >"$log"; run_make test -j1 DEPS_STATE="$state"
    installed_before "libcmocka-dev" '^run tests/run\.sh' "tests/run.sh (after libcmocka-dev was removed)"
}

targets=("" test run bench asan fuzz lint)
total=$(( ${#targets[@]} * 2 + 1 ))
failed=()
echo "[==========] Running $total test(s)."
for jobs in -j1 -j8; do
    for t in "${targets[@]}"; do
        name="make $jobs${t:+ $t}"
        echo "[ RUN      ] $name"
        why=""
        check "$t" "$jobs"
        if [ -z "$why" ]; then
            echo "[       OK ] $name"
        else
            printf '%s' "$why"
            if [ -n "${KEEP:-}" ]; then
                cp "$log" "$tmp/log.${jobs#-}${t:+.$t}" && echo "  log: $tmp/log.${jobs#-}${t:+.$t}"
            else
                echo "  (KEEP=1 $0 keeps each failed target's log)"
            fi
            echo "[  FAILED  ] $name"
            failed+=("$name")
        fi
    done
done
name="make test after libcmocka-dev was removed"
echo "[ RUN      ] $name"
why=""
check_removed
if [ -z "$why" ]; then
    echo "[       OK ] $name"
else
    printf '%s' "$why"
    echo "[  FAILED  ] $name"
    failed+=("$name")
fi
echo "[==========] $total test(s) run."
echo "[  PASSED  ] $((total - ${#failed[@]})) test(s)."
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[  FAILED  ] ${#failed[@]} test(s), listed below:"
    for n in "${failed[@]}"; do echo "[  FAILED  ] $n"; done
    exit 1
fi
exit 0
