#!/usr/bin/env bash
# run.sh -- run cmocka test binaries one after the other and add up results.
#
#   BUILD=build NERVE_BIN=/abs/path/nerve tests/run.sh BIN...
#
# Each binary runs under `timeout` (TEST_TIMEOUT seconds, default 300) with
# its output streamed as it comes. Its counts come from cmocka's summary
# lines; a binary that crashes, times out or exits non-zero without saying
# which test failed counts its unfinished tests as failed (at least one).
# The last line is always `N passed, N failed` (`, N skipped` when any); the
# exit status is 1 when anything failed or was skipped: a skipped test is a
# failure in CI.

set -u
export BUILD="${BUILD:-build}"
[ -n "${NERVE_BIN:-}" ] && export NERVE_BIN
timeout_s="${TEST_TIMEOUT:-300}"

passed=0
failed=0
skipped=0
problems=()

# Line-buffer the binaries' stdout so it interleaves in order with cmocka's
# stderr; ASan would refuse the preloaded libstdbuf without this option.
stdbuf=()
if command -v stdbuf >/dev/null 2>&1; then
    stdbuf=(stdbuf -oL -eL)
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
fi

out="$(mktemp "${TMPDIR:-/tmp}/nerve-run.XXXXXX")"
trap 'rm -f "$out"' EXIT

# count WHAT: the sum of N over cmocka lines `[ WHAT ] [group: ]N test(s)...`.
# Not anchored at the start: a piece of buffered stdout may precede a line.
count() {
    sed -nE "s/.*\\[$1\\] (.*: )?([0-9]+) test\\(s\\)$2.*/\\2/p" "$out" |
        awk '{ s += $1 } END { print s + 0 }'
}

for bin in "$@"; do
    name="$(basename "$bin")"
    echo "=== $name"
    if [ ! -x "$bin" ]; then
        echo "run.sh: $bin: no such executable"
        failed=$((failed + 1))
        problems+=("$name: missing")
        continue
    fi
    start=$SECONDS
    timeout -k 10 "$timeout_s" "${stdbuf[@]}" "$bin" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}

    running=$(sed -nE 's/.*\[==========\] (.*: )?Running ([0-9]+) test\(s\).*/\2/p' "$out" |
              awk '{ s += $1 } END { print s + 0 }')
    groups=$(grep -cE '\[==========\] (.*: )?Running [0-9]+ test\(s\)' "$out")
    finished=$(grep -cE '\[==========\] (.*: )?[0-9]+ test\(s\) run\.' "$out")
    p=$(count '  PASSED  ' '\.')
    f=$(count '  FAILED  ' ', listed below:')
    s=$(count '  SKIPPED ' ', listed below:')

    why=""
    if [ "$rc" -eq 124 ]; then
        why="timed out after ${timeout_s}s"
    elif [ "$rc" -eq 137 ]; then
        why="killed by SIGKILL (timed out after ${timeout_s}s, not stopping on SIGTERM?)"
    elif [ "$rc" -gt 128 ]; then
        why="killed by signal $((rc - 128))"
    elif [ "$rc" -ne 0 ]; then
        why="exit status $rc"
    fi

    if [ "$groups" -eq 0 ] && [ "$rc" -eq 0 ]; then
        # Not a cmocka binary, or one that ran nothing: one check that passed.
        p=1
    elif [ "$finished" -lt "$groups" ]; then
        # Cut short: what said OK passed, every other test failed.
        p=$(grep -cF '[       OK ] ' "$out")
        s=0
        f=$((running - p))
        [ "$f" -lt 1 ] && f=1
        [ -z "$why" ] && why="summary missing"
    elif [ "$rc" -ne 0 ]; then
        # Tests that never ran (a group setup failed) count as failed, and a
        # failure with nothing listed (a crash at exit, a sanitizer report
        # after the summary) as one.
        lost=$((running - p - f - s))
        [ "$lost" -gt 0 ] && f=$((f + lost))
        [ "$f" -eq 0 ] && f=1
    fi

    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
    summary="$name: $p passed, $f failed"
    [ "$s" -gt 0 ] && summary="$summary, $s skipped"
    [ -n "$why" ] && summary="$summary ($why)"
    echo "=== $summary in $((SECONDS - start))s"
    if [ "$f" -gt 0 ] || [ "$s" -gt 0 ]; then
        problems+=("$summary")
    fi
done

if [ "${#problems[@]}" -gt 0 ]; then
    echo
    echo "problems:"
    for line in "${problems[@]}"; do echo "  $line"; done
    echo
fi

line="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ]
