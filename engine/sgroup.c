/* sgroup.c -- consumer-group reader over many streams (see sgroup.h).
 *
 * All state lives with the one thread that reads: the connection, the
 * cursors of the pending pass and of XAUTOCLAIM, and the few entries one
 * read returned beyond what the caller could take (the backlog). Only the
 * counters are atomics, for sg_get_stats.
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
#include "nerve/log.h"

/* How often the streams are checked for entries trimmed before the group
 * read them (check_gaps). */
#define GAP_CHECK_NS 5000000000ull

typedef struct stream_state {
    char *key;
    char pend_cursor[48]; /* the pending pass: last id handed out ("0" first) */
    bool pend_done;
    char claim_cursor[48]; /* XAUTOCLAIM's cursor ("0-0": from the start) */
    uint64_t claim_next_ns;
    bool more;              /* the last ">" read filled COUNT: more may be waiting */
    long long gap_reported; /* entries-added - length when a gap was last reported */
} stream_state;

struct sg {
    rds_opts ro;
    stream_state *s;
    size_t n;
    char *group, *consumer;
    int claim_idle_ms;
    size_t max_bytes;
    char *field; /* sg_opts.field, "event" by default */

    redisContext *c;
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
    g->n = o->n_streams;
    g->claim_idle_ms = o->claim_idle_ms;
    g->max_bytes = o->max_event_bytes;
    g->s = calloc(g->n, sizeof *g->s);
    g->group = strdup(o->group);
    g->consumer = strdup(o->consumer);
    g->field = strdup(o->field ? o->field : "event");
    if (!g->s || !g->group || !g->consumer || !g->field) goto oom;
    for (size_t i = 0; i < g->n; i++)
        if (!(g->s[i].key = strdup(o->streams[i]))) goto oom;
    return g;
oom:
    snprintf(err, errlen, "out of memory");
    sg_close(g);
    return NULL;
}

static void drop_conn(sg *g) {
    if (g->c) redisFree(g->c);
    g->c = NULL;
    atomic_store(&g->connected, 0);
    if (g->fails < 64) g->fails++;
    backoff_policy bp = { 10, g->ro.reconnect_max_ms > 0 ? g->ro.reconnect_max_ms : 2000, 2.0,
                          BACKOFF_JITTER_EQUAL };
    g->retry_at_ns = clock_now_ns() + (uint64_t)backoff_delay(&bp, g->fails) * 1000000u;
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
    for (size_t i = 0; g->c && i < g->n; i++) {
        redisReply *r = redisCommand(g->c, "XPENDING %s %s - + 1 %s", g->s[i].key, g->group,
                                     g->consumer);
        bool none = r && r->type == REDIS_REPLY_ARRAY && r->elements == 0;
        freeReplyObject(r);
        if (!r) return;
        if (!none) continue;
        r = redisCommand(g->c, "XGROUP DELCONSUMER %s %s %s", g->s[i].key, g->group, g->consumer);
        freeReplyObject(r);
        if (!r) return;
    }
}

void sg_close(sg *g) {
    if (!g) return;
    /* Whatever the caller still had to hand out goes back to the group. */
    if (g->c && g->nback == g->backhead) forget_consumer(g);
    if (g->c) redisFree(g->c);
    for (size_t i = 0; g->s && i < g->n; i++) free(g->s[i].key);
    free(g->s);
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

/* ---- connection and groups ---------------------------------------------------- */

static struct timeval tv_ms(long long ms) {
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    return tv;
}

/* XGROUP CREATE key group 0 MKSTREAM for every stream, pipelined. Id 0: a
 * new group starts at the first entry, so what was appended while no
 * consumer ran is read too. 0, or -1 with g->err set (the connection kept
 * only when Redis answered). */
static int create_groups(sg *g) {
    for (size_t i = 0; i < g->n; i++) {
        const char *argv[] = { "XGROUP", "CREATE", g->s[i].key, g->group, "0", "MKSTREAM" };
        if (redisAppendCommandArgv(g->c, 6, argv, NULL) != REDIS_OK) {
            set_err(g, "XGROUP CREATE", g->c->errstr);
            return -1;
        }
    }
    int rc = 0;
    for (size_t i = 0; i < g->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(g->c, (void **)&r) != REDIS_OK || !r) {
            set_err(g, "XGROUP CREATE", g->c->errstr);
            return -1;
        }
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

/* Connect when there is no connection and the backoff allows, waiting up
 * to WAIT_MS for it. 0 connected, -1 not (g->err). */
static int ensure_conn(sg *g, int wait_ms) {
    if (g->c) return 0;
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
    char err[256];
    g->c = rds_connect(&g->ro, err, sizeof err);
    if (!g->c) {
        set_err(g, "stream reader", err);
        drop_conn(g);
        return -1;
    }
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

/* Run one command on the connection. NULL when the connection failed
 * (dropped, g->err set); an error reply is returned as such. */
static redisReply *command(sg *g, int argc, const char **argv, const char *what) {
    ADD(g, reads, 1);
    redisReply *r = redisCommandArgv(g->c, argc, argv, NULL);
    if (!r) {
        set_err(g, what, g->c->errstr);
        drop_conn(g);
    }
    return r;
}

/* ---- acknowledgements ------------------------------------------------------------ */

static int by_stream(const void *a, const void *b) {
    const char *const *x = a, *const *y = b;
    return strcmp(x[0], y[0]);
}

/* Pipelined XACKs, one per stream of the N entries. The connection is C
 * (the sg's) or RC (a caller's client). The entries are sorted by stream
 * first: a batch of sales alternates between the sale and stock streams of
 * 16 partitions, and one XACK per run of consecutive entries was nearly one
 * XACK per entry (Redis commandstats, issue 12). */
static int xack(sg *g, redisContext *c, rds_client *rc, const char *group,
                const char *const *streams, const char *const *ids, size_t n) {
    if (!n) return 0;
    const char **argv = malloc((n + 3) * sizeof *argv);
    const char *(*pairs)[2] = malloc(n * sizeof *pairs);
    if (!argv || !pairs) {
        free(argv);
        free(pairs);
        return -1;
    }
    for (size_t k = 0; k < n; k++) pairs[k][0] = streams[k], pairs[k][1] = ids[k];
    qsort(pairs, n, sizeof *pairs, by_stream);
    size_t cmds = 0, i = 0;
    int rc_ = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && strcmp(pairs[j][0], pairs[i][0]) == 0) j++;
        argv[0] = "XACK";
        argv[1] = pairs[i][0];
        argv[2] = group;
        for (size_t k = i; k < j; k++) argv[3 + k - i] = pairs[k][1];
        int argc = (int)(3 + j - i);
        int ok = c ? redisAppendCommandArgv(c, argc, argv, NULL) == REDIS_OK
                   : rds_appendargv(rc, argc, argv, NULL) == 0;
        if (!ok) {
            rc_ = -1;
            break;
        }
        cmds++;
        i = j;
    }
    free(argv);
    free(pairs);
    uint64_t acked = 0;
    for (size_t k = 0; k < cmds; k++) {
        redisReply *r = NULL;
        if (c) {
            if (redisGetReply(c, (void **)&r) != REDIS_OK) r = NULL;
        } else {
            r = rds_get_reply(rc);
        }
        if (!r) return -1; /* the connection is gone with every reply still pending */
        if (r->type == REDIS_REPLY_INTEGER)
            acked += (uint64_t)r->integer;
        else
            rc_ = -1;
        freeReplyObject(r);
    }
    if (g) ADD(g, acked, acked);
    return rc_;
}

static int flush_drops(sg *g, drops *d) {
    const char *streams[64], *ids[64];
    for (size_t i = 0; i < d->n; i++) {
        streams[i] = g->s[d->stream[i]].key;
        ids[i] = d->id[i];
    }
    size_t n = d->n;
    d->n = 0;
    if (xack(g, g->c, NULL, g->group, streams, ids, n) != 0) {
        set_err(g, "XACK", g->c->err ? g->c->errstr : "error reply");
        if (g->c->err) drop_conn(g);
        return -1;
    }
    return 0;
}

int sg_ack(sg *g, const sg_msg *m, size_t n) {
    if (!n) return 0;
    if (!g->c) {
        set_err(g, "XACK", "not connected");
        ADD(g, errors, 1);
        return -1;
    }
    const char **streams = malloc(n * sizeof *streams), **ids = malloc(n * sizeof *ids);
    int rc = -1;
    if (streams && ids) {
        for (size_t i = 0; i < n; i++) {
            streams[i] = m[i].stream;
            ids[i] = m[i].id;
        }
        rc = xack(g, g->c, NULL, g->group, streams, ids, n);
        if (rc != 0) {
            set_err(g, "XACK", g->c->err ? g->c->errstr : "error reply");
            if (g->c->err) drop_conn(g);
        }
    } else {
        set_err(g, "XACK", "out of memory");
    }
    free(streams);
    free(ids);
    if (rc) ADD(g, errors, 1);
    return rc;
}

int sg_ack_client(sg *g, rds_client *c, const char *group, const char *const *streams,
                  const char *const *ids, size_t n) {
    return xack(g, NULL, c, group, streams, ids, n);
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

/* XREADGROUP over the streams SEL[0..nsel-1] with their ids (IDS; NULL:
 * ">"), BLOCK_MS < 0: no BLOCK. NOGROUP (a stream or group deleted under
 * us) makes the groups again and retries once. */
static redisReply *xreadgroup(sg *g, const size_t *sel, size_t nsel, const char *const *ids,
                              size_t count, int block_ms) {
    const char **argv = malloc((10 + 2 * nsel) * sizeof *argv);
    if (!argv) {
        set_err(g, "XREADGROUP", "out of memory");
        return NULL;
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
    for (size_t i = 0; i < nsel; i++) argv[argc++] = g->s[sel[i]].key;
    for (size_t i = 0; i < nsel; i++) argv[argc++] = ids ? ids[i] : ">";
    redisReply *r = NULL;
    for (int attempt = 0; attempt < 2 && g->c; attempt++) {
        if (block_ms >= 0)
            redisSetTimeout(g->c, tv_ms((long long)g->ro.command_timeout_ms + block_ms));
        r = command(g, argc, argv, "XREADGROUP");
        if (block_ms >= 0 && g->c) redisSetTimeout(g->c, tv_ms(g->ro.command_timeout_ms));
        if (!r || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "NOGROUP", 7) != 0 || attempt)
            break;
        freeReplyObject(r);
        r = NULL;
        if (create_groups(g) != 0) {
            if (g->c->err) drop_conn(g);
            break;
        }
    }
    free(argv);
    if (r && r->type == REDIS_REPLY_ERROR) {
        set_err(g, "XREADGROUP", r->str);
        freeReplyObject(r);
        r = NULL;
    }
    return r;
}

static size_t per_stream(size_t max, size_t nsel) {
    size_t c = nsel ? max / nsel : max;
    return c ? c : 1;
}

/* The pending pass: this consumer's own unacknowledged entries (id 0, then
 * after the last one handed out), streams not yet done only. */
static int read_pending(sg *g, size_t max, drops *d) {
    size_t *sel = malloc(g->n * sizeof *sel);
    const char **ids = malloc(g->n * sizeof *ids);
    int rc = -1;
    if (!sel || !ids) {
        set_err(g, "XREADGROUP", "out of memory");
        goto out;
    }
    size_t nsel = 0;
    for (size_t i = 0; i < g->n; i++)
        if (!g->s[i].pend_done) {
            sel[nsel] = i;
            ids[nsel++] = g->s[i].pend_cursor;
        }
    if (!nsel) {
        g->pending_pass = false;
        rc = 0;
        goto out;
    }
    size_t count = per_stream(max, nsel);
    redisReply *r = xreadgroup(g, sel, nsel, ids, count, -1);
    if (!r) goto out;
    /* A stream missing from the answer has nothing pending. */
    for (size_t i = 0; i < nsel; i++) g->s[sel[i]].pend_done = true;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t k = 0; k < r->elements; k++) {
            const redisReply *sr = r->element[k];
            if (sr->type == REDIS_REPLY_ARRAY && sr->elements == 2 &&
                sr->element[0]->type == REDIS_REPLY_STRING) {
                size_t si = stream_index(g, sr->element[0]);
                if (si < g->n) g->s[si].pend_done = false;
            }
        }
    rc = take_read(g, r, d, count, true);
    freeReplyObject(r);
    g->pending_pass = false;
    for (size_t i = 0; i < g->n; i++)
        if (!g->s[i].pend_done) g->pending_pass = true;
out:
    free(sel);
    free(ids);
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
    if (!nsel) goto out;
    char idle[24], cnt[24];
    snprintf(idle, sizeof idle, "%d", g->claim_idle_ms);
    snprintf(cnt, sizeof cnt, "%zu", per_stream(max, nsel));
    for (size_t i = 0; i < nsel; i++) {
        const char *argv[] = { "XAUTOCLAIM", g->s[sel[i]].key,          g->group, g->consumer,
                               idle,         g->s[sel[i]].claim_cursor, "COUNT",  cnt };
        ADD(g, reads, 1);
        if (redisAppendCommandArgv(g->c, 8, argv, NULL) != REDIS_OK) {
            set_err(g, "XAUTOCLAIM", g->c->errstr);
            drop_conn(g);
            rc = -1;
            goto out;
        }
    }
    /* Every reply first: dropping an entry acknowledges it on this same
     * connection, which must not interleave with the replies still due. */
    redisReply **reps = calloc(nsel, sizeof *reps);
    if (!reps) {
        /* The replies are due on this connection: it is out of step now. */
        set_err(g, "XAUTOCLAIM", "out of memory");
        drop_conn(g);
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < nsel; i++)
        if (redisGetReply(g->c, (void **)&reps[i]) != REDIS_OK || !reps[i]) {
            set_err(g, "XAUTOCLAIM", g->c->errstr);
            drop_conn(g);
            rc = -1;
            break;
        }
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
        }
        /* A full scan done: wait half the idle time before the next one. */
        if (strcmp(s->claim_cursor, "0-0") == 0)
            s->claim_next_ns = now + (uint64_t)g->claim_idle_ms * 500000u;
    }
    for (size_t i = 0; i < nsel; i++) freeReplyObject(reps[i]);
    free(reps);
out:
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
    if (now < g->gap_next_ns || !g->c) return 0;
    g->gap_next_ns = now + GAP_CHECK_NS;
    for (size_t i = 0; i < g->n; i++) {
        redisAppendCommand(g->c, "XINFO STREAM %s", g->s[i].key);
        redisAppendCommand(g->c, "XINFO GROUPS %s", g->s[i].key);
    }
    for (size_t i = 0; i < g->n; i++) {
        redisReply *st = NULL, *gr = NULL;
        if (redisGetReply(g->c, (void **)&st) != REDIS_OK ||
            redisGetReply(g->c, (void **)&gr) != REDIS_OK) {
            freeReplyObject(st);
            set_err(g, "XINFO", g->c->errstr);
            drop_conn(g);
            return -1; /* reported: the caller waits for its entries before re-reading */
        }
        long long length = map_int(st, "length"), added = map_int(st, "entries-added"), lag = -1;
        for (size_t j = 0; gr && gr->type == REDIS_REPLY_ARRAY && j < gr->elements; j++) {
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
 * waiting, else every stream, waiting up to BLOCK_MS. */
static int read_new(sg *g, size_t max, int block_ms, drops *d) {
    size_t *sel = malloc(g->n * sizeof *sel), nsel = 0;
    if (!sel) return -1;
    for (size_t i = 0; i < g->n; i++)
        if (g->s[i].more) sel[nsel++] = i;
    bool hot = nsel > 0;
    if (!hot)
        for (size_t i = 0; i < g->n; i++) sel[nsel++] = i;
    for (size_t i = 0; i < nsel; i++) g->s[sel[i]].more = false;
    size_t count = per_stream(max, nsel);
    int rc = -1;
    /* BLOCK 0 would wait for ever: 0 means do not wait at all. */
    redisReply *r = xreadgroup(g, sel, nsel, NULL, count, hot || block_ms <= 0 ? -1 : block_ms);
    if (r) {
        rc = take_read(g, r, d, count, false);
        freeReplyObject(r);
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
        if (rc == 0 && g->nback == g->backhead && g->c) rc = check_gaps(g);
        if (rc == 0 && g->nback == g->backhead && g->c) rc = claim_due(g, max, &d);
        if (rc == 0 && g->nback == g->backhead && !g->pending_pass && g->c)
            rc = read_new(g, max, block_ms, &d);
        if (rc == 0 && d.n && g->c) rc = flush_drops(g, &d);
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
