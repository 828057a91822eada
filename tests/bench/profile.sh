#!/usr/bin/env bash
# profile.sh -- where a sale's time goes: per-sale costs of nerve and of its
# redis-server under a fixed wrk load, and a flat profile of each (issue 12).
# Not part of `make bench`: run it before and after a change of the sale path.
#
#   NERVE_BIN=build/nerve tests/bench/profile.sh
#   LOAD=spread DURATION=8s tests/bench/profile.sh
#   SERVER=plain BUILD=build tests/bench/profile.sh    (the plain reference server)
#
# Starts, on 127.0.0.1 free ports in one `mktemp -d` directory, a throwaway
# redis-server and one server on it: nerve (NERVE_CONFIG, streams and ledger
# as configured, the SQLite ledger in the temporary directory, log.level=warn)
# or, with SERVER=plain, $BUILD/bench/plain. Seeds the stock (10^9 for `hot`,
# or for each of bench-0 .. bench-999), warms up, then runs three wrk loads
# of the same shape as the bench's (sale.lua, WRK_THREADS x CONNECTIONS):
#
#   1. counts (DURATION): over the middle of the run (1 s after the start to
#      1 s before the end), per sale: context switches of the server (the sum
#      of voluntary + nonvoluntary over /proc/PID/task/*/status), CPU time
#      (utime + stime of /proc/PID/stat) of the server and of redis-server,
#      and syscalls of each, in all and by name (`perf stat` of the syscall
#      tracepoints, enabled and disabled through --control fifos at the
#      window's edges: counting does not slow the servers much). Sales in
#      the window are the stock Redis lost in it. Also wrk's req/s and
#      latency over the run.
#   2. only without perf (or with STRACE=1): syscalls by name with
#      `strace -c -f` on both over TRACE_S seconds, per sale. strace slows
#      the servers a lot: read the mix, not the throughput.
#   3. profile (PERF_S): `perf record -F PERF_FREQ` on the server and on
#      redis-server, then `perf report --stdio --no-children --sort sym`,
#      the top PERF_TOP symbols of each.
#
# A tool that is missing (perf, strace) is named and its part skipped.
# Takes about DURATION + TRACE_S (without perf) + PERF_S + 15 s. The
# load is the same each run (same stock, same requests, same durations), so
# two reports differ by what changed and by the machine's noise: compare
# per-sale figures (context switches, syscalls, CPU), not req/s alone.
#
# Environment (all optional):
#   SERVER=nerve      nerve | plain
#   LOAD=hot          hot (every sale on SKU hot) | spread (cycling over 1,000 SKUs)
#   DURATION=8s       phase 1 (at least 3s);  WARMUP=1s (0 skips it)
#   TRACE_S=3         phase 2 seconds (0 skips it);  STRACE=1 runs it even with perf
#   PERF_S=4          phase 3 seconds (0 skips it)
#   PERF_FREQ=1999    perf record sampling frequency (Hz);  PERF_TOP=25
#   CONNECTIONS=64, WRK_THREADS=2
#   SERVER_THREADS    worker threads (default: server.threads of NERVE_CONFIG)
#   NERVE_BIN=./nerve, NERVE_CONFIG=config/nerve.yaml, NERVE_ARGS (more
#                     `nerve serve` arguments, e.g. "--set ledger.enabled=false")
#   BUILD=build       where SERVER=plain finds bench/plain
#   KEEP_TMP=1        keep the temporary directory (logs, perf data, wrk output)
#
# Exit status 0 when it ran (even if a part was skipped), 2 when it could not.

# shellcheck disable=SC2317   # functions called only through wait_until or a trap
set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

SERVER=${SERVER:-nerve}
LOAD=${LOAD:-hot}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-1s}
TRACE_S=${TRACE_S:-3}
PERF_S=${PERF_S:-4}
PERF_FREQ=${PERF_FREQ:-1999}
PERF_TOP=${PERF_TOP:-25}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$root/$BUILD ;; esac
NERVE_BIN=${NERVE_BIN:-$root/nerve}
case $NERVE_BIN in /*) ;; *) NERVE_BIN=$PWD/$NERVE_BIN ;; esac
NERVE_CONFIG=${NERVE_CONFIG:-$root/config/nerve.yaml}
case $NERVE_CONFIG in /*) ;; *) NERVE_CONFIG=$PWD/$NERVE_CONFIG ;; esac
read -r -a nerve_args <<<"${NERVE_ARGS:-}"
SERVER_THREADS=${SERVER_THREADS:-}
ADMIN_TOKEN=bench-token
STOCK=1000000000
SPREAD_SKUS=1000
PLAIN_PREFIX="plain:"

die() { echo "profile: $*" >&2; exit 2; }
note() { echo "profile: $*" >&2; }

case $SERVER in nerve | plain) ;; *) die "SERVER '$SERVER': nerve or plain" ;; esac
case $LOAD in hot | spread) ;; *) die "LOAD '$LOAD': hot or spread" ;; esac
case $DURATION in
    *[!0-9s]* | "" | s) die "DURATION '$DURATION': use Ns" ;;
    *) DURATION_S=${DURATION%s} ;;
esac
[ "$DURATION_S" -ge 3 ] || die "DURATION '$DURATION': at least 3s (1 s each side of the window)"
for v in TRACE_S PERF_S PERF_FREQ PERF_TOP CONNECTIONS WRK_THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v '${!v}' is not a number"
done
for tool in wrk redis-server redis-cli awk timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (make deps-bench installs it)"
done
if [ "$SERVER" = nerve ]; then
    [ -x "$NERVE_BIN" ] || die "nerve binary $NERVE_BIN not found (set NERVE_BIN)"
    [ -f "$NERVE_CONFIG" ] || die "config $NERVE_CONFIG not found"
else
    [ -x "$BUILD/bench/plain" ] || die "$BUILD/bench/plain not built (make BUILD=$BUILD $BUILD/bench/plain)"
fi
if [ -z "$SERVER_THREADS" ]; then
    SERVER_THREADS=$(sed -n '/^server:/,/^[^ #]/s/^ *threads: *\([0-9][0-9]*\).*/\1/p' \
        "$NERVE_CONFIG" 2>/dev/null | head -n 1)
    SERVER_THREADS=${SERVER_THREADS:-32}
fi

have_perf=0
if command -v perf >/dev/null 2>&1 && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    have_perf=1
else
    note "perf not found or not allowed (perf_event_paranoid, tracefs): no syscall counts, no profile" \
        "(Debian: apt-get install linux-perf; as root)"
fi
have_strace=0
command -v strace >/dev/null 2>&1 && have_strace=1

cd "$root" || exit 2
unset NERVE_LEDGER_URL
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nerve-profile.XXXXXX") || die "mktemp failed"
pids=()
cleanup() {
    local i
    trap - EXIT INT TERM
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then note "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

rcli() { redis-cli -p "$RPORT"; }
redis_ping() { [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ]; }
server_up() {
    if [ "$SERVER" = nerve ]; then
        http GET "$SPORT" /readyz && [ "$HTTP_STATUS" = 200 ]
    else
        http POST "$SPORT" /sale '{"sku":"warmup","qty":1,"order_id":"up"}' && [ "$HTTP_STATUS" = 200 ]
    fi
}

start_redis() {
    for _ in 1 2 3 4 5; do
        RPORT=$(free_port) || break
        redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
            --daemonize no --logfile "$tmp/redis.log" &
        REDIS_PID=$!
        pids+=("$REDIS_PID")
        wait_until 5 "$REDIS_PID" redis_ping && return 0
        stop "$REDIS_PID"
    done
    die "redis-server did not start"
}

# The stock keys of SKU...: KEYS[]. nerve names them (`nerve keys where`);
# the plain server's are PLAIN_PREFIX + "stock:" + SKU.
stock_keys_of() {
    KEYS=()
    if [ "$SERVER" = plain ]; then
        local s
        for s in "$@"; do KEYS+=("${PLAIN_PREFIX}stock:$s"); done
        return 0
    fi
    mapfile -t KEYS < <("$NERVE_BIN" keys where -c "$NERVE_CONFIG" "${nerve_args[@]}" "$@" | cut -f3)
    [ ${#KEYS[@]} = $# ] || die "nerve keys where named ${#KEYS[@]} stock keys for $# SKUs"
}

start_server() {
    local up=0
    for _ in 1 2 3; do
        SPORT=$(free_port) || break
        if [ "$SERVER" = nerve ]; then
            env NERVE_ADMIN_TOKEN="$ADMIN_TOKEN" "$NERVE_BIN" serve -c "$NERVE_CONFIG" \
                --set "server.listen=127.0.0.1:$SPORT" --set "redis.url=redis://127.0.0.1:$RPORT/0" \
                --set "server.pidfile=" --set "server.threads=$SERVER_THREADS" \
                --set "ledger.path=$tmp/ledger.db" --set "log.level=warn" \
                "${nerve_args[@]}" >"$tmp/server.log" 2>&1 &
        else
            "$BUILD/bench/plain" "$SPORT" "$SERVER_THREADS" 127.0.0.1 "$RPORT" "$PLAIN_PREFIX" \
                >"$tmp/server.log" 2>&1 &
        fi
        SERVER_PID=$!
        pids+=("$SERVER_PID")
        if wait_until 20 "$SERVER_PID" server_up; then up=1; break; fi
        stop "$SERVER_PID"
    done
    [ $up = 1 ] || { tail -n 20 "$tmp/server.log" >&2; die "$SERVER did not come up"; }
}

# Seed the stocks: SKUS[] and their KEYS[] (10^9 each), and `warmup`.
seed() {
    local i
    SKUS=()
    if [ "$LOAD" = hot ]; then
        SKUS=(hot)
    else
        for ((i = 0; i < SPREAD_SKUS; i++)); do SKUS+=("bench-$i"); done
    fi
    stock_keys_of warmup
    echo "SET ${KEYS[0]} $STOCK" | rcli >/dev/null
    stock_keys_of "${SKUS[@]}"
    i=$(for k in "${KEYS[@]}"; do echo "SET $k $STOCK"; done | rcli | grep -c '^OK$')
    [ "$i" = ${#KEYS[@]} ] || die "seeding the stocks failed ($i of ${#KEYS[@]} SET answered OK)"
}

# stock_sum: the sum of KEYS[] in Redis (one MGET).
stock_sum() {
    { printf 'MGET'; printf ' %s' "${KEYS[@]}"; echo; } | rcli |
        awk '/^-?[0-9]+$/ { s += $1; n++ } END { if (n == 0) print "error"; else printf "%.0f\n", s }'
}

# wrk_start DURATION OUT: the load in the background; sets WRK_PID.
seq_no=0
wrk_start() {
    local dur=$1 out=$2 mode=$LOAD arg=hot
    [ "$LOAD" = spread ] && arg=$SPREAD_SKUS
    [ "$out" = "$tmp/warmup.out" ] && { mode=hot arg=warmup; }
    seq_no=$((seq_no + 1))
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$dur" --latency -s "$here/sale.lua" \
        "http://127.0.0.1:$SPORT/sale" -- "$mode" "$arg" "p$$r$seq_no" >"$out" 2>&1 &
    WRK_PID=$!
    pids+=("$WRK_PID")
}
wrk_wait() {
    wait "$WRK_PID" || { cat "$1" >&2; die "wrk failed"; }
    grep -q '^BENCH ' "$1" || { cat "$1" >&2; die "wrk printed no BENCH line"; }
}
field() { grep '^BENCH' "$1" | grep -o " $2=[^ ]*" | head -n 1 | cut -d= -f2; }

# ctxsw PID: voluntary + nonvoluntary context switches over its threads.
ctxsw() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}
# cpu_ticks PID: utime + stime of the process (all threads).
cpu_ticks() {
    local line st
    line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    read -r -a st <<<"${line##*) }"
    echo $((st[11] + st[12]))
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
threads_of() { local t=("/proc/$1/task"/*); echo "${#t[@]}"; }

# per A B: A / B with 3 significant decimals ("-" when B is 0).
per() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }

# --- set up ----------------------------------------------------------------------

start_redis
seed
start_server
note "$SERVER pid $SERVER_PID on 127.0.0.1:$SPORT ($SERVER_THREADS threads); redis-server pid $REDIS_PID on $RPORT; $tmp"
case $WARMUP in
    0 | 0s | "") ;;
    *)
        wrk_start "$WARMUP" "$tmp/warmup.out"
        wrk_wait "$tmp/warmup.out"
        ;;
esac

report="$tmp/report.txt"
{
    echo "profile: $SERVER, load $LOAD, wrk $WRK_THREADS threads x $CONNECTIONS connections;" \
        "$SERVER_THREADS server threads; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$SERVER" = nerve ]; then
        echo "nerve: $NERVE_BIN ($(stat -c %y "$NERVE_BIN" | cut -d. -f1)), $NERVE_CONFIG ${NERVE_ARGS:-}"
    fi
} >"$report"

# --- 1. counts ------------------------------------------------------------------

# The syscalls counted by name (perf stat tracepoints; the rest are "other").
SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg poll ppoll epoll_wait epoll_pwait
    epoll_ctl futex clock_gettime clock_nanosleep nanosleep newfstatat fstat pread64 pwrite64 lseek
    fsync fdatasync getrandom setsockopt getsockopt fcntl accept4 close openat mmap munmap madvise
    mprotect brk sched_yield"

# perf_counting WHO PID EVENTS: a perf stat of EVENTS on PID (all its threads)
# with the counters off, driven through two fifos (--control), so that they
# count exactly between `perf_ctl enable` and `perf_ctl disable` -- not from
# whenever perf got round to attaching to each of a hundred threads.
declare -A PC_PID PC_CTL PC_ACK
perf_counting() {
    local who=$1 c a
    mkfifo "$tmp/ctl-$who" "$tmp/ack-$who" || return 1
    perf stat -x, -D -1 --control "fifo:$tmp/ctl-$who,$tmp/ack-$who" -e "$3" -p "$2" \
        -o "$tmp/stat-$who.csv" >/dev/null 2>"$tmp/stat-$who.log" &
    PC_PID[$who]=$!
    pids+=("$!")
    # Read-write opens of a fifo do not wait for the other end.
    exec {c}<>"$tmp/ctl-$who" {a}<>"$tmp/ack-$who"
    PC_CTL[$who]=$c PC_ACK[$who]=$a
}
# perf_ctl CMD WHO: send CMD (enable, disable) and wait for perf's ack.
perf_ctl() {
    local r
    echo "$1" >&"${PC_CTL[$2]}"
    read -r -t 20 r <&"${PC_ACK[$2]}" && [ "$r" = ack ]
}
# perf_done WHO: stop that perf stat; its counts are in $tmp/stat-WHO.csv.
perf_done() {
    local c=${PC_CTL[$1]} a=${PC_ACK[$1]}
    kill -INT "${PC_PID[$1]}" 2>/dev/null
    wait "${PC_PID[$1]}" 2>/dev/null
    exec {c}>&- {a}<&-
}
# stat_count FILE EVENT: the count of EVENT in a perf stat -x, file (0 when
# not counted).
stat_count() {
    awk -F, -v e="$2" '$3 == e { n = ($1 ~ /^[0-9]+$/ ? $1 : 0) } END { print n + 0 }' "$1" 2>/dev/null
}

counting=0
if [ $have_perf = 1 ]; then
    # Only the tracepoints this kernel has (perf stat refuses unknown ones).
    known_sys=$(perf list 'syscalls:sys_enter_*' 2>/dev/null | grep -o 'syscalls:sys_enter_[a-z0-9_]*')
    events=raw_syscalls:sys_enter
    for sc in $SYSCALLS; do
        grep -qx "syscalls:sys_enter_$sc" <<<"$known_sys" && events+=",syscalls:sys_enter_$sc"
    done
    if perf_counting server "$SERVER_PID" "$events" && perf_counting redis "$REDIS_PID" "$events"; then
        counting=1
    fi
fi

win=$((DURATION_S - 2))
note "1. counts: wrk $DURATION, window ${win} s"
wrk_start "$DURATION" "$tmp/counts.out"
sleep 1
if [ $counting = 1 ] && ! { perf_ctl enable server && perf_ctl enable redis; }; then
    note "perf stat did not start counting ($(head -n 2 "$tmp/stat-server.log" "$tmp/stat-redis.log" | tr '\n' ' ')): no syscall counts"
    counting=0
fi
s0=$(stock_sum)
cs0=$(ctxsw "$SERVER_PID") rcs0=$(ctxsw "$REDIS_PID")
c0=$(cpu_ticks "$SERVER_PID") rc0=$(cpu_ticks "$REDIS_PID")
t0=$(date +%s%N)
sleep "$win"
s1=$(stock_sum)
cs1=$(ctxsw "$SERVER_PID") rcs1=$(ctxsw "$REDIS_PID")
c1=$(cpu_ticks "$SERVER_PID") rc1=$(cpu_ticks "$REDIS_PID")
t1=$(date +%s%N)
if [ $counting = 1 ]; then
    if ! perf_ctl disable server || ! perf_ctl disable redis; then
        note "perf stat did not ack the end of the window"
    fi
fi
[ -n "${PC_PID[server]:-}" ] && perf_done server
[ -n "${PC_PID[redis]:-}" ] && perf_done redis
wrk_wait "$tmp/counts.out"
if [ "$s0" = error ] || [ "$s1" = error ]; then die "cannot read the stock from Redis"; fi
sales=$((s0 - s1))
secs=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')
ms=$(awk -v s="$secs" 'BEGIN { print s * 1000 }')
row() { printf '%-34s %14s %14s\n' "$@"; }
{
    echo
    echo "== 1. per sale (window of $secs s in the middle of a $DURATION run: $sales sales, $(per "$sales" "$secs") sales/s)"
    echo "wrk over the whole run: $(field "$tmp/counts.out" rps) req/s, p50 $(field "$tmp/counts.out" p50_ms) ms," \
        "p99 $(field "$tmp/counts.out" p99_ms) ms, max $(field "$tmp/counts.out" max_ms) ms;" \
        "status $(grep '^BENCH_CODES' "$tmp/counts.out" | cut -d' ' -f2-)"
    row "" "$SERVER" "redis-server"
    row "threads" "$(threads_of "$SERVER_PID")" "$(threads_of "$REDIS_PID")"
    row "context switches / sale" "$(per $((cs1 - cs0)) "$sales")" "$(per $((rcs1 - rcs0)) "$sales")"
    row "CPU us / sale" "$(per "$(((c1 - c0) * 1000000 / CLK_TCK))" "$sales")" \
        "$(per "$(((rc1 - rc0) * 1000000 / CLK_TCK))" "$sales")"
    row "CPU use (cores)" "$(per "$(((c1 - c0) * 1000 / CLK_TCK))" "$ms")" \
        "$(per "$(((rc1 - rc0) * 1000 / CLK_TCK))" "$ms")"
    if [ $counting = 1 ]; then
        row "syscalls / sale (perf stat)" \
            "$(per "$(stat_count "$tmp/stat-server.csv" raw_syscalls:sys_enter)" "$sales")" \
            "$(per "$(stat_count "$tmp/stat-redis.csv" raw_syscalls:sys_enter)" "$sales")"
        # By name: each syscall counted in either process, largest first.
        for sc in $SYSCALLS; do
            a=$(stat_count "$tmp/stat-server.csv" "syscalls:sys_enter_$sc")
            b=$(stat_count "$tmp/stat-redis.csv" "syscalls:sys_enter_$sc")
            [ $((a + b)) -gt 0 ] && echo "$((a + b)) $sc $a $b"
        done | sort -rn | while read -r _ sc a b; do
            row "  $sc" "$(per "$a" "$sales")" "$(per "$b" "$sales")"
        done
        a=$(stat_count "$tmp/stat-server.csv" raw_syscalls:sys_enter)
        b=$(stat_count "$tmp/stat-redis.csv" raw_syscalls:sys_enter)
        for sc in $SYSCALLS; do
            a=$((a - $(stat_count "$tmp/stat-server.csv" "syscalls:sys_enter_$sc")))
            b=$((b - $(stat_count "$tmp/stat-redis.csv" "syscalls:sys_enter_$sc")))
        done
        # Each counter is switched on a moment apart: never below 0.
        row "  (other)" "$(per $((a > 0 ? a : 0)) "$sales")" "$(per $((b > 0 ? b : 0)) "$sales")"
    else
        row "syscalls / sale" "(no perf)" "(no perf)"
    fi
} >>"$report"

# --- 2. strace -c (without perf, or STRACE=1) ---------------------------------------

strace_summary() {
    awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { n[$NF] += $4 }
        END { for (k in n) print n[k], k }' "$1" | sort -rn
}
if [ "$TRACE_S" -gt 0 ] && { [ $counting = 0 ] || [ "${STRACE:-0}" = 1 ]; }; then
    if [ $have_strace = 0 ]; then
        printf '\n== 2. syscalls by name: skipped (no perf stat counts and no strace)\n' >>"$report"
    else
        note "2. syscalls by name (strace -c -f): ${TRACE_S} s"
        wrk_start "$((TRACE_S + 2))s" "$tmp/trace.out"
        sleep 1
        s0=$(stock_sum)
        timeout -s INT "$TRACE_S" strace -c -f -p "$SERVER_PID" -o "$tmp/trace-server.txt" >/dev/null 2>&1 &
        tr1=$!
        timeout -s INT "$TRACE_S" strace -c -f -p "$REDIS_PID" -o "$tmp/trace-redis.txt" >/dev/null 2>&1 &
        tr2=$!
        wait "$tr1" "$tr2"
        s1=$(stock_sum)
        wrk_wait "$tmp/trace.out"
        tsales=$((s0 - s1))
        {
            echo
            echo "== 2. syscalls by name per sale (strace -c -f over ~${TRACE_S} s, $tsales sales; strace slows the" \
                "servers a lot and its window includes attaching: read the mix, not the throughput)"
            for who in server redis; do
                [ $who = server ] && echo "-- $SERVER" || echo "-- redis-server"
                strace_summary "$tmp/trace-$who.txt" | awk -v s="$tsales" '
                    { t += $1; if (NR <= 12) printf "  %-22s %10.3f  (%d)\n", $2, (s > 0 ? $1 / s : 0), $1 }
                    END { printf "  %-22s %10.3f  (%d)\n", "all", (s > 0 ? t / s : 0), t }'
            done
        } >>"$report"
    fi
fi

# --- 3. flat profiles --------------------------------------------------------------

if [ "$PERF_S" -gt 0 ] && [ $have_perf = 1 ]; then
    note "3. perf record: ${PERF_S} s at $PERF_FREQ Hz"
    wrk_start "$((PERF_S + 2))s" "$tmp/perf.out"
    sleep 1
    perf record -q -F "$PERF_FREQ" -p "$SERVER_PID" -o "$tmp/perf-server.data" -- sleep "$PERF_S" \
        >/dev/null 2>"$tmp/perf-server.log" &
    pr1=$!
    perf record -q -F "$PERF_FREQ" -p "$REDIS_PID" -o "$tmp/perf-redis.data" -- sleep "$PERF_S" \
        >/dev/null 2>"$tmp/perf-redis.log" &
    pr2=$!
    wait "$pr1" "$pr2"
    wrk_wait "$tmp/perf.out"
    for who in server redis; do
        name=$SERVER
        [ $who = redis ] && name=redis-server
        {
            echo
            echo "== 3. perf record -F $PERF_FREQ, $PERF_S s, $name: top $PERF_TOP symbols (self, flat)"
            perf report -i "$tmp/perf-$who.data" --stdio --no-children --sort sym 2>/dev/null |
                grep -v '^#' | grep -v '^[[:space:]]*$' | head -n "$PERF_TOP"
        } >>"$report"
    done
elif [ "$PERF_S" -gt 0 ]; then
    printf '\n== 3. profile: skipped (no perf)\n' >>"$report"
fi

{
    kill -0 "$SERVER_PID" 2>/dev/null || echo "WARNING: $SERVER died during the profile"
    if [ -s "$tmp/server.log" ]; then
        echo
        echo "$SERVER log ($(wc -l <"$tmp/server.log") lines), first lines:"
        head -n 5 "$tmp/server.log" | cut -c1-200
    fi
} >>"$report"
cat "$report"
