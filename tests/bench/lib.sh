# lib.sh -- shell helpers shared by run.sh and profile.sh (sourced, not run):
# stopping a process, a bash-only HTTP client, a free port, polling with a
# deadline. One definition, so the two scripts cannot drift apart.
# shellcheck shell=bash
# HTTP_STATUS and HTTP_BODY are read by the scripts that source this:
# shellcheck disable=SC2034

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
