#!/usr/bin/env bash
# run.sh -- run the libFuzzer targets one after the other and summarise.
#
#   tests/fuzz/run.sh [TARGET...]          (default: sale config rules event)
#
# `make fuzz` builds the binaries ($FUZZ_BUILD/fuzz_<target>) and calls this.
# Environment:
#   FUZZ_SECONDS  seconds per target (default 60); 0 = do not fuzz (with
#                 FUZZ_MERGE=1: only merge)
#   FUZZ_BUILD    where the binaries are and the run's files go (build-fuzz)
#   FUZZ_MERGE=1  afterwards, merge the inputs that add coverage into the
#                 committed seed corpus tests/fuzz/corpus/<target>/
#   FUZZ_FLAGS    extra libFuzzer flags (e.g. -use_value_profile=1)
#
# Each target runs as ONE process (no -jobs/-workers: the machine is shared),
# under `nice -n 10`, on a working corpus $FUZZ_BUILD/corpus/<target>/ (new
# inputs are written there) plus the read-only tests/fuzz/corpus/<target>/ and
# tests/fuzz/regressions/<target>/, with its dictionary tests/fuzz/<target>.dict.
# The full libFuzzer output goes to $FUZZ_BUILD/logs/<target>.log; crashes,
# leaks, timeouts and OOMs are saved as $FUZZ_BUILD/artifacts/<target>/*
# (minimise one with `$FUZZ_BUILD/fuzz_<target> -minimize_crash=1 -runs=10000
# FILE`, then keep it in tests/fuzz/regressions/<target>/). The exit status is
# 1 when any target found something.

set -u
cd "$(dirname "$0")/../.." || exit 2
build="${FUZZ_BUILD:-build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ "${#targets[@]}" -eq 0 ] && targets=(sale config rules event)

# Input size limits: bodies are small, config and rule files are not.
# Seeds that live elsewhere in the tree and are not copied into corpus/:
# the shipped rules and the unit tests' rule fixtures (rules), the shipped
# config (config).
extra_seeds() {
    case $1 in
        rules) echo rules tests/unit/rules ;;
        config) echo tests/unit/config ;;
    esac
}

max_len() {
    case "$1" in
    sale) echo 4096 ;;
    event) echo 8192 ;;
    *) echo 16384 ;;
    esac
}

export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"

summary=()
status=0
for t in "${targets[@]}"; do
    bin="$build/fuzz_$t"
    if [ ! -x "$bin" ]; then
        echo "run.sh: $bin: not built (make fuzz)"
        status=1
        continue
    fi
    work="$build/corpus/$t"
    art="$build/artifacts/$t"
    log="$build/logs/$t.log"
    mkdir -p "$work" "$art" "$build/logs" "tests/fuzz/regressions/$t"
    dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    if [ "$seconds" = 0 ]; then
        echo "=== fuzz_$t: built (FUZZ_SECONDS=0)"
    else
        echo "=== fuzz_$t: ${seconds}s, max_len $(max_len "$t"), log $log"
        # shellcheck disable=SC2086
        nice -n 10 "$bin" -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
            -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 "${dict[@]}" \
            -artifact_prefix="$art/" ${FUZZ_FLAGS:-} \
            "$work" "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t" $(extra_seeds "$t") >"$log" 2>&1
        rc=$?

        # The last status line: "#N  DONE  cov: C ft: F corp: U/SIZE ... exec/s: E rss: R".
        last=$(grep -E '^#[0-9]+' "$log" | tail -1)
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
        cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
        ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
        corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
        found=$(ls "$art" 2>/dev/null | wc -l)
        line=$(printf '%-7s execs %-10s exec/s %-6s cov %-5s ft %-6s corpus %-12s rss %sMB artifacts %s' \
            "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$found")
        echo "$line"
        if [ "$rc" -ne 0 ]; then
            status=1
            line="$line  FAILED (exit $rc)"
            echo "--- fuzz_$t found something; the end of $log:"
            grep -nE 'ERROR: |SUMMARY: |fuzz invariant failed|Test unit written|ALARM|out-of-memory' "$log" | tail -20
        fi
        summary+=("$line")
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        before=$(ls "tests/fuzz/corpus/$t" | wc -l)
        nice -n 10 "$bin" -merge=1 -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
            "tests/fuzz/corpus/$t" "$work" >"$build/logs/$t.merge.log" 2>&1
        echo "    merged into tests/fuzz/corpus/$t: $before -> $(ls "tests/fuzz/corpus/$t" | wc -l) files"
    fi
done

echo
if [ "${#summary[@]}" -gt 0 ]; then
    echo "=== fuzz summary (${seconds}s per target)"
    for line in "${summary[@]}"; do echo "$line"; done
fi
exit "$status"
