#!/usr/bin/env bash
# eval_fleet.sh -- rule evaluation throughput through the consumer group,
# with one and with two nerve instances on one Redis (issue 11, item 6).
#
#   NERVE_BIN=/abs/nerve tests/bench/eval_fleet.sh        (run.sh's "eval" scenario)
#
# For each fleet size (1, then 2) on a fresh redis-server: EVAL_EVENTS events
# are appended to the ingest streams before any instance runs (half
# stock_changed on inventory_events, half sale on sales_events, none of
# which makes the shipped rules decide anything), then the instances are
# started together with the config's rules, and the run lasts until the
# group `nerve` has read and acknowledged every entry (XINFO GROUPS: lag 0,
# pending 0). The figure is events / that time, start-up included (the same
# for both sizes). It also checks that the instances' nerve_events_total add
# up to EVAL_EVENTS (plus the few stock changes the instances append
# themselves, inventory.seed): each event evaluated exactly once across the
# fleet.
#
# Prints, last, one line:
#   eval_fleet: one N ev/s two M ev/s ratio R events E split A+B
# Exit 0, or 1 when a run failed (an instance did not start, the events were
# not all evaluated within EVAL_TIMEOUT_S, or evaluated more than once), 2
# when it could not run.
#
# Environment: EVAL_EVENTS=100000, EVAL_TIMEOUT_S=120,
# NERVE_CONFIG=config/nerve.yaml, NERVE_ARGS (more `nerve serve` arguments),
# KEEP_TMP=1 (keep the logs).

# Functions called only through wait_until or a trap look unreachable:
# shellcheck disable=SC2317

set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
NERVE_BIN=${NERVE_BIN:-$root/nerve}
NERVE_CONFIG=${NERVE_CONFIG:-$root/config/nerve.yaml}
EVAL_EVENTS=${EVAL_EVENTS:-100000}
EVAL_TIMEOUT_S=${EVAL_TIMEOUT_S:-120}
read -r -a nerve_args <<<"${NERVE_ARGS:-}"

die() { echo "eval_fleet: $*" >&2; exit 2; }
note() { echo "eval_fleet: $*" >&2; }

[[ $EVAL_EVENTS =~ ^[1-9][0-9]*$ ]] || die "EVAL_EVENTS '$EVAL_EVENTS' is not a positive number"
[[ $EVAL_TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "EVAL_TIMEOUT_S '$EVAL_TIMEOUT_S' is not a positive number"
for tool in redis-server redis-cli awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
[ -x "$NERVE_BIN" ] || die "nerve binary $NERVE_BIN not found"
cd "$root" || exit 2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nerve-eval.XXXXXX") || die "mktemp failed"
pids=()
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null
        wait "${pids[i]}" 2>/dev/null
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then note "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PORT := a TCP port nothing listens on (bash's /dev/tcp: refused = free)
# and none handed out before. Not in a $( ) subshell: each would start
# from the same $RANDOM state and pick the same port.
taken=" "
free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((10000 + RANDOM % 22000)) # under the ephemeral range
        case $taken in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            PORT=$p taken+="$p "
            return 0
        fi
    done
    return 1
}

# http_get PORT PATH: the body of GET PATH on stdout; 0 when it answered 200
# (bash /dev/tcp, as run.sh: no curl needed).
http_get() {
    local line status
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    IFS=' ' read -r _ status _ <&3
    while IFS= read -r line <&3 && [ "${line%$'\r'}" != "" ]; do :; done
    cat <&3
    exec 3<&-
    [ "$status" = 200 ]
}

healthy() { http_get "$1" /healthz >/dev/null; }

# wait_until SECONDS CMD...: poll CMD every 20 ms.
wait_until() {
    local limit=$1 end
    shift
    end=$(($(date +%s%N) + limit * 1000000000))
    until "$@"; do
        [ "$(date +%s%N)" -lt "$end" ] || return 1
        sleep 0.02
    done
}

now_ns() { date +%s%N; }

rcli() { redis-cli -p "$RPORT" "$@"; }

# The events, as RESP for redis-cli --pipe: XADD to the ingest streams.
fill() {
    awk -v n="$EVAL_EVENTS" 'function cmd(k, v) {
            printf "*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$5\r\nevent\r\n$%d\r\n%s\r\n",
                length(k), k, length(v), v
        }
        BEGIN {
            for (i = 0; i < n; i++) {
                sku = "B" (i % 1000)
                if (i % 2)
                    cmd("nerve:stream:sales_events", sprintf("{\"type\":\"sale\",\"sku\":\"%s\",\"qty\":1,\"unit_price\":100,\"order_id\":\"b%d\",\"ts\":1}", sku, i))
                else
                    cmd("nerve:stream:inventory_events", sprintf("{\"type\":\"stock_changed\",\"sku\":\"%s\",\"stock_remaining\":1000,\"ts\":1}", sku))
            }
        }' | rcli --pipe >"$tmp/fill.log" 2>&1
}

# Every entry of the two ingest streams read and acknowledged by group nerve.
drained() {
    local s out
    for s in nerve:stream:sales_events nerve:stream:inventory_events; do
        out=$(rcli XINFO GROUPS "$s" 2>/dev/null | tr -d '\r') || return 1
        awk '/^nerve$/ { g = 1 } g && prev == "pending" { p = $0 } g && prev == "lag" { l = $0; exit }
             { prev = $0 } END { exit !(g && p == "0" && l == "0") }' <<<"$out" || return 1
    done
}


# events_of PORT: nerve_events_total of that instance, all channels.
events_of() {
    http_get "$1" /metrics |
        awk '/^nerve_events_total[{ ]/ { s += $NF } END { printf "%d\n", s }'
}

# run N: one measurement with N instances; sets EPS and SPLIT.
run() {
    local n=$1 i t0 t1 ports=() total=0 split=""
    free_port || die "no free port"
    RPORT=$PORT
    mkdir -p "$tmp/redis-$n"
    redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$tmp/redis-$n" --save "" \
        --appendonly no >"$tmp/redis-$n.log" 2>&1 &
    pids+=($!)
    wait_until 10 rcli PING >/dev/null 2>&1 || die "redis-server did not start ($tmp/redis-$n.log)"
    fill || die "filling the streams failed: $(tail -n 3 "$tmp/fill.log")"
    note "$n instance(s): $EVAL_EVENTS events queued in the ingest streams"
    t0=$(now_ns)
    for ((i = 0; i < n; i++)); do
        free_port || die "no free port"
        ports[i]=$PORT
        NERVE_ADMIN_TOKEN=bench-token "$NERVE_BIN" serve -c "$NERVE_CONFIG" \
            --set "server.listen=127.0.0.1:${ports[i]}" --set "redis.url=redis://127.0.0.1:$RPORT/0" \
            --set server.pidfile= --set log.level=warn --set ledger.enabled=false \
            "${nerve_args[@]}" >"$tmp/nerve-$n-$i.log" 2>&1 &
        pids+=($!)
    done
    for ((i = 0; i < n; i++)); do
        if ! wait_until 10 healthy "${ports[i]}"; then
            note "$n instance(s): instance $((i + 1)) did not start: $(tail -n 2 "$tmp/nerve-$n-$i.log")"
            return 1
        fi
    done
    if ! wait_until "$EVAL_TIMEOUT_S" drained; then
        note "$n instance(s): the events were not all evaluated within $EVAL_TIMEOUT_S s"
        tail -n 5 "$tmp"/nerve-"$n"-*.log >&2
        return 1
    fi
    t1=$(now_ns)
    # The instances' own events (inventory.seed's stock changes) count too.
    local k extra=0
    for k in $(rcli --scan --pattern 'nerve:{p*}:stream:*'); do
        extra=$((extra + $(rcli XLEN "$k")))
    done
    for ((i = 0; i < n; i++)); do
        local e
        e=$(events_of "${ports[i]}")
        total=$((total + ${e:-0}))
        split+="${split:++}${e:-?}"
    done
    EPS=$(awk -v e="$EVAL_EVENTS" -v ns=$((t1 - t0)) 'BEGIN { printf "%d\n", e / (ns / 1e9) }')
    SPLIT=$split
    note "$n instance(s): $EPS ev/s, evaluated $split"
    # Stop this fleet and its redis before the next run.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null
        wait "${pids[i]}" 2>/dev/null
    done
    pids=()
    if [ "$total" != "$((EVAL_EVENTS + extra))" ]; then
        note "$n instance(s): $total evaluations for $((EVAL_EVENTS + extra)) events (each must be evaluated once)"
        return 1
    fi
    return 0
}

rc=0
run 1 || rc=1
one=${EPS:-0} split1=${SPLIT:-}
run 2 || rc=1
two=${EPS:-0} split2=${SPLIT:-}
ratio=$(awk -v a="$two" -v b="$one" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }')
echo "eval_fleet: one $one ev/s two $two ev/s ratio $ratio events $EVAL_EVENTS split $split1 / $split2"
exit $rc
