#!/usr/bin/env bash
# make run: start nerve with a local redis-server when none is reachable,
# print a banner once it answers, and stop everything together.
#
# When REDIS_URL is set, or something answers PING on the redis.url of the
# config (-c FILE, default config/nerve.yaml; a --set redis.url=... wins),
# nerve uses that. Otherwise this starts redis-server on a free port in a
# temporary directory, points nerve at it, and stops it (and removes the
# directory) when nerve exits.
#
# nerve runs in its own session, so the terminal's signals reach only this
# wrapper, which passes each on as SIGTERM: Ctrl-C (SIGINT: a background
# child of a script ignores it), SIGTERM, and SIGHUP (the terminal closed),
# which nerve would take for a reload. Then redis stops: nothing is left
# behind.
# Usage: tests/lib/run-local.sh ./nerve serve -c config/nerve.yaml [args...]
set -uo pipefail

# The nerve command line's config file and overrides (the last one wins, as
# in nerve: --set over the environment over the file).
cfg=config/nerve.yaml prev= set_url= set_listen=
for a in "$@"; do
    case $prev in
    -c | --config) cfg=$a ;;
    --set)
        case $a in
        redis.url=*) set_url=${a#redis.url=} ;;
        server.listen=*) set_listen=${a#server.listen=} ;;
        esac ;;
    esac
    case $a in --config=*) cfg=${a#--config=} ;; esac
    prev=$a
done
# yaml_key SECTION KEY: the scalar value of SECTION.KEY in the config.
yaml_key() {
    sed -n "/^$1:/,/^[^ #]/s/^ *$2: *\"\{0,1\}\([^\" #]*\).*/\1/p" "$cfg" 2>/dev/null | head -1
}
url=${set_url:-${REDIS_URL:-$(yaml_key redis url)}}
url=${url:-redis://127.0.0.1:6379/0}
listen=${set_listen:-${NERVE_LISTEN:-$(yaml_key server listen)}}
listen=${listen:-127.0.0.1:8011}
case $listen in 0.0.0.0:*) api=http://127.0.0.1:${listen#*:} ;; \[::\]:*) api=http://[::1]:${listen##*:} ;; *) api=http://$listen ;; esac
hostport=${url#redis://}; hostport=${hostport##*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=6379

dir=
redis_pid=
nerve_pid=
cleanup() {
    if [ -n "$nerve_pid" ] && kill -0 "$nerve_pid" 2>/dev/null; then
        kill -TERM "$nerve_pid" 2>/dev/null
        wait "$nerve_pid" 2>/dev/null
    fi
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    [ -n "$dir" ] && rm -rf "$dir"
}
trap cleanup EXIT
# Before nerve runs: just leave (the EXIT trap cleans up). Replaced below.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

redis_note="redis: $url"
decisions="./nerve decisions --follow"
if [ -n "${REDIS_URL:-}${set_url}" ] || redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
    echo "make run: using redis at $url" >&2
    extra=()
else
    dir=$(mktemp -d /tmp/nerve-run.XXXXXX)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$(( 20000 + RANDOM % 30000 ))
        # Own session: the terminal's signals do not reach it; the EXIT trap
        # stops it after nerve.
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
    echo "make run: started redis-server on 127.0.0.1:$port (pid $redis_pid, dir $dir)" >&2
    redis_note="redis: 127.0.0.1:$port, started for this run (stops with nerve)"
    extra=(--set "redis.url=redis://127.0.0.1:$port/0")
    # Commands that read Redis themselves (nerve decisions) need its URL.
    decisions="REDIS_URL=redis://127.0.0.1:$port/0 ./nerve decisions --follow"
fi

# nerve in its own session (setsid execs in place: $! is nerve's pid).
setsid "$@" "${extra[@]}" &
nerve_pid=$!
stop_sig=
trap 'stop_sig=INT; kill -TERM "$nerve_pid" 2>/dev/null' INT
trap 'stop_sig=TERM; kill -TERM "$nerve_pid" 2>/dev/null' TERM
trap 'stop_sig=HUP; kill -TERM "$nerve_pid" 2>/dev/null' HUP

# The banner once nerve answers (or not at all when it exits first: its own
# message, such as a port in use, is the last thing on the terminal).
banner() {
    local admin="off (set NERVE_ADMIN_TOKEN=... before make run to enable /admin/*)"
    [ -n "${NERVE_ADMIN_TOKEN:-}" ] && admin="on (NERVE_ADMIN_TOKEN is set)"
    # make run ARGS=...: make reload needs the same (make passes them here).
    local reload="make reload"
    [ -n "${NERVE_RUN_ARGS:-}" ] && reload="make reload ARGS='$NERVE_RUN_ARGS'"
    cat >&2 <<EOF

  nerve is serving on $api (pid $nerve_pid)
  $redis_note
  admin API: $admin
  try:
    curl -s $api/stock/demo-sku
    curl -s $api/sale -d '{"sku":"demo-sku","qty":1,"order_id":"try-1"}'
  reload config and rules (another terminal, same directory): $reload
  status: ./nerve status    decisions as they happen: $decisions
  stop: Ctrl-C (closing the terminal stops nerve and its redis too)

EOF
}
for _ in $(seq 1 200); do
    kill -0 "$nerve_pid" 2>/dev/null || break
    if curl -fs -o /dev/null --max-time 1 "$api/healthz" 2>/dev/null; then
        banner
        break
    fi
    sleep 0.05
done

# wait returns early when a trapped signal arrives: wait again while nerve
# runs, then exit with its status (or the signal's conventional one).
# A clean stop (Ctrl-C, the terminal closed) exits 0, as nerve does.
while :; do
    wait "$nerve_pid"
    rc=$?
    kill -0 "$nerve_pid" 2>/dev/null && continue
    # Interrupted, and nerve ended meanwhile: its status is still kept.
    if [ "$rc" -gt 128 ] && [ -n "$stop_sig" ]; then
        wait "$nerve_pid" 2>/dev/null
        r2=$?
        [ "$r2" -ne 127 ] && rc=$r2
    fi
    break
done
nerve_pid=
exit "$rc"
