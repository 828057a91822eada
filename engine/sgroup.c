/* sgroup.c -- consumer-group reader over many streams (see sgroup.h).
 *
 * All state lives with the one thread that reads: the connections (one, or
 * one per cluster primary), the cursors of the pending pass and of
 * XAUTOCLAIM, and the few entries one read returned beyond what the caller
 * could take (the backlog). Only the counters are atomics, for sg_get_stats.
 *
 * Every command goes to the connection of its stream's node; commands for
 * several nodes are all written before any reply is read, so a pass over
 * the nodes costs one round trip, not one per node. The connections live
 * and die together: any failure drops them all, and the next connect
 * fetches the slot map again (cluster) and reads the pending list again.
 */
#include "nerve/sgroup.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/cluster.h"
#include "nerve/log.h"

/* How often the streams are checked for entries trimmed before the group
 * read them (check_gaps). */
#define GAP_CHECK_NS 5000000000ull

typedef struct stream_state {
    char *key;
    int slot;             /* cl_keyslot (cluster), -1 (standalone: one group) */
    size_t conn;          /* index in sg.nc of the node that serves it */
    char pend_cursor[48]; /* the pending pass: last id handed out ("0" first) */
    bool pend_done;
    char claim_cursor[48]; /* XAUTOCLAIM's cursor ("0-0": from the start) */
    uint64_t claim_next_ns;
    bool more;              /* the last ">" read filled COUNT: more may be waiting */
    long long gap_reported; /* entries-added - length when a gap was last reported */
} stream_state;

/* One node's connection: the server (standalone), or a primary (cluster). */
typedef struct node_conn {
    rds_opts ro; /* its host and port; kept after a drop as a seed to try */
    redisContext *c;
} node_conn;

struct sg {
    rds_opts ro; /* the server, or the cluster node asked for the slot map */
    bool cluster;
    stream_state *s;
    size_t n;
    char *group, *consumer;
    int claim_idle_ms;
    int poll_ms; /* cluster mode: the pause between two polls of every group */
    size_t max_bytes;
    char *field; /* sg_opts.field, "event" by default */

    node_conn *nc; /* connections, one per node serving a stream */
    size_t nnc;
    /* Slot groups: group k is the streams order[gstart[k] .. gstart[k + 1]),
     * all of one slot (cluster) or every stream (standalone), the most one
     * command may name. */
    size_t *order, *gstart, ngrp;
    bool up; /* every connection is open */
    bool ever_connected;
    int fails;
    uint64_t retry_at_ns;
    bool pending_pass; /* own pending entries not yet all read since the connect */
    bool late_error;   /* an error happened while entries were left to hand out */

    sg_msg *back; /* entries read beyond what the caller took */
    size_t nback, backhead, backcap;

    char err[1024];
    uint64_t gap_next_ns; /* next check_gaps */
    _Atomic uint64_t reads, messages, claimed, acked, skipped, oversized, deleted, created,
        reconnects, errors, gaps;
    _Atomic int connected;
};

#define ADD(g, f, v) atomic_fetch_add_explicit(&(g)->f, (uint64_t)(v), memory_order_relaxed)

static void set_err(sg *g, const char *what, const char *detail) {
    snprintf(g->err, sizeof g->err, "%.100s: %.800s", what,
             detail && detail[0] ? detail : "failed");
}

/* ---- open / close ------------------------------------------------------------- */

sg *sg_open(const sg_opts *o, char *err, size_t errlen) {
    if (!o->n_streams || !o->streams || !o->group || !o->group[0] || !o->consumer ||
        !o->consumer[0]) {
        snprintf(err, errlen, "consumer group reader: needs streams, a group and a consumer name");
        return NULL;
    }
    sg *g = calloc(1, sizeof *g);
    if (!g) goto oom;
    g->ro = o->redis;
    g->cluster = o->redis.cluster != 0;
    g->n = o->n_streams;
    g->claim_idle_ms = o->claim_idle_ms;
    g->poll_ms = o->poll_ms > 0 ? o->poll_ms : SG_CLUSTER_POLL_MS;
    g->max_bytes = o->max_event_bytes;
    g->s = calloc(g->n, sizeof *g->s);
    g->order = calloc(g->n, sizeof *g->order);
    g->gstart = calloc(g->n + 1, sizeof *g->gstart);
    g->group = strdup(o->group);
    g->consumer = strdup(o->consumer);
    g->field = strdup(o->field ? o->field : "event");
    if (!g->s || !g->order || !g->gstart || !g->group || !g->consumer || !g->field) goto oom;
    for (size_t i = 0; i < g->n; i++)
        if (!(g->s[i].key = strdup(o->streams[i]))) goto oom;
    return g;
oom:
    snprintf(err, errlen, "out of memory");
    sg_close(g);
    return NULL;
}

static void close_conns(sg *g) {
    for (size_t i = 0; i < g->nnc; i++) {
        if (g->nc[i].c) redisFree(g->nc[i].c);
        g->nc[i].c = NULL;
    }
    g->up = false;
    atomic_store(&g->connected, 0);
}

static void drop_conn(sg *g) {
    close_conns(g);
    if (g->fails < 64) g->fails++;
    backoff_policy bp = { 10, g->ro.reconnect_max_ms > 0 ? g->ro.reconnect_max_ms : 2000, 2.0,
                          BACKOFF_JITTER_EQUAL };
    g->retry_at_ns = clock_now_ns() + (uint64_t)backoff_delay(&bp, g->fails) * 1000000u;
}

/* The connection of stream SI's node. */
static redisContext *ctx(const sg *g, size_t si) {
    return g->nc[g->s[si].conn].c;
}

void sg_msgs_free(sg_msg *m, size_t n) {
    for (size_t i = 0; m && i < n; i++) {
        free(m[i].event);
        m[i].event = NULL;
    }
}

/* A consumer's name is the instance id (host:pid): without this, every
 * restart would leave one more consumer in XINFO CONSUMERS for ever. It is
 * removed only from the streams where it holds no pending entry: DELCONSUMER
 * drops a consumer's pending entries, which another consumer must still be
 * able to claim. Best effort: an error just leaves the name. */
static void forget_consumer(sg *g) {
    for (size_t i = 0; g->up && i < g->n; i++) {
        redisReply *r = redisCommand(ctx(g, i), "XPENDING %s %s - + 1 %s", g->s[i].key, g->group,
                                     g->consumer);
        bool none = r && r->type == REDIS_REPLY_ARRAY && r->elements == 0;
        freeReplyObject(r);
        if (!r) return;
        if (!none) continue;
        r = redisCommand(ctx(g, i), "XGROUP DELCONSUMER %s %s %s", g->s[i].key, g->group,
                         g->consumer);
        freeReplyObject(r);
        if (!r) return;
    }
}

void sg_close(sg *g) {
    if (!g) return;
    /* Whatever the caller still had to hand out goes back to the group. */
    if (g->up && g->nback == g->backhead) forget_consumer(g);
    close_conns(g);
    free(g->nc);
    for (size_t i = 0; g->s && i < g->n; i++) free(g->s[i].key);
    free(g->s);
    free(g->order);
    free(g->gstart);
    sg_msgs_free(g->back + g->backhead, g->nback - g->backhead);
    free(g->back);
    free(g->group);
    free(g->consumer);
    free(g->field);
    free(g);
}

const char *sg_errstr(const sg *g) {
    return g->err;
}

void sg_get_stats(sg *g, sg_stats *out) {
    memset(out, 0, sizeof *out);
    if (!g) return;
    out->reads = atomic_load(&g->reads);
    out->messages = atomic_load(&g->messages);
    out->claimed = atomic_load(&g->claimed);
    out->acked = atomic_load(&g->acked);
    out->skipped = atomic_load(&g->skipped);
    out->oversized = atomic_load(&g->oversized);
    out->deleted = atomic_load(&g->deleted);
    out->groups_created = atomic_load(&g->created);
    out->reconnects = atomic_load(&g->reconnects);
    out->errors = atomic_load(&g->errors);
    out->gaps = atomic_load(&g->gaps);
    out->connected = atomic_load(&g->connected);
}

/* ---- pipelining over the nodes ----------------------------------------------------- */

static struct timeval tv_ms(long long ms) {
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    return tv;
}

/* Queue a command on connection CONN. 0, or -1 with every connection
 * dropped (g->err says why). */
static int append(sg *g, size_t conn, int argc, const char **argv, const char *what) {
    if (redisAppendCommandArgv(g->nc[conn].c, argc, argv, NULL) == REDIS_OK) return 0;
    set_err(g, what, g->nc[conn].c->errstr);
    drop_conn(g);
    return -1;
}

/* Write what every connection has queued before any reply is read: the
 * nodes work on their share at the same time, one round trip in all. */
static int flush_all(sg *g, const char *what) {
    for (size_t i = 0; i < g->nnc; i++) {
        int done = 0;
        while (!done)
            if (redisBufferWrite(g->nc[i].c, &done) != REDIS_OK) {
                set_err(g, what, g->nc[i].c->errstr);
                drop_conn(g);
                return -1;
            }
    }
    return 0;
}

/* The next reply on connection CONN, NULL with every connection dropped
 * (the replies still due are lost with them). */
static redisReply *reply(sg *g, size_t conn, const char *what) {
    redisReply *r = NULL;
    if (redisGetReply(g->nc[conn].c, (void **)&r) == REDIS_OK && r) return r;
    set_err(g, what, g->nc[conn].c->errstr);
    drop_conn(g);
    return NULL;
}

/* An error reply that says the slot map is stale or the cluster is not
 * serving (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): the connections are dropped
 * so that the next connect fetches the map again. A reader does not follow
 * redirects itself; it reconnects (backoff.h) and reads its pending list
 * again, which is what a lost connection costs anyway. */
static bool map_error(const redisReply *r) {
    static const char *const pre[] = { "MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN" };
    if (r->type != REDIS_REPLY_ERROR) return false;
    for (size_t i = 0; i < sizeof pre / sizeof *pre; i++)
        if (strncmp(r->str, pre[i], strlen(pre[i])) == 0) return true;
    return false;
}

/* ---- connection and groups ---------------------------------------------------- */

/* XGROUP CREATE key group 0 MKSTREAM for every stream, pipelined. Id 0: a
 * new group starts at the first entry, so what was appended while no
 * consumer ran is read too. 0, or -1 with g->err set (the connections kept
 * only when Redis answered). */
static int create_groups(sg *g) {
    for (size_t i = 0; i < g->n; i++) {
        const char *argv[] = { "XGROUP", "CREATE", g->s[i].key, g->group, "0", "MKSTREAM" };
        if (append(g, g->s[i].conn, 6, argv, "XGROUP CREATE")) return -1;
    }
    if (flush_all(g, "XGROUP CREATE")) return -1;
    int rc = 0;
    for (size_t i = 0; i < g->n; i++) {
        redisReply *r = reply(g, g->s[i].conn, "XGROUP CREATE");
        if (!r) return -1;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
            if (rc == 0)
                snprintf(g->err, sizeof g->err, "XGROUP CREATE %.300s %.100s: %.100s", g->s[i].key,
                         g->group, r->str);
            rc = -1;
        } else if (r->type != REDIS_REPLY_ERROR) {
            ADD(g, created, 1);
        }
        freeReplyObject(r);
    }
    return rc;
}

static int node_conn_room(sg *g, size_t n) {
    if (n <= g->nnc) return 0;
    node_conn *nc = realloc(g->nc, n * sizeof *nc);
    if (!nc) return -1;
    memset(nc + g->nnc, 0, (n - g->nnc) * sizeof *nc);
    g->nc = nc;
    return 0;
}

/* The slot map, asked of the nodes this reader used last (a failover or a
 * migration leaves most of them serving), then of the configured node
 * (first, at the first connect; it may be the one that is down later).
 * NULL with why in g->err. */
static cl_map *fetch_map(sg *g) {
    size_t nseeds = 1 + g->nnc;
    for (size_t i = 0; i < nseeds; i++) {
        const rds_opts *o = i < g->nnc ? &g->nc[i].ro : &g->ro;
        char err[256];
        redisContext *c = rds_connect(o, err, sizeof err);
        if (!c) {
            set_err(g, "stream reader", err);
            continue;
        }
        redisReply *r = redisCommand(c, "CLUSTER SLOTS");
        cl_map *m = NULL;
        if (!r)
            set_err(g, "stream reader: CLUSTER SLOTS", c->errstr);
        else if (r->type == REDIS_REPLY_ERROR)
            snprintf(g->err, sizeof g->err,
                     "stream reader: CLUSTER SLOTS at %.256s:%d: %.300s (redis.mode is cluster: is "
                     "this a cluster node?)",
                     o->host, o->port, r->str);
        else if (!(m = cl_map_from_reply(r, o->host, err, sizeof err)))
            set_err(g, "stream reader: CLUSTER SLOTS", err);
        freeReplyObject(r);
        redisFree(c);
        if (m) return m;
    }
    return NULL;
}

/* Which connection serves each stream: the one server, or (cluster) the
 * primary of the stream's slot in a fresh slot map. 0, or -1 (g->err). */
static int place_streams(sg *g) {
    if (!g->cluster) {
        if (node_conn_room(g, 1)) goto oom;
        g->nnc = 1;
        g->nc[0].ro = g->ro;
        for (size_t i = 0; i < g->n; i++) g->s[i].slot = -1, g->s[i].conn = 0;
        return 0;
    }
    cl_map *m = fetch_map(g);
    if (!m) return -1;
    int nn = cl_map_nnodes(m);
    size_t *conn_of = malloc((size_t)(nn > 0 ? nn : 1) * sizeof *conn_of);
    node_conn *nc = calloc(g->n, sizeof *nc); /* at most one node per stream */
    size_t nnc = 0;
    int rc = -1;
    if (!conn_of || !nc) {
        set_err(g, "stream reader", "out of memory");
        goto out;
    }
    for (int k = 0; k < nn; k++) conn_of[k] = SIZE_MAX;
    for (size_t i = 0; i < g->n; i++) {
        g->s[i].slot = cl_keyslot(g->s[i].key, strlen(g->s[i].key));
        int k = cl_map_node_index(m, g->s[i].slot);
        if (k < 0) {
            snprintf(g->err, sizeof g->err,
                     "stream reader: slot %d of stream %.300s is served by no node (the cluster "
                     "does not cover every slot)",
                     g->s[i].slot, g->s[i].key);
            goto out;
        }
        if (conn_of[k] == SIZE_MAX) {
            const cl_addr *a = &cl_map_node_at(m, k)->primary;
            nc[nnc].ro = g->ro;
            snprintf(nc[nnc].ro.host, sizeof nc[nnc].ro.host, "%s", a->host);
            nc[nnc].ro.port = a->port;
            conn_of[k] = nnc++;
        }
        g->s[i].conn = conn_of[k];
    }
    free(g->nc);
    g->nc = nc;
    g->nnc = nnc;
    nc = NULL;
    rc = 0;
out:
    free(conn_of);
    free(nc);
    cl_map_free(m);
    return rc;
oom:
    set_err(g, "stream reader", "out of memory");
    return -1;
}

/* The slot groups: the streams ordered by slot (insertion sort, stable: a
 * connect-time cost over at most a few thousand streams, no allocation),
 * cut where the slot changes. */
static void make_groups(sg *g) {
    for (size_t i = 0; i < g->n; i++) {
        size_t v = g->order[i] = i, j = i;
        for (; j > 0 && g->s[g->order[j - 1]].slot > g->s[v].slot; j--)
            g->order[j] = g->order[j - 1];
        g->order[j] = v;
    }
    g->ngrp = 0;
    for (size_t i = 0; i < g->n; i++)
        if (i == 0 || g->s[g->order[i]].slot != g->s[g->order[i - 1]].slot)
            g->gstart[g->ngrp++] = i;
    g->gstart[g->ngrp] = g->n;
}

/* Connect when there is no connection and the backoff allows, waiting up
 * to WAIT_MS for it. 0 connected, -1 not (g->err). */
static int ensure_conn(sg *g, int wait_ms) {
    if (g->up) return 0;
    uint64_t now = clock_now_ns();
    if (now < g->retry_at_ns) {
        uint64_t left = g->retry_at_ns - now;
        if (left > (uint64_t)wait_ms * 1000000u) {
            struct timespec ts = { wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L };
            nanosleep(&ts, NULL);
            return -1; /* g->err still says why the last attempt failed */
        }
        struct timespec ts = { (time_t)(left / 1000000000u), (long)(left % 1000000000u) };
        nanosleep(&ts, NULL);
    }
    if (place_streams(g) != 0) {
        drop_conn(g);
        return -1;
    }
    make_groups(g);
    for (size_t i = 0; i < g->nnc; i++) {
        char err[256];
        if (!(g->nc[i].c = rds_connect(&g->nc[i].ro, err, sizeof err))) {
            set_err(g, "stream reader", err);
            drop_conn(g);
            return -1;
        }
    }
    g->up = true;
    if (create_groups(g) != 0) {
        drop_conn(g);
        return -1;
    }
    if (g->ever_connected) ADD(g, reconnects, 1);
    g->ever_connected = true;
    g->fails = 0;
    g->err[0] = 0;
    atomic_store(&g->connected, 1);
    /* Entries handed to this consumer before a lost connection may never
     * have reached it: read its pending list again, then claim at once. */
    g->pending_pass = true;
    for (size_t i = 0; i < g->n; i++) {
        strcpy(g->s[i].pend_cursor, "0");
        g->s[i].pend_done = false;
        strcpy(g->s[i].claim_cursor, "0-0");
        g->s[i].claim_next_ns = 0;
        g->s[i].more = false;
    }
    return 0;
}

/* ---- entries ------------------------------------------------------------------- */

/* Room for one more entry in the backlog. */
static int back_reserve(sg *g) {
    if (g->backhead == g->nback) g->backhead = g->nback = 0;
    if (g->nback < g->backcap) return 0;
    size_t cap = g->backcap ? g->backcap * 2 : 64;
    sg_msg *m = realloc(g->back, cap * sizeof *m);
    if (!m) return -1;
    g->back = m;
    g->backcap = cap;
    return 0;
}

/* Entries to acknowledge without handing them out (no event, too large, gone). */
typedef struct drops {
    size_t stream[64];
    char id[64][48];
    size_t n;
} drops;

static int flush_drops(sg *g, drops *d);

static int drop_entry(sg *g, drops *d, size_t si, const char *id) {
    if (d->n == 64 && flush_drops(g, d) != 0) return -1;
    d->stream[d->n] = si;
    snprintf(d->id[d->n], sizeof d->id[d->n], "%s", id);
    d->n++;
    return 0;
}

static uint64_t id_ms_of(const char *id) {
    char *end;
    unsigned long long v = strtoull(id, &end, 10);
    return end != id ? (uint64_t)v : 0;
}

/* One stream entry [id, [field, value, ...]] (fields nil: the entry was
 * deleted while pending) into the backlog or DROPS. */
static int take_entry(sg *g, drops *d, size_t si, const redisReply *e, int claimed) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const char *id = e->element[0]->str;
    const redisReply *f = e->element[1];
    if (f->type != REDIS_REPLY_ARRAY) { /* deleted (trimmed) while pending */
        ADD(g, deleted, 1);
        return drop_entry(g, d, si, id);
    }
    const redisReply *ev = NULL;
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
        const redisReply *name = f->element[k];
        if (name->type == REDIS_REPLY_STRING && name->len == strlen(g->field) &&
            memcmp(name->str, g->field, name->len) == 0 &&
            f->element[k + 1]->type == REDIS_REPLY_STRING) {
            ev = f->element[k + 1];
            break;
        }
    }
    if (!ev) {
        ADD(g, skipped, 1);
        return drop_entry(g, d, si, id);
    }
    if (g->max_bytes && ev->len > g->max_bytes) {
        ADD(g, oversized, 1);
        return drop_entry(g, d, si, id);
    }
    if (back_reserve(g) != 0) return -1;
    sg_msg *m = &g->back[g->nback];
    memset(m, 0, sizeof *m);
    m->stream = g->s[si].key;
    m->stream_idx = si;
    snprintf(m->id, sizeof m->id, "%s", id);
    m->id_ms = id_ms_of(id);
    m->claimed = claimed;
    if (!(m->event = malloc(ev->len + 1))) return -1;
    memcpy(m->event, ev->str, ev->len);
    m->event[ev->len] = 0;
    m->len = ev->len;
    g->nback++;
    if (claimed) ADD(g, claimed, 1);
    return 0;
}

static size_t stream_index(const sg *g, const redisReply *key) {
    for (size_t i = 0; i < g->n; i++)
        if (strlen(g->s[i].key) == key->len && memcmp(g->s[i].key, key->str, key->len) == 0)
            return i;
    return g->n;
}


/* ---- acknowledgements ------------------------------------------------------------ */

typedef struct ack_pair {
    const char *stream, *id;
    size_t si; /* the stream's index in the sg; SIZE_MAX for a caller's client */
} ack_pair;

static int by_stream(const void *a, const void *b) {
    const ack_pair *x = a, *y = b;
    return strcmp(x->stream, y->stream);
}

/* Pipelined XACKs, one per stream of the N entries P (sorted here). With
 * RC NULL they go on the sg's own connections (each to its stream's node),
 * else on the caller's client RC, which routes each by its key. The entries
 * are sorted by stream first: a batch of sales alternates between the sale
 * and stock streams of 16 partitions, and one XACK per run of consecutive
 * entries was nearly one XACK per entry (Redis commandstats, issue 12). One
 * key per XACK: nothing here spans slots. */
static int xack(sg *g, rds_client *rc, const char *group, ack_pair *p, size_t n) {
    if (!n) return 0;
    if (!rc && !g->up) {
        set_err(g, "XACK", "not connected");
        return -1;
    }
    const char **argv = malloc((n + 3) * sizeof *argv);
    size_t *conn = malloc(n * sizeof *conn); /* the connection of each XACK sent (own) */
    if (!argv || !conn) {
        free(argv);
        free(conn);
        if (!rc) set_err(g, "XACK", "out of memory");
        return -1;
    }
    qsort(p, n, sizeof *p, by_stream);
    size_t cmds = 0, i = 0;
    int rc_ = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && strcmp(p[j].stream, p[i].stream) == 0) j++;
        argv[0] = "XACK";
        argv[1] = p[i].stream;
        argv[2] = group;
        for (size_t k = i; k < j; k++) argv[3 + k - i] = p[k].id;
        int argc = (int)(3 + j - i);
        if (rc) {
            if (rds_appendargv(rc, argc, argv, NULL) != 0) {
                rc_ = -1;
                break;
            }
        } else {
            conn[cmds] = p[i].si < g->n ? g->s[p[i].si].conn : 0;
            if (append(g, conn[cmds], argc, argv, "XACK")) {
                free(argv);
                free(conn);
                return -1; /* every connection dropped: nothing to read */
            }
        }
        cmds++;
        i = j;
    }
    free(argv);
    if (!rc && flush_all(g, "XACK")) {
        free(conn);
        return -1;
    }
    uint64_t acked = 0;
    for (size_t k = 0; k < cmds; k++) {
        redisReply *r = rc ? rds_get_reply(rc) : reply(g, conn[k], "XACK");
        if (!r) {
            free(conn);
            return -1; /* the connection is gone with every reply still pending */
        }
        if (r->type == REDIS_REPLY_INTEGER) {
            acked += (uint64_t)r->integer;
        } else {
            if (!rc && rc_ == 0) set_err(g, "XACK", r->type == REDIS_REPLY_ERROR ? r->str : NULL);
            if (!rc && map_error(r)) {
                freeReplyObject(r);
                drop_conn(g);
                free(conn);
                return -1;
            }
            rc_ = -1;
        }
        freeReplyObject(r);
    }
    free(conn);
    if (g) ADD(g, acked, acked);
    return rc_;
}

static int flush_drops(sg *g, drops *d) {
    ack_pair p[64];
    for (size_t i = 0; i < d->n; i++)
        p[i] = (ack_pair){ g->s[d->stream[i]].key, d->id[i], d->stream[i] };
    size_t n = d->n;
    d->n = 0;
    return xack(g, NULL, g->group, p, n);
}

int sg_ack(sg *g, const sg_msg *m, size_t n) {
    if (!n) return 0;
    if (!g->up) {
        set_err(g, "XACK", "not connected");
        ADD(g, errors, 1);
        return -1;
    }
    ack_pair *p = malloc(n * sizeof *p);
    int rc = -1;
    if (p) {
        for (size_t i = 0; i < n; i++) {
            size_t si = m[i].stream_idx < g->n ? m[i].stream_idx : 0;
            p[i] = (ack_pair){ g->s[si].key, m[i].id, si };
        }
        rc = xack(g, NULL, g->group, p, n);
    } else {
        set_err(g, "XACK", "out of memory");
    }
    free(p);
    if (rc) ADD(g, errors, 1);
    return rc;
}

int sg_ack_client(sg *g, rds_client *c, const char *group, const char *const *streams,
                  const char *const *ids, size_t n) {
    if (!n) return 0;
    ack_pair *p = malloc(n * sizeof *p);
    if (!p) return -1;
    for (size_t i = 0; i < n; i++) p[i] = (ack_pair){ streams[i], ids[i], SIZE_MAX };
    int rc = xack(g, c, group, p, n);
    free(p);
    return rc;
}

/* ---- reads ------------------------------------------------------------------------ */

/* Parse an XREADGROUP reply [[key, [entry...]]...] into the backlog. With
 * PENDING, advance the pending pass' cursors; else note the streams whose
 * COUNT was filled. */
static int take_read(sg *g, const redisReply *r, drops *d, size_t count, bool pending) {
    if (r->type != REDIS_REPLY_ARRAY) return 0; /* nil: nothing arrived in time */
    for (size_t k = 0; k < r->elements; k++) {
        const redisReply *sr = r->element[k];
        if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
            sr->element[0]->type != REDIS_REPLY_STRING)
            continue;
        size_t si = stream_index(g, sr->element[0]);
        const redisReply *es = sr->element[1];
        if (si == g->n || es->type != REDIS_REPLY_ARRAY) continue;
        for (size_t j = 0; j < es->elements; j++)
            if (take_entry(g, d, si, es->element[j], 0) != 0) return -1;
        stream_state *s = &g->s[si];
        if (pending) {
            const redisReply *last = es->elements ? es->element[es->elements - 1] : NULL;
            if (es->elements < count || !last || last->type != REDIS_REPLY_ARRAY ||
                !last->elements || last->element[0]->type != REDIS_REPLY_STRING)
                s->pend_done = true;
            else
                snprintf(s->pend_cursor, sizeof s->pend_cursor, "%s", last->element[0]->str);
        } else {
            s->more = es->elements >= count;
        }
    }
    return 0;
}

static void free_replies(redisReply **r, size_t n) {
    for (size_t i = 0; i < n; i++) {
        freeReplyObject(r[i]);
        r[i] = NULL;
    }
}

/* Queue one XREADGROUP over the streams of group K that SEL marks, with
 * their pending cursors (PENDING) or ">", BLOCK_MS < 0: no BLOCK. 1 queued,
 * 0 nothing of the group selected, -1 (connections dropped). */
static int queue_read(sg *g, size_t k, const bool *sel, bool pending, size_t count, int block_ms) {
    size_t first = g->gstart[k], end = g->gstart[k + 1], m = 0;
    for (size_t i = first; i < end; i++) m += sel[g->order[i]];
    if (!m) return 0;
    const char **argv = malloc((10 + 2 * m) * sizeof *argv);
    if (!argv) {
        set_err(g, "XREADGROUP", "out of memory");
        drop_conn(g); /* other groups may be queued already: out of step */
        return -1;
    }
    char cnt[24], blk[24];
    snprintf(cnt, sizeof cnt, "%zu", count);
    snprintf(blk, sizeof blk, "%d", block_ms);
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = g->group;
    argv[argc++] = g->consumer;
    argv[argc++] = "COUNT";
    argv[argc++] = cnt;
    if (block_ms >= 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blk;
    }
    argv[argc++] = "STREAMS";
    for (size_t i = first; i < end; i++)
        if (sel[g->order[i]]) argv[argc++] = g->s[g->order[i]].key;
    for (size_t i = first; i < end; i++)
        if (sel[g->order[i]]) argv[argc++] = pending ? g->s[g->order[i]].pend_cursor : ">";
    ADD(g, reads, 1);
    int rc = append(g, g->s[g->order[first]].conn, argc, argv, "XREADGROUP");
    free(argv);
    return rc ? -1 : 1;
}

/* XREADGROUP over the streams SEL marks: one command per slot group (one in
 * all in standalone), all queued on their nodes' connections before any
 * reply is read. With PENDING the streams a reply leaves out have nothing
 * pending (pend_done). BLOCK_MS >= 0 only when one group is selected (a
 * blocked command holds its connection). NOGROUP (a stream or group deleted
 * under us) makes the groups again and retries those groups once. The
 * entries go to the backlog; 0, or -1 on an error (g->err; the connections
 * dropped when one failed or the slot map is stale). */
static int read_groups(sg *g, const bool *sel, bool pending, size_t count, int block_ms, drops *d) {
    bool *sent = calloc(g->ngrp, sizeof *sent), *again = calloc(g->ngrp, sizeof *again);
    redisReply **reps = calloc(g->ngrp, sizeof *reps);
    int rc = 0;
    if (!sent || !again || !reps) {
        set_err(g, "XREADGROUP", "out of memory");
        rc = -1;
        goto out;
    }
    for (int attempt = 0; attempt < 2 && rc == 0; attempt++) {
        size_t nsent = 0, blocked = SIZE_MAX;
        for (size_t k = 0; k < g->ngrp; k++) {
            if (attempt && !again[k]) {
                sent[k] = false;
                continue;
            }
            int q = queue_read(g, k, sel, pending, count, block_ms);
            if (q < 0) {
                rc = -1;
                goto out;
            }
            sent[k] = q == 1;
            nsent += sent[k];
            if (sent[k] && block_ms >= 0) blocked = k;
        }
        if (!nsent) break;
        redisContext *bc = blocked != SIZE_MAX ? ctx(g, g->order[g->gstart[blocked]]) : NULL;
        if (bc) redisSetTimeout(bc, tv_ms((long long)g->ro.command_timeout_ms + block_ms));
        if (flush_all(g, "XREADGROUP")) {
            rc = -1;
            goto out;
        }
        /* Every reply first: an entry dropped while parsing is acknowledged
         * on these same connections, which must not interleave with the
         * replies still due. */
        for (size_t k = 0; k < g->ngrp; k++)
            if (sent[k] && !(reps[k] = reply(g, g->s[g->order[g->gstart[k]]].conn, "XREADGROUP"))) {
                rc = -1;
                goto out;
            }
        bool nogroup = false, stale = false;
        for (size_t k = 0; k < g->ngrp; k++) {
            again[k] = false;
            redisReply *r = reps[k];
            if (!r) continue;
            size_t first = g->gstart[k], end = g->gstart[k + 1];
            if (r->type == REDIS_REPLY_ERROR) {
                if (strncmp(r->str, "NOGROUP", 7) == 0 && !attempt) {
                    again[k] = nogroup = true;
                } else {
                    set_err(g, "XREADGROUP", r->str);
                    stale |= map_error(r);
                    rc = -1;
                }
                continue;
            }
            if (pending) {
                /* A stream missing from the answer has nothing pending. */
                for (size_t i = first; i < end; i++)
                    if (sel[g->order[i]]) g->s[g->order[i]].pend_done = true;
                for (size_t e = 0; r->type == REDIS_REPLY_ARRAY && e < r->elements; e++) {
                    const redisReply *sr = r->element[e];
                    if (sr->type == REDIS_REPLY_ARRAY && sr->elements == 2 &&
                        sr->element[0]->type == REDIS_REPLY_STRING) {
                        size_t si = stream_index(g, sr->element[0]);
                        if (si < g->n) g->s[si].pend_done = false;
                    }
                }
            }
            if (take_read(g, r, d, count, pending) != 0) {
                if (!g->err[0]) set_err(g, "XREADGROUP", "out of memory");
                rc = -1;
            }
        }
        free_replies(reps, g->ngrp);
        if (bc && g->up) redisSetTimeout(bc, tv_ms(g->ro.command_timeout_ms));
        if (stale) {
            drop_conn(g);
            goto out;
        }
        if (!nogroup) break;
        if (create_groups(g) != 0) {
            rc = -1;
            goto out;
        }
    }
out:
    if (reps) free_replies(reps, g->ngrp);
    free(reps);
    free(sent);
    free(again);
    return rc;
}

static size_t per_stream(size_t max, size_t nsel) {
    size_t c = nsel ? max / nsel : max;
    return c ? c : 1;
}

/* The pending pass: this consumer's own unacknowledged entries (id 0, then
 * after the last one handed out), streams not yet done only. */
static int read_pending(sg *g, size_t max, drops *d) {
    bool *sel = malloc(g->n * sizeof *sel);
    if (!sel) {
        set_err(g, "XREADGROUP", "out of memory");
        return -1;
    }
    size_t nsel = 0;
    for (size_t i = 0; i < g->n; i++) nsel += sel[i] = !g->s[i].pend_done;
    int rc = 0;
    if (nsel) rc = read_groups(g, sel, true, per_stream(max, nsel), -1, d);
    free(sel);
    g->pending_pass = false;
    for (size_t i = 0; i < g->n; i++)
        if (!g->s[i].pend_done) g->pending_pass = true;
    return rc;
}

/* XAUTOCLAIM on every stream whose turn has come, pipelined: entries of any
 * consumer idle for claim_idle_ms. */
static int claim_due(sg *g, size_t max, drops *d) {
    if (g->claim_idle_ms <= 0) return 0;
    uint64_t now = clock_now_ns();
    size_t *sel = malloc(g->n * sizeof *sel), nsel = 0;
    if (!sel) return -1;
    for (size_t i = 0; i < g->n; i++)
        if (now >= g->s[i].claim_next_ns) sel[nsel++] = i;
    int rc = 0;
    redisReply **reps = NULL;
    if (!nsel) goto out;
    char idle[24], cnt[24];
    snprintf(idle, sizeof idle, "%d", g->claim_idle_ms);
    snprintf(cnt, sizeof cnt, "%zu", per_stream(max, nsel));
    for (size_t i = 0; i < nsel; i++) {
        const char *argv[] = { "XAUTOCLAIM", g->s[sel[i]].key,          g->group, g->consumer,
                               idle,         g->s[sel[i]].claim_cursor, "COUNT",  cnt };
        ADD(g, reads, 1);
        if (append(g, g->s[sel[i]].conn, 8, argv, "XAUTOCLAIM")) {
            rc = -1;
            goto out;
        }
    }
    /* Every reply first: dropping an entry acknowledges it on these same
     * connections, which must not interleave with the replies still due. */
    if (!(reps = calloc(nsel, sizeof *reps))) {
        /* The replies are due on the connections: they are out of step now. */
        set_err(g, "XAUTOCLAIM", "out of memory");
        drop_conn(g);
        rc = -1;
        goto out;
    }
    if (flush_all(g, "XAUTOCLAIM")) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < nsel; i++)
        if (!(reps[i] = reply(g, g->s[sel[i]].conn, "XAUTOCLAIM"))) {
            rc = -1;
            goto out;
        }
    bool stale = false;
    for (size_t i = 0; rc == 0 && i < nsel; i++) {
        stream_state *s = &g->s[sel[i]];
        const redisReply *r = reps[i];
        /* [next cursor, [entry...], [deleted id...] (Redis 7)] */
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
            r->element[0]->type == REDIS_REPLY_STRING) {
            const redisReply *es = r->element[1];
            for (size_t j = 0; es->type == REDIS_REPLY_ARRAY && j < es->elements; j++)
                if (rc == 0 && take_entry(g, d, sel[i], es->element[j], 1) != 0) rc = -1;
            if (r->elements >= 3 && r->element[2]->type == REDIS_REPLY_ARRAY)
                ADD(g, deleted, r->element[2]->elements);
            snprintf(s->claim_cursor, sizeof s->claim_cursor, "%s", r->element[0]->str);
        } else if (r->type == REDIS_REPLY_ERROR) {
            /* NOGROUP here is repaired by the next XREADGROUP. */
            snprintf(g->err, sizeof g->err, "XAUTOCLAIM %.300s: %.200s", s->key, r->str);
            strcpy(s->claim_cursor, "0-0");
            stale |= map_error(r);
        }
        /* A full scan done: wait half the idle time before the next one. */
        if (strcmp(s->claim_cursor, "0-0") == 0)
            s->claim_next_ns = now + (uint64_t)g->claim_idle_ms * 500000u;
    }
    if (stale && rc == 0) {
        drop_conn(g);
        rc = -1;
    }
out:
    for (size_t i = 0; reps && i < nsel; i++) freeReplyObject(reps[i]);
    free(reps);
    free(sel);
    return rc;
}

/* The reply value of KEY in a flat RESP2 map R, NULL when absent. */
static const redisReply *map_get(const redisReply *r, const char *key) {
    if (!r || r->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, key) == 0)
            return r->element[i + 1];
    return NULL;
}

static long long map_int(const redisReply *r, const char *key) {
    const redisReply *v = map_get(r, key);
    return v && v->type == REDIS_REPLY_INTEGER ? v->integer : -1;
}

/* Entries trimmed before the group read them. XADD MAXLEN ~ trims whether
 * or not a group has read an entry (Redis 7.0 has no trimming that waits
 * for groups), so a consumer that falls further behind than the cap (the
 * ledger's database down for long at a high sale rate) would lose entries
 * silently -- unless it looks. The group's lag (entries added after the
 * last one it read, XINFO GROUPS) above the stream's length means entries
 * it never read were trimmed. Checked every GAP_CHECK_NS and before the
 * first read after a pause, so before the reader skips over the hole; once
 * it has read past it Redis counts them as read. Not detectable when the
 * group never read the stream (Redis then reports no lag). Logged as an
 * error and counted, once per new trim point. -1 when the connection broke
 * (dropped and reported like any read error, so that the caller knows its
 * pending entries will be read again). */
static int check_gaps(sg *g) {
    uint64_t now = clock_now_ns();
    if (now < g->gap_next_ns || !g->up) return 0;
    g->gap_next_ns = now + GAP_CHECK_NS;
    for (size_t i = 0; i < g->n; i++) {
        const char *st[] = { "XINFO", "STREAM", g->s[i].key };
        const char *gr[] = { "XINFO", "GROUPS", g->s[i].key };
        if (append(g, g->s[i].conn, 3, st, "XINFO") || append(g, g->s[i].conn, 3, gr, "XINFO"))
            return -1;
    }
    if (flush_all(g, "XINFO")) return -1;
    for (size_t i = 0; i < g->n; i++) {
        redisReply *st = reply(g, g->s[i].conn, "XINFO");
        redisReply *gr = st ? reply(g, g->s[i].conn, "XINFO") : NULL;
        if (!gr) {
            freeReplyObject(st);
            return -1; /* reported: the caller waits for its entries before re-reading */
        }
        long long length = map_int(st, "length"), added = map_int(st, "entries-added"), lag = -1;
        for (size_t j = 0; gr->type == REDIS_REPLY_ARRAY && j < gr->elements; j++) {
            const redisReply *name = map_get(gr->element[j], "name");
            if (name && name->type == REDIS_REPLY_STRING && strcmp(name->str, g->group) == 0)
                lag = map_int(gr->element[j], "lag");
        }
        stream_state *s = &g->s[i];
        long long trimmed = added - length; /* entries ever removed from the head */
        if (length >= 0 && lag > length && trimmed > s->gap_reported) {
            ADD(g, gaps, 1);
            log_error("streams",
                      "entries trimmed before group %s read them stream=%s missed=%lld: raise "
                      "bus.stream_maxlen or find why the group lags",
                      g->group, s->key, lag - length);
            s->gap_reported = trimmed;
        }
        freeReplyObject(st);
        freeReplyObject(gr);
    }
    return 0;
}

/* New entries: the streams that filled their COUNT last time without
 * waiting, else every stream, waiting up to BLOCK_MS.
 *
 * A blocked XREADGROUP holds its connection and names one slot, so with
 * several slot groups (cluster) nothing can wait on all of them at once.
 * Instead the reader polls: one pipelined pass without BLOCK over every
 * group (one round trip, the nodes in parallel), then a pause of
 * sg_opts.poll_ms (SG_CLUSTER_POLL_MS by default), until entries come or
 * BLOCK_MS is over. A short BLOCK
 * on one group instead of the pause does not work: Redis 7.0 times blocked
 * commands out on its cron (hz 10: 100 ms), so "BLOCK 10" waits 100 ms
 * (measured). An entry appended while the reader is idle is read up to
 * SG_CLUSTER_POLL_MS (plus a round trip) later than with a single Redis;
 * under load nothing waits (a read that finds entries reads again at
 * once). Idle, a reader asks each node for its groups' reads every poll.
 * With one group (standalone: every stream in one command) this is the
 * single blocking read it always was. */
static int read_new(sg *g, size_t max, int block_ms, drops *d) {
    bool *sel = calloc(g->n, sizeof *sel);
    if (!sel) return -1;
    size_t nsel = 0;
    for (size_t i = 0; i < g->n; i++) nsel += sel[i] = g->s[i].more;
    bool hot = nsel > 0;
    if (!hot)
        for (size_t i = 0; i < g->n; i++) nsel += sel[i] = true;
    for (size_t i = 0; i < g->n; i++)
        if (sel[i]) g->s[i].more = false;
    size_t count = per_stream(max, nsel);
    /* BLOCK 0 would wait for ever: 0 means do not wait at all. */
    bool wait = !hot && block_ms > 0;
    int rc;
    if (g->ngrp == 1) {
        rc = read_groups(g, sel, false, count, wait ? block_ms : -1, d);
    } else {
        uint64_t end = clock_now_ns() + (uint64_t)block_ms * 1000000u;
        for (;;) {
            /* The backlog is empty here (sg_read reads only then). */
            rc = read_groups(g, sel, false, count, -1, d);
            if (rc || !wait || g->nback != g->backhead || d->n || !g->up) break;
            uint64_t now = clock_now_ns();
            if (now >= end) break;
            uint64_t ns = end - now < (uint64_t)g->poll_ms * 1000000u
                              ? end - now
                              : (uint64_t)g->poll_ms * 1000000u;
            struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
            nanosleep(&ts, NULL);
        }
    }
    free(sel);
    return rc;
}

int sg_read(sg *g, sg_msg *out, size_t max, int block_ms) {
    if (max == 0) return 0;
    if (block_ms < 0) block_ms = 0;
    if (g->backhead == g->nback && g->late_error) {
        /* The error of the call that still had entries to hand out. */
        g->late_error = false;
        return -1;
    }
    if (g->backhead == g->nback) {
        if (ensure_conn(g, block_ms) != 0) {
            ADD(g, errors, 1);
            return -1;
        }
        drops d = { .n = 0 };
        int rc;
        if (g->pending_pass)
            rc = read_pending(g, max, &d);
        else
            rc = 0;
        if (rc == 0 && g->nback == g->backhead && g->up) rc = check_gaps(g);
        if (rc == 0 && g->nback == g->backhead && g->up) rc = claim_due(g, max, &d);
        if (rc == 0 && g->nback == g->backhead && !g->pending_pass && g->up)
            rc = read_new(g, max, block_ms, &d);
        if (rc == 0 && d.n && g->up) rc = flush_drops(g, &d);
        if (rc != 0) {
            ADD(g, errors, 1);
            if (g->nback == g->backhead) return -1;
            /* Hand out what was read before the error; the call that finds
             * the backlog empty reports it. */
            g->late_error = true;
        }
    }
    size_t n = g->nback - g->backhead;
    if (n > max) n = max;
    if (n) memcpy(out, g->back + g->backhead, n * sizeof *out); /* back is NULL until used */
    g->backhead += n;
    ADD(g, messages, n);
    return (int)n;
}
