#!/usr/bin/env bash
# make run: start nerve with a local redis-server when none is reachable.
#
# When REDIS_URL is set, or something answers PING on the redis.url of
# config/nerve.yaml (default 127.0.0.1:6379), nerve uses that. Otherwise this
# starts redis-server on a free port in a temporary directory, points nerve
# at it, and stops it (and removes the directory) when nerve exits.
# Usage: tests/lib/run-local.sh ./nerve serve -c config/nerve.yaml [args...]
set -uo pipefail

cfg_url=$(sed -n '/^redis:/,/^[^ ]/s/^ *url: *"\{0,1\}\([^" #]*\).*/\1/p' config/nerve.yaml | head -1)
url=${REDIS_URL:-${cfg_url:-redis://127.0.0.1:6379/0}}
hostport=${url#redis://}; hostport=${hostport##*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=6379

if [ -n "${REDIS_URL:-}" ] || redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
    echo "make run: using redis at $url" >&2
    exec "$@"
fi

dir=$(mktemp -d /tmp/nerve-run.XXXXXX)
redis_pid=
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$(( 20000 + RANDOM % 30000 ))
    # Own session: a Ctrl-C on make run reaches nerve (which stops cleanly)
    # and not redis, which the EXIT trap stops afterwards.
    setsid redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
        --daemonize no >"$dir/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break 2
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; redis_pid=
done
if [ -z "$redis_pid" ]; then
    echo "make run: could not start redis-server (see $dir/redis.log)" >&2
    cat "$dir/redis.log" >&2
    exit 1
fi
echo "make run: started redis-server on 127.0.0.1:$port (dir $dir); it stops when nerve exits" >&2
"$@" --set "redis.url=redis://127.0.0.1:$port/0"
