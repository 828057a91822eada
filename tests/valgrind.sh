#!/usr/bin/env bash
# make valgrind: every unit test binary, then a short daemon session, under
# valgrind memcheck. Any error or any leaked block fails the run.
# Usage: NERVE_BIN=/abs/nerve tests/valgrind.sh UNIT_BIN...
set -uo pipefail
NERVE_BIN=${NERVE_BIN:-$PWD/nerve}
VG=(valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect,possible --track-fds=no)
passed=0 failed=0
dir=$(mktemp -d /tmp/nerve-vg.XXXXXX)
redis_pid= nerve_pid=
cleanup() {
    [ -n "$nerve_pid" ] && kill -9 "$nerve_pid" 2>/dev/null
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

for t in "$@"; do
    name=$(basename "$t")
    if "${VG[@]}" --log-file="$dir/$name.vg" "$t" >"$dir/$name.out" 2>&1; then
        echo "valgrind $name: ok"
        passed=$((passed + 1))
    else
        echo "valgrind $name: FAILED"
        tail -30 "$dir/$name.out"; cat "$dir/$name.vg"
        failed=$((failed + 1))
    fi
done

# A short daemon session: start, exercise every endpoint, SIGTERM.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http() { # METHOD PATH [BODY] -> prints "STATUS BODY"
    local m=$1 p=$2 b=${3:-} resp
    exec 3<>"/dev/tcp/127.0.0.1/$nport" || return 1
    printf '%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer vg-token\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$m" "$p" "${#b}" "$b" >&3
    resp=$(cat <&3); exec 3<&-
    echo "${resp%%$'\r'*}"
}
for _ in 1 2 3 4 5 6 7 8 9 10; do
    rport=$(( 20000 + RANDOM % 20000 )); port_free "$rport" && break
done
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no >"$dir/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 200); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
for _ in 1 2 3 4 5 6 7 8 9 10; do
    nport=$(( 40000 + RANDOM % 20000 )); port_free "$nport" && break
done
NERVE_ADMIN_TOKEN=vg-token "${VG[@]}" --log-file="$dir/nerve.vg" "$NERVE_BIN" serve -c config/nerve.yaml \
    --set "server.listen=127.0.0.1:$nport" --set "redis.url=redis://127.0.0.1:$rport/0" \
    --set server.pidfile= --set server.threads=8 >"$dir/nerve.log" 2>&1 &
nerve_pid=$!
up=0
for _ in $(seq 600); do
    [ "$(http GET /healthz 2>/dev/null | cut -d' ' -f2)" = 200 ] && { up=1; break; }
    kill -0 "$nerve_pid" 2>/dev/null || break
    sleep 0.1
done
ok=1
if [ $up = 1 ]; then
    expect() { local want=$1; shift; local got; got=$(http "$@" | cut -d' ' -f2)
        [ "$got" = "$want" ] || { echo "valgrind daemon: $* answered $got, expected $want"; ok=0; }; }
    expect 200 PUT /admin/stock/VG1 '{"stock":10}'
    expect 200 POST /sale '{"sku":"VG1","qty":3,"order_id":"vg-1"}'
    expect 200 POST /sale '{"sku":"VG1","qty":3,"order_id":"vg-1"}'
    expect 409 POST /sale '{"sku":"VG1","qty":30}'
    expect 400 POST /sale '{"sku":"VG 1","qty":1}'
    expect 400 POST /sale '{not json'
    expect 422 POST /sale '{"sku":"VG1","qty":1,"unit_price":0.01}'
    expect 200 POST /sale '{"sku":"VG1","qty":1,"unit_price":9.99}'
    expect 200 GET /stock/VG1
    expect 404 GET /stock/none
    expect 200 GET /rules
    expect 200 GET /metrics
    expect 200 POST /admin/killswitch '{"scope":"global","reason":"valgrind"}'
    expect 200 GET /killswitch
    expect 200 DELETE /admin/killswitch/global
    expect 200 POST /admin/reload
    expect 200 GET /readyz
    expect 404 GET /nowhere
    kill -HUP "$nerve_pid"
    redis-cli -p "$rport" publish financial_events '{"type":"spend","campaign":"vg","amount":5}' >/dev/null
else
    echo "valgrind daemon: did not come up"; tail -20 "$dir/nerve.log"; ok=0
fi
kill -TERM "$nerve_pid" 2>/dev/null
wait "$nerve_pid"; rc=$?; nerve_pid=
if [ $ok = 1 ] && [ $rc = 0 ] && [ ! -s "$dir/nerve.vg" ]; then
    echo "valgrind nerve serve session: ok"
    passed=$((passed + 1))
else
    echo "valgrind nerve serve session: FAILED (exit $rc)"
    tail -20 "$dir/nerve.log"; cat "$dir/nerve.vg"
    failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
