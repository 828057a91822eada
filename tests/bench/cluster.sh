#!/usr/bin/env bash
# cluster.sh -- sales on one Redis and on Redis Clusters of 1 and 3 primaries
# (issue 15), the same load on each, for the README's deployments table.
#
#   BUILD=build NERVE_BIN=/abs/path/nerve tests/bench/cluster.sh   (make bench-cluster)
#
# For each deployment (DEPLOYMENTS, default "standalone cluster-1 cluster-3")
# it starts, in one `mktemp -d` directory on 127.0.0.1 free ports, the Redis
# servers (a cluster of 1 gets every slot by CLUSTER ADDSLOTSRANGE; of 3 is
# made by `redis-cli --cluster create`), one nerve (redis.mode cluster on a
# cluster, its seed the first node) and runs `nerve stress` over SKUS SKUs for
# DURATION seconds with CLIENTS connections: throughput, latency and the
# stress invariants (exit 1 when one fails). Everything runs on this
# machine's CPUs: nerve, every redis-server and the load generator share
# them, so a 3-node cluster here measures the routing's cost, not the
# capacity a cluster of 3 machines would add.
#
# Environment: DURATION=10 (seconds), CLIENTS=64, SKUS=1000, THREADS (nerve's
# server.threads, default the config's), DEPLOYMENTS, SETS (extra
# dotted.key=value overrides for every nerve, space-separated; default none:
# the shipped config, streams on, whose readers read each node's streams
# slot by slot on a cluster (sgroup.h); SETS=bus.streams=false compares the
# sale path alone).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

NERVE_BIN=${NERVE_BIN:-$PWD/nerve}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
SKUS=${SKUS:-1000}
DEPLOYMENTS=${DEPLOYMENTS:-standalone cluster-1 cluster-3}
SETS=${SETS-}
TOKEN=bench-token
tmp=$(mktemp -d /tmp/nerve-bench-cluster.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do stop "$p" 5; done
    [ -n "${KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

die() {
    echo "bench-cluster: $*" >&2
    exit 2
}

# A port P with P + 10000 (its cluster bus) free as well.
cluster_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$(free_port) || return 1
        [ "$p" -lt 55000 ] || continue
        if ! { exec 9<>"/dev/tcp/127.0.0.1/$((p + 10000))"; } 2>/dev/null; then
            echo "$p"
            return 0
        fi
        exec 9>&-
    done
    return 1
}

redis_up() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; }
cluster_ok() { redis-cli -p "$1" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok'; }

# start_redis DIR [cluster]: one redis-server on a free port (another one
# when the port was taken meanwhile: the machine is shared), its port in RP;
# appends its pid to pids.
start_redis() {
    local dir=$1 extra=() try
    mkdir -p "$dir"
    [ "${2:-}" = cluster ] && extra=(--cluster-enabled yes --cluster-config-file nodes.conf)
    for try in 1 2 3 4 5; do
        if [ "${2:-}" = cluster ]; then RP=$(cluster_port); else RP=$(free_port); fi || die "no free port"
        redis-server --port "$RP" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
            --daemonize no --logfile "$dir/redis.log" "${extra[@]}" &
        pids+=($!)
        wait_until 5 $! redis_up "$RP" && return 0
        stop "${pids[-1]}" 2
        unset 'pids[-1]'
    done
    die "redis-server in $dir did not start: $(tail -2 "$dir/redis.log")"
}

nerve_ready() { http GET "$NPORT" /readyz && [ "$HTTP_STATUS" = 200 ]; }

# run DEPLOYMENT: start it, load it, print one row.
run() {
    local dep=$1 n ports=() i p dir mode=standalone args=()
    case $dep in
    standalone) n=1 ;;
    cluster-*) n=${dep#cluster-} mode=cluster ;;
    *) die "unknown deployment $dep" ;;
    esac
    for ((i = 0; i < n; i++)); do
        dir="$tmp/$dep-$i"
        start_redis "$dir" "$([ "$mode" = cluster ] && echo cluster)"
        ports+=("$RP")
    done
    if [ "$mode" = cluster ]; then
        if [ "$n" = 1 ]; then
            redis-cli -p "${ports[0]}" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null || die "ADDSLOTSRANGE failed"
        else
            for p in "${ports[@]}"; do args+=("127.0.0.1:$p"); done
            redis-cli --cluster create "${args[@]}" --cluster-replicas 0 --cluster-yes \
                >"$tmp/$dep-create.log" 2>&1 || die "redis-cli --cluster create failed: $(tail -3 "$tmp/$dep-create.log")"
        fi
        for p in "${ports[@]}"; do wait_until 30 "${pids[-1]}" cluster_ok "$p" || die "cluster $dep not ok"; done
    fi
    NPORT=$(free_port) || die "no free port"
    local set=(--set "server.listen=127.0.0.1:$NPORT" --set "redis.url=redis://127.0.0.1:${ports[0]}/0"
        --set "redis.mode=$mode" --set "server.pidfile=" --set "ledger.path=$tmp/$dep-ledger.db"
        --set "log.level=warn")
    [ -n "${THREADS:-}" ] && set+=(--set "server.threads=$THREADS")
    for i in $SETS; do set+=(--set "$i"); done
    env NERVE_ADMIN_TOKEN=$TOKEN "$NERVE_BIN" serve -c config/nerve.yaml "${set[@]}" \
        >"$tmp/$dep-nerve.log" 2>&1 &
    local npid=$!
    pids+=("$npid")
    wait_until 20 "$npid" nerve_ready || die "nerve on $dep not ready: $HTTP_STATUS ${HTTP_BODY:0:200}; $(tail -5 "$tmp/$dep-nerve.log")"
    env NERVE_ADMIN_TOKEN=$TOKEN "$NERVE_BIN" stress --url "http://127.0.0.1:$NPORT" --sku "b" \
        --skus "$SKUS" --stock 1000000 --clients "$CLIENTS" --duration "$DURATION" --json \
        >"$tmp/$dep.json" 2>"$tmp/$dep.err"
    local rc=$?
    python3 - "$tmp/$dep.json" "$dep" "$n" "$rc" <<'EOF'
import json, sys
path, dep, n, rc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{dep:<12} {n:>5}  no report ({e})")
    sys.exit(1)
lat = r["latency_ms"] if "latency_ms" in r else r.get("latency", {})
print(f"{dep:<12} {n:>5} {r['throughput_rps']:>10.0f} {lat.get('p50', 0):>8.2f} {lat.get('p99', 0):>8.2f}"
      f" {r['ok']:>9} {r['unavailable']:>6} {r['errors']:>6}  {'PASS' if rc == 0 and r.get('pass') else 'FAIL'}")
EOF
    [ "$rc" = 0 ] || status=1
    # Stop this deployment before the next: they would share the CPUs.
    for p in "${pids[@]}"; do stop "$p" 5; done
    pids=()
}

status=0
[ -x "$NERVE_BIN" ] || die "no nerve binary at $NERVE_BIN (make first)"
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || die "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
printf 'nerve bench-cluster: %s SKUs, %s connections, %ss each; %s CPUs; load average %s; --set %s\n' \
    "$SKUS" "$CLIENTS" "$DURATION" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "${SETS:-(none)}"
printf '%-12s %5s %10s %8s %8s %9s %6s %6s  %s\n' deployment nodes "req/s" "p50 ms" "p99 ms" ok 503 errors invariants
for d in $DEPLOYMENTS; do run "$d"; done
exit $status
