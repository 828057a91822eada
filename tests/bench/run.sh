#!/usr/bin/env bash
# run.sh -- the sale benchmark (tests/bench/README.md).
#
#   BUILD=build NERVE_BIN=/abs/path/nerve tests/bench/run.sh      (what `make bench` runs)
#
# Starts a throwaway redis-server, nerve and the ceiling server (a bare
# CivetWeb answering POST /sale with the same options as nerve, no Redis), all
# on 127.0.0.1 free ports inside one `mktemp -d` directory, and drives them with
# wrk (tests/bench/sale.lua):
#   ceiling      POST /sale against the ceiling server: what the HTTP stack
#                and this machine can do at most;
#   hot SKU      every sale on one SKU (stock large enough never to run out);
#   1,000 SKUs   sales cycling over bench-0 .. bench-999.
# Then checks, for each nerve scenario, that the units sold (the 200s counted
# by wrk, plus the sales still in flight when wrk stopped, resolved by
# replaying their order_id) equal the stock Redis lost; records nerve's peak
# RSS; runs $BUILD/bench/bench_rules when built; prints one table.
#
# Environment (all optional):
#   DURATION=10s      wrk duration of each measured scenario (wrk syntax: 10s, 1m)
#   WARMUP=2s         unmeasured run before each scenario, 0 to skip
#   CONNECTIONS=64    wrk connections;  WRK_THREADS=2  wrk threads
#   SERVER_THREADS    CivetWeb worker threads of nerve and of the ceiling
#                     (default: server.threads of NERVE_CONFIG; README, "Threads")
#   SCENARIOS="ceiling hot spread"   which scenarios to run
#   NERVE_CONFIG=config/nerve.yaml;  NERVE_PREFIX=nerve: (redis.prefix)
#   NERVE_ARGS        more arguments for `nerve serve`, e.g. "--set rules.dir=/tmp/r"
#   KEEP_TMP=1        keep the temporary directory (logs) for a look afterwards
#
# Exit status: 0 when the bench ran and every invariant held, even when a
# performance target was missed (the table says which); 1 when an invariant
# failed or a run was invalid (non-2xx answers, nerve died); 2 when the bench
# could not run (missing tool or binary, a server would not start).

# Functions called only through wait_until or a trap look unreachable:
# shellcheck disable=SC2317

set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$root/$BUILD ;; esac
NERVE_BIN=${NERVE_BIN:-$root/nerve}
case $NERVE_BIN in /*) ;; *) NERVE_BIN=$PWD/$NERVE_BIN ;; esac
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
SCENARIOS=${SCENARIOS:-ceiling hot spread}
NERVE_CONFIG=${NERVE_CONFIG:-$root/config/nerve.yaml}
case $NERVE_CONFIG in /*) ;; *) NERVE_CONFIG=$PWD/$NERVE_CONFIG ;; esac
SERVER_THREADS=${SERVER_THREADS:-}
read -r -a nerve_args <<<"${NERVE_ARGS:-}"
NERVE_PREFIX=${NERVE_PREFIX:-nerve:}
ADMIN_TOKEN=bench-token
HOT_SKU=hot
HOT_STOCK=1000000000            # 1e9: at 100k sales/s, 10,000 s of selling
SPREAD_SKUS=1000
SPREAD_STOCK=1000000000
MAX_REPLAY=5000                 # more unanswered sales than this: something is broken

# Targets (SPEC issue "foundation"): ratio to the ceiling and p99.
TARGET_HOT_PCT=15
TARGET_SPREAD_PCT=30
TARGET_P99_MS=10

cd "$root" || exit 2

die() { echo "bench: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

for tool in wrk redis-server redis-cli timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (make deps-bench installs it)"
done
want() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
need_nerve=0
if want hot || want spread; then need_nerve=1; fi
[ -x "$BUILD/bench/ceiling" ] || die "$BUILD/bench/ceiling not built (make bench builds it)"
if [ $need_nerve = 1 ]; then
    [ -x "$NERVE_BIN" ] || die "nerve binary $NERVE_BIN not found (make bench builds it)"
    [ -f "$NERVE_CONFIG" ] || die "config $NERVE_CONFIG not found"
fi

# The ceiling runs with nerve's thread count: server.threads of the config
# (nerve's built-in default, 32, when the file does not set it).
if [ -z "$SERVER_THREADS" ]; then
    SERVER_THREADS=$(sed -n '/^server:/,/^[^ #]/s/^ *threads: *\([0-9][0-9]*\).*/\1/p' \
        "$NERVE_CONFIG" 2>/dev/null | head -n 1)
    SERVER_THREADS=${SERVER_THREADS:-32}
fi
[[ $SERVER_THREADS =~ ^[0-9]+$ ]] || die "SERVER_THREADS '$SERVER_THREADS' is not a number"
if [ "$SERVER_THREADS" -lt "$CONNECTIONS" ]; then
    note "warning: $SERVER_THREADS server threads < $CONNECTIONS connections: CivetWeb keeps" \
        "a thread per keep-alive connection, the others wait unmeasured (README, Threads)"
fi

# --- children and cleanup --------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nerve-bench.XXXXXX") || die "mktemp failed"
pids=()             # every child we started, stopped in reverse order
failed_setup=0

# stop PID [GRACE_S]: SIGTERM, wait up to GRACE_S seconds for it, then SIGKILL.
stop() {
    local pid=$1 grace=${2:-10} i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local i
    trap - EXIT INT TERM
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; done
    if [ "$failed_setup" = 1 ]; then
        for f in "$tmp"/*.log; do
            [ -s "$f" ] || continue
            echo "--- $(basename "$f") (last 20 lines)" >&2
            tail -n 20 "$f" >&2
        done
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        note "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'note interrupted; exit 130' INT
trap 'note terminated; exit 143' TERM

# setup_fail MSG: a server did not come up; show its logs on the way out.
setup_fail() { failed_setup=1; die "$@"; }

# --- tiny HTTP client (bash /dev/tcp: no curl needed) -------------------------

# http METHOD PORT PATH [BODY] [TOKEN]: one request with Connection: close.
# Sets HTTP_STATUS (000 when no answer) and HTTP_BODY; returns 0 when answered.
http() {
    local method=$1 port=$2 path=$3 body=${4-} token=${5-} fd resp auth=""
    HTTP_STATUS=000
    HTTP_BODY=""
    { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    [ -n "$token" ] && auth="Authorization: Bearer $token"$'\r\n'
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s' \
        "$method" "$path" "$port" "$auth" "${#body}" "$body" 1>&"$fd" 2>/dev/null
    resp=$(timeout 10 cat <&"$fd" 2>/dev/null)
    exec {fd}>&-
    [[ $resp =~ ^HTTP/1\.[01]\ ([0-9]{3}) ]] || return 1
    HTTP_STATUS=${BASH_REMATCH[1]}
    HTTP_BODY=${resp#*$'\r\n\r\n'}
    return 0
}

# json_num KEY: the integer value of "KEY" in HTTP_BODY ("" if absent).
json_num() { sed -n "s/.*\"$1\" *: *\(-\{0,1\}[0-9][0-9]*\).*/\1/p" <<<"$HTTP_BODY" | head -n 1; }

# --- ports and servers ---------------------------------------------------------

# A port nobody listens on now (the server started on it still has to bind
# it: callers retry on failure).
free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! { exec 9<>"/dev/tcp/127.0.0.1/$p"; } 2>/dev/null; then
            echo "$p"
            return 0
        fi
        exec 9>&-
    done
    return 1
}

# wait_until DEADLINE_S PID CMD...: poll CMD until it succeeds; fail when PID
# exits or the deadline passes.
wait_until() {
    local deadline=$(($(date +%s%N) / 1000000 + $1 * 1000)) pid=$2
    shift 2
    while :; do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        (($(date +%s%N) / 1000000 > deadline)) && return 1
        sleep 0.05
    done
}

redis_ping() { [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ]; }
# rcli: redis-cli reading commands from stdin, one a line.
rcli() { redis-cli -p "$RPORT"; }

# key_cmds CMD [TAIL] SKU...: "CMD PREFIX{SKU}:stock TAIL" for each SKU.
key_cmds() {
    local cmd=$1 tail=$2
    shift 2
    printf '%s\n' "$@" | awk -v c="$cmd" -v p="$NERVE_PREFIX" -v t="$tail" '{ print c " " p "{" $0 "}:stock" t }'
}

start_redis() {
    for _ in 1 2 3 4 5; do
        RPORT=$(free_port) || break
        redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$tmp" --save '' \
            --appendonly no --daemonize no --logfile "$tmp/redis.log" &
        REDIS_PID=$!
        pids+=("$REDIS_PID")
        wait_until 5 "$REDIS_PID" redis_ping && return 0
        stop "$REDIS_PID" 2
    done
    setup_fail "redis-server did not start"
}

nerve_healthy() { http GET "$NPORT" /healthz && [ "$HTTP_STATUS" = 200 ]; }
nerve_ready() { http GET "$NPORT" /readyz && [ "$HTTP_STATUS" = 200 ]; }

start_nerve() {
    for _ in 1 2 3; do
        NPORT=$(free_port) || break
        env NERVE_ADMIN_TOKEN="$ADMIN_TOKEN" "$NERVE_BIN" serve -c "$NERVE_CONFIG" \
            --set "server.listen=127.0.0.1:$NPORT" \
            --set "redis.url=redis://127.0.0.1:$RPORT/0" \
            --set "server.pidfile=" \
            --set "server.threads=$SERVER_THREADS" \
            --set "log.level=warn" "${nerve_args[@]}" >"$tmp/nerve.log" 2>&1 &
        NERVE_PID=$!
        pids+=("$NERVE_PID")
        if wait_until 15 "$NERVE_PID" nerve_healthy; then
            # Measure the steady state: Redis connected, rules loaded.
            wait_until 15 "$NERVE_PID" nerve_ready ||
                note "nerve /readyz still $HTTP_STATUS after 15 s: ${HTTP_BODY:0:200}"
            return 0
        fi
        kill -0 "$NERVE_PID" 2>/dev/null || grep -qi 'address already in use\|cannot listen' "$tmp/nerve.log" ||
            break   # died for another reason than the port: no point retrying
        stop "$NERVE_PID" 5
    done
    setup_fail "nerve did not answer GET /healthz (log below)"
}

ceiling_up() { http POST "$CPORT" /sale '{"sku":"hot","qty":1}' && [ "$HTTP_STATUS" = 200 ]; }

start_ceiling() {
    for _ in 1 2 3 4 5; do
        CPORT=$(free_port) || break
        "$BUILD/bench/ceiling" "$CPORT" "$SERVER_THREADS" 2>"$tmp/ceiling.log" &
        CEILING_PID=$!
        pids+=("$CEILING_PID")
        wait_until 5 "$CEILING_PID" ceiling_up && return 0
        stop "$CEILING_PID" 2
    done
    setup_fail "ceiling server did not start"
}

# --- wrk runs ------------------------------------------------------------------

run_seq=0

# wrk_run OUT DURATION PORT MODE ARG [PENDING]: run wrk with sale.lua in the
# background (so a signal reaches our trap at once) and wait for it.
wrk_run() {
    local out=$1 dur=$2 port=$3 mode=$4 arg=$5 pend=${6-} pid rc
    run_seq=$((run_seq + 1))
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$dur" --latency -s "$here/sale.lua" \
        "http://127.0.0.1:$port/sale" -- "$mode" "$arg" "b$$r$run_seq" ${pend:+"$pend"} >"$out" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait "$pid"
    rc=$?
    [ $rc = 0 ] || { cat "$out" >&2; die "wrk failed (exit $rc)"; }
    grep -q '^BENCH ' "$out" || { cat "$out" >&2; die "wrk printed no BENCH line"; }
}

# field FILE KEY: KEY=VALUE from the BENCH lines of FILE.
field() { grep '^BENCH' "$1" | grep -o " $2=[^ ]*" | head -n 1 | cut -d= -f2; }

warmup() {   # PORT MODE ARG
    case $WARMUP in 0 | 0s | "") return 0 ;; esac
    wrk_run "$tmp/warmup.out" "$WARMUP" "$@"
}

# replay PENDING_FILE: re-send every unanswered sale with its order_id. Nerve
# answers the first result (duplicate) or runs the sale now, so afterwards
# each of them has been executed exactly once. Sets REPLAY_UNITS, REPLAY_N,
# REPLAY_DUP; returns 1 (message in REPLAY_ERR) when one cannot be resolved.
replay() {
    local sku oid qty
    REPLAY_UNITS=0 REPLAY_N=0 REPLAY_DUP=0 REPLAY_ERR=""
    [ -s "$1" ] || return 0
    if [ "$(wc -l <"$1")" -gt $MAX_REPLAY ]; then
        REPLAY_ERR="$(wc -l <"$1") sales unanswered, more than $MAX_REPLAY"
        return 1
    fi
    while read -r sku oid; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            http POST "$NPORT" /sale "{\"sku\":\"$sku\",\"qty\":1,\"order_id\":\"$oid\"}" &&
                [ "$HTTP_STATUS" != 503 ] && break
            sleep 0.1
        done
        if [ "$HTTP_STATUS" != 200 ]; then
            REPLAY_ERR="replay of order $oid ($sku): HTTP $HTTP_STATUS ${HTTP_BODY:0:200}"
            return 1
        fi
        qty=$(json_num qty)
        REPLAY_UNITS=$((REPLAY_UNITS + ${qty:-1}))
        REPLAY_N=$((REPLAY_N + 1))
        grep -q '"duplicate" *: *true' <<<"$HTTP_BODY" && REPLAY_DUP=$((REPLAY_DUP + 1))
    done <"$1"
    return 0
}

# stock_sum SKU...: the sum of the stock keys of SKU... read from Redis.
stock_sum() {
    local s
    key_cmds GET "" "$@" | rcli | awk '
        /^-?[0-9]+$/ { s += $1; n++; next } { bad = 1 }
        END { if (bad || n == 0) print "error"; else printf "%.0f\n", s }'
}

# --- scenarios -------------------------------------------------------------------

declare -A RPS P50 P90 P99 MAXL NON2XX CODES ERRS INV INVMSG
order=()
status=0

# record NAME FILE: keep the figures of one wrk run.
record() {
    local name=$1 f=$2
    order+=("$name")
    RPS[$name]=$(field "$f" rps)
    P50[$name]=$(field "$f" p50_ms)
    P90[$name]=$(field "$f" p90_ms)
    P99[$name]=$(field "$f" p99_ms)
    MAXL[$name]=$(field "$f" max_ms)
    NON2XX[$name]=$(field "$f" non2xx)
    CODES[$name]=$(grep '^BENCH_CODES' "$f" | cut -d' ' -f3-)
    ERRS[$name]=$(grep '^BENCH_ERRORS' "$f" | cut -d' ' -f2-)
    if [ "${NON2XX[$name]:-1}" != 0 ]; then
        note "$name: ${NON2XX[$name]} non-2xx answers (${CODES[$name]}): the run is invalid"
        status=1
    fi
}

# check_invariant NAME FILE PENDING BEFORE SKU...: units sold == stock lost.
check_invariant() {
    local name=$1 f=$2 pend=$3 before=$4 after sold untracked
    shift 4
    untracked=$(field "$f" untracked)
    sold=$(field "$f" units)
    if ! replay "$pend"; then
        INV[$name]=FAIL
        INVMSG[$name]="cannot resolve the sales in flight: $REPLAY_ERR"
        status=1
        return
    fi
    after=$(stock_sum "$@")
    if [ "$after" = error ]; then
        INV[$name]=FAIL INVMSG[$name]="cannot read the final stock from Redis"
        status=1
        return
    fi
    local units=$((sold + REPLAY_UNITS)) lost=$((before - after))
    local op="=="
    [ "$units" = "$lost" ] || op="!="
    INVMSG[$name]="sold $units (200s $sold + $REPLAY_N unanswered at stop and replayed, $REPLAY_DUP of them had already run) $op stock $before - $after = $lost"
    if [ "$units" = "$lost" ] && [ "${untracked:-1}" = 0 ] && [ "$after" -ge 0 ]; then
        INV[$name]=PASS
    else
        INV[$name]=FAIL
        [ "${untracked:-1}" = 0 ] || INVMSG[$name]+=" ($untracked 200s without our order_id)"
        status=1
    fi
}

scenario_ceiling() {
    note "ceiling: $DURATION"
    warmup "$CPORT" ceiling "$HOT_SKU"
    wrk_run "$tmp/ceiling.out" "$DURATION" "$CPORT" ceiling "$HOT_SKU"
    record ceiling "$tmp/ceiling.out"
}

scenario_hot() {
    local before
    note "hot SKU: $DURATION"
    if ! http PUT "$NPORT" "/admin/stock/$HOT_SKU" "{\"stock\": $HOT_STOCK}" "$ADMIN_TOKEN" ||
        [ "$HTTP_STATUS" != 200 ]; then
        setup_fail "PUT /admin/stock/$HOT_SKU: HTTP $HTTP_STATUS $HTTP_BODY"
    fi
    # Warm up on another SKU, so no warm-up sale can land on the hot stock.
    http PUT "$NPORT" /admin/stock/warmup "{\"stock\": $HOT_STOCK}" "$ADMIN_TOKEN"
    warmup "$NPORT" hot warmup
    before=$(stock_sum "$HOT_SKU")
    [ "$before" = "$HOT_STOCK" ] ||
        setup_fail "stock of $HOT_SKU in Redis is '$before', expected $HOT_STOCK (redis.prefix not '$NERVE_PREFIX'?)"
    wrk_run "$tmp/hot.out" "$DURATION" "$NPORT" hot "$HOT_SKU" "$tmp/hot.pending"
    record hot "$tmp/hot.out"
    check_invariant hot "$tmp/hot.out" "$tmp/hot.pending" "$before" "$HOT_SKU"
}

scenario_spread() {
    local before i skus=()
    note "1,000 SKUs: $DURATION"
    for ((i = 0; i < SPREAD_SKUS; i++)); do skus+=("bench-$i"); done
    key_cmds SET " $SPREAD_STOCK" "${skus[@]}" | rcli >"$tmp/seed.out" ||
        setup_fail "redis-cli SET of the stocks failed"
    [ "$(grep -c '^OK$' "$tmp/seed.out")" = "$SPREAD_SKUS" ] || setup_fail "seeding the stocks failed"
    # nerve must see them where we wrote them.
    if ! http GET "$NPORT" "/stock/bench-$((SPREAD_SKUS - 1))" ||
        [ "$(json_num stock)" != "$SPREAD_STOCK" ]; then
        setup_fail "GET /stock/bench-$((SPREAD_SKUS - 1)) after seeding: HTTP $HTTP_STATUS $HTTP_BODY"
    fi
    http PUT "$NPORT" /admin/stock/warmup "{\"stock\": $HOT_STOCK}" "$ADMIN_TOKEN"
    warmup "$NPORT" hot warmup
    before=$(stock_sum "${skus[@]}")
    wrk_run "$tmp/spread.out" "$DURATION" "$NPORT" spread "$SPREAD_SKUS" "$tmp/spread.pending"
    record spread "$tmp/spread.out"
    check_invariant spread "$tmp/spread.out" "$tmp/spread.pending" "$before" "${skus[@]}"
}

# --- main ------------------------------------------------------------------------

note "temporary directory $tmp"
start_ceiling
if [ $need_nerve = 1 ]; then
    start_redis
    start_nerve
    note "redis 127.0.0.1:$RPORT, nerve 127.0.0.1:$NPORT (pid $NERVE_PID), ceiling 127.0.0.1:$CPORT"
fi

for s in $SCENARIOS; do
    case $s in
        ceiling) scenario_ceiling ;;
        hot) scenario_hot ;;
        spread) scenario_spread ;;
        *) die "unknown scenario '$s' (ceiling, hot, spread)" ;;
    esac
done

rss=""
dropped=""
nerve_alive=1
if [ $need_nerve = 1 ]; then
    if kill -0 "$NERVE_PID" 2>/dev/null && [ -r "/proc/$NERVE_PID/status" ]; then
        rss=$(awk '/^VmHWM:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$NERVE_PID/status")
        if http GET "$NPORT" /metrics && [ "$HTTP_STATUS" = 200 ]; then
            dropped=$(awk '$1 == "nerve_event_queue_dropped_total" { print $2 }' <<<"$HTTP_BODY")
        fi
    else
        nerve_alive=0
        status=1
        note "nerve is no longer running"
        failed_setup=1
    fi
fi

rules_line=""
if [ -x "$BUILD/bench/bench_rules" ]; then
    note "bench_rules"
    if rules_out=$("$BUILD/bench/bench_rules" 2>"$tmp/bench_rules.log"); then
        rules_line=$(grep -v '^[[:space:]]*$' <<<"$rules_out" | tail -n 1)
    else
        rules_line="FAILED (exit $?): $(tail -n 1 "$tmp/bench_rules.log")"
        status=1
    fi
fi

# --- report ----------------------------------------------------------------------

label() {
    case $1 in ceiling) echo "ceiling" ;; hot) echo "hot SKU" ;; spread) echo "1,000 SKUs" ;; esac
}
ceil=${RPS[ceiling]:-}
pct() { [ -n "$ceil" ] && awk -v a="$1" -v c="$ceil" 'BEGIN { if (c > 0) printf "%.1f%%", 100 * a / c; else print "-" }' || echo "-"; }
met() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "NOT MET"; fi; }

# target NAME MIN_PCT: the target column of a nerve scenario.
target() {
    local name=$1 min=$2 t
    if [ -n "$ceil" ]; then
        t=">= $min%: $(met "${RPS[$name]} * 100 >= $min * $ceil")"
    else
        t=">= $min%: no ceiling run"
    fi
    echo "$t, p99 < $TARGET_P99_MS ms: $(met "${P99[$name]} < $TARGET_P99_MS")"
}

echo
echo "nerve sale bench: wrk $WRK_THREADS threads, $CONNECTIONS connections, $DURATION per scenario;" \
    "server threads $SERVER_THREADS; $(nproc) CPUs"
printf '%-11s %10s %8s %8s %8s %8s %8s  %s\n' scenario "req/s" "p50 ms" "p90 ms" "p99 ms" "max ms" ceiling target
for name in "${order[@]}"; do
    case $name in
        ceiling) t="-" ;;
        hot) t=$(target hot $TARGET_HOT_PCT) ;;
        spread) t=$(target spread $TARGET_SPREAD_PCT) ;;
    esac
    printf '%-11s %10s %8s %8s %8s %8s %8s  %s\n' "$(label "$name")" "${RPS[$name]}" "${P50[$name]}" \
        "${P90[$name]}" "${P99[$name]}" "${MAXL[$name]}" "$(pct "${RPS[$name]}")" "$t"
done
echo
for name in "${order[@]}"; do
    echo "$(label "$name"): status ${CODES[$name]}; socket errors ${ERRS[$name]}"
done
for name in "${order[@]}"; do
    [ -n "${INV[$name]:-}" ] || continue
    echo "invariant $(label "$name"): ${INV[$name]}: ${INVMSG[$name]}"
done
[ -n "$rss" ] && echo "nerve peak RSS (VmHWM): $rss"
[ -n "$dropped" ] && echo "nerve events dropped, queue full (nerve_event_queue_dropped_total): $dropped"
if [ $need_nerve = 1 ] && [ -s "$tmp/nerve.log" ]; then
    # The daemon ran with log.level=warn: everything it said is worth a look.
    echo "nerve log: $(wc -l <"$tmp/nerve.log") lines at warn or above; the first of each kind:"
    cut -d' ' -f2- "$tmp/nerve.log" |
        awk '{ k = $0; gsub(/[0-9]+/, "N", k) } !seen[k]++ { print "  " $0 }' | head -n 5
fi
[ $nerve_alive = 1 ] || echo "nerve: DIED during the bench"
[ -n "$rules_line" ] && echo "bench_rules: $rules_line"
if [ $status = 0 ]; then
    echo "bench: OK (targets are reported, not enforced)"
else
    echo "bench: FAILED (invalid run or invariant failure, see above)"
fi
exit $status
