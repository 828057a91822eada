#!/usr/bin/env bash
# rss_sale_rules.sh -- what sale-time rules cost in memory (issue 9, item 4).
#
# One daemon with server.threads workers, two rules: an event rule holding
# BIG_MB MiB and one trivial sale_request rule. RSS (VmRSS) is read once the
# daemon is up and the event rule has seen one event, then again after wrk
# drove sales over CONNECTIONS keep-alive connections (so that as many
# workers each evaluated the sale rule). Before issue 9 every worker built
# every rule, so the event rule's memory was held once per worker.
#
#   tests/bench/rss_sale_rules.sh            # both placements below
#   BIG_AT=load tests/bench/rss_sale_rules.sh
#
# BIG_AT says where the event rule builds its BIG_MB MiB:
#   load   at the top of its file (a table loaded at start): runs wherever the
#          rule is built
#   event  into ctx.state on its first event: only where it evaluates events
#
# Environment: NERVE_BIN (default ./nerve), NERVE_ROOT (the tree whose
# config/nerve.yaml is used, default .), THREADS=128, CONNECTIONS=128,
# DURATION=5s, WRK_THREADS=2, BIG_MB=6, KEEP=1 keeps the temp dir.
# Needs redis-server, redis-cli, curl, jq and wrk. Prints one line per run:
#   RSS big_at=load threads=128 before_kib=... after_kib=... growth_kib=...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
NERVE_BIN=$(realpath "${NERVE_BIN:-./nerve}")
NERVE_ROOT=$(realpath "${NERVE_ROOT:-.}")
THREADS=${THREADS:-128}
CONNECTIONS=${CONNECTIONS:-128}
DURATION=${DURATION:-5s}
WRK_THREADS=${WRK_THREADS:-2}
BIG_MB=${BIG_MB:-6}
TOKEN=bench-token

for tool in redis-server redis-cli curl jq wrk; do
    command -v "$tool" >/dev/null || { echo "rss_sale_rules: $tool not found" >&2; exit 2; }
done
[ -x "$NERVE_BIN" ] || { echo "rss_sale_rules: $NERVE_BIN is not executable" >&2; exit 2; }

tmp=$(mktemp -d /tmp/nerve-rss.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# until SECONDS CMD...: poll CMD every 0.1 s until it succeeds; 1 at the deadline.
until_ok() {
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

write_rules() {    # DIR BIG_AT
    mkdir -p "$1"
    if [ "$2" = load ]; then
        cat >"$1/big.lua" <<EOF
local BIG = string.rep("x", $BIG_MB * 1024 * 1024)
return {
  name = "big",
  on = { "test_events" },
  evaluate = function(e, ctx) ctx.state.len = #BIG end,
}
EOF
    else
        cat >"$1/big.lua" <<EOF
return {
  name = "big",
  on = { "test_events" },
  evaluate = function(e, ctx)
    if ctx.state.big == nil then ctx.state.big = string.rep("x", $BIG_MB * 1024 * 1024) end
  end,
}
EOF
    fi
    cat >"$1/trivial.lua" <<'EOF'
return {
  name = "trivial",
  on = { "sale_request" },
  evaluate = function(e, ctx)
    if e.qty > 1000 then return { action = "reject", reason = "too many" } end
  end,
}
EOF
}

run_one() {    # BIG_AT
    local at=$1 rport nport rpid npid base
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
        --logfile "$tmp/redis-$at.log" &
    rpid=$!; pids+=("$rpid")
    until_ok 5 redis-cli -p "$rport" ping || { echo "rss_sale_rules: redis-server did not start" >&2; exit 1; }
    write_rules "$tmp/rules-$at" "$at"
    nport=$(free_port)
    base="http://127.0.0.1:$nport"
    (cd "$NERVE_ROOT" && exec env NERVE_ADMIN_TOKEN=$TOKEN "$NERVE_BIN" serve -c config/nerve.yaml \
        --set "server.listen=127.0.0.1:$nport" --set "redis.url=redis://127.0.0.1:$rport/0" \
        --set server.pidfile= --set "server.threads=$THREADS" --set "rules.dir=$tmp/rules-$at" \
        --set 'bus.channels=[test_events]' --set rules.memory_limit=33554432 \
        --set log.level=warn) >"$tmp/nerve-$at.log" 2>&1 &
    npid=$!; pids+=("$npid")
    until_ok 15 curl -sf "$base/healthz" || { cat "$tmp/nerve-$at.log" >&2; exit 1; }
    curl -sf -X PUT -H "Authorization: Bearer $TOKEN" -d '{"stock":100000000}' \
        "$base/admin/stock/rss-hot" >/dev/null
    subscribed() { [ "$(redis-cli -p "$rport" pubsub numsub test_events | tail -1)" -ge 1 ]; }
    evaluated() { [ "$(curl -sf "$base/rules" | jq '.rules[] | select(.name=="big") | .evaluations')" -ge 1 ]; }
    until_ok 10 subscribed || { echo "rss_sale_rules: the daemon never subscribed" >&2; exit 1; }
    redis-cli -p "$rport" publish test_events '{"type":"ping"}' >/dev/null
    until_ok 10 evaluated || { echo "rss_sale_rules: rule big never evaluated the event" >&2; exit 1; }
    sleep 1     # let the daemon settle (not synchronisation: a measurement)
    local before after
    before=$(rss_kib "$npid")
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$here/sale.lua" "$base" \
        -- hot rss-hot "rss-$at-$$" >"$tmp/wrk-$at.txt"
    after=$(rss_kib "$npid")
    grep '^BENCH\(_CODES\)\? ' "$tmp/wrk-$at.txt" | sed 's/^/# /'
    echo "RSS big_at=$at big_mb=$BIG_MB threads=$THREADS connections=$CONNECTIONS" \
         "before_kib=$before after_kib=$after growth_kib=$((after - before))"
    kill "$npid" "$rpid"
    wait "$npid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
}

if [ -n "${BIG_AT:-}" ]; then
    run_one "$BIG_AT"
else
    run_one load
    run_one event
fi
