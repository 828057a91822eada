#!/usr/bin/env bash
# deps_graph.sh -- nerve's module dependency graph, read from the #include
# lines, checked against the layer order written down below.
#
#   tests/deps_graph.sh [ROOT]        (ROOT: the source tree, default .)
#
# A module is engine/X.c with include/nerve/X.h; its private pieces belong to
# it (engine/rules_*.c and rules_int.h to rules, config_values.c and
# config_int.h to config, stress_*.c and stress_int.h to stress). Every
# quoted #include in engine/ and include/nerve/ that names another module is
# an edge, and an edge must point DOWN: to a module earlier in LAYERS. The
# script prints every edge (file -> header, then module -> module), marks an
# upward one UPWARD, and exits 1 when there is one, or when a module is
# missing from LAYERS (a new module must be given its place here). The
# STYLE.md rule "modules lower in the flow never include higher ones" is
# this check.
#
# DEPS_LAYERS="..." replaces the order (e.g. to show where an old tree's
# upward edges were).
set -u
root="${1:-.}"

# Low to high. Leaves first (no nerve includes; url is libcurl's URL API,
# for config and panic, never the sale core), then the sale path (rds,
# lock, config, sale), the bus path (queue, bus, rules, live), the actions
# they lead to, the sale gate and the evaluator, the CLI tools, and at the
# top the read side (status: it reads everything), the HTTP edge, the
# daemon that wires it all, reload_cli (`nerve reload`: it reads the
# daemon's pidfile) and main. notify (sd_notify) is a leaf over log.
# rds_cluster (the slot routing of rds.h's clients in redis.mode cluster) is
# its own layer over rds (its connections, rds_int.h) and cluster (the slot
# map): rds.c reaches it only through the rds_route_* hooks of rds_int.h.
layers="${DEPS_LAYERS:-version webui jsonck log clock notify backoff url httpc sku hist salewin scope tslot park sentinel rds mux cluster rds_cluster keys sgroup lock config cli sale queue bus rules live declog
    counters killswitch panic actions policy evaluator ledger stress keys_cli killswitch_cli status conns framing http daemon reload_cli main}"

cd "$root" || exit 2
files=$(ls engine/*.c engine/*.h include/nerve/*.h 2>/dev/null)
[ -n "$files" ] || { echo "deps_graph: no sources under $root" >&2; exit 2; }

# shellcheck disable=SC2086
awk -v layers="$layers" '
function module(path,    b) {
    b = path; sub(/.*\//, "", b); sub(/\.[ch]$/, "", b)
    if (b in rank) return b
    sub(/_.*/, "", b)           # rules_vm -> rules, config_int -> config
    return b
}
BEGIN {
    n = split(layers, L, /[ \t\n]+/)
    k = 0
    for (i = 1; i <= n; i++) if (L[i] != "") rank[L[i]] = ++k
}
FNR == 1 { from = module(FILENAME); mods[from] = 1 }
/^[ \t]*#[ \t]*include[ \t]*"/ {
    h = $0; sub(/^[^"]*"/, "", h); sub(/".*/, "", h)
    to = module(h)
    if (to == from) next
    hdr = h; if (hdr !~ /\//) hdr = "engine/" hdr
    key = FILENAME " -> " hdr
    if (key in seen) next
    seen[key] = 1
    bad = !(from in rank) || !(to in rank) || rank[to] >= rank[from]
    printf "%s%s -> %s  (%s -> %s)\n", bad ? "UPWARD " : "", FILENAME, hdr, from, to
    edges++
    if (bad) upward++
    if (!((from SUBSEP to) in medge)) { medge[from, to] = 1; out[from] = out[from] " " to }
}
END {
    printf "\nlayers, low to high:"
    for (i = 1; i <= n; i++) if (L[i] != "") printf " %s", L[i]
    printf "\n\nmodule graph (each module -> the modules it includes):\n"
    for (i = 1; i <= n; i++) if (L[i] in mods) printf "  %-10s ->%s\n", L[i], out[L[i]]
    for (m in mods) if (!(m in rank)) { printf "  %-10s ->%s   NOT IN LAYERS\n", m, out[m]; unknown++ }
    printf "\ndeps_graph: %d edges, %d upward, %d modules not in the layer list\n", edges, upward, unknown
    exit (upward || unknown) ? 1 : 0
}' $files
