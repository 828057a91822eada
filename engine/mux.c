/* mux.c -- one Redis pipeline shared by the threads of a process (mux.h).
 *
 * The queue and the connections' busy flags live under one mutex, held only
 * to link and unlink requests, never during I/O. A request lives on its
 * caller's stack; its state word is also what its caller parks on (park.h), so that a round trip wakes exactly the threads whose replies came
 * back, without them taking the mutex again: with 64 workers the mutex was
 * the most contended lock of the process while they re-took it after each
 * condition-variable wake (strace: 3.5 futex calls per sale; park.h).
 *
 * States: QUEUED (in the queue), LEAD (still queued, and told that a
 * connection freed: take it if nobody did meanwhile), TAKEN (in a round trip),
 * DONE (reply or failure filled in). QUEUED/LEAD -> TAKEN and QUEUED -> LEAD
 * only under the mutex; TAKEN -> DONE by the thread doing the round trip,
 * after which it never reads the request again.
 */
#include "nerve/mux.h"

#include "nerve/park.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MREQ_QUEUED, MREQ_LEAD, MREQ_TAKEN, MREQ_DONE };

typedef struct mreq {
    int argc;
    const char **argv;
    const size_t *argvlen;
    redisReply *reply;
    mux_res *res;
    _Atomic int state;
    struct mreq *next;
} mreq;

typedef struct mslot {
    rds_client *c;
    int busy;
} mslot;

struct mux {
    pthread_mutex_t mu;
    mreq *head, *tail;
    mslot *slots;
    int nslots, max_batch;
    int wait_replicas, wait_timeout_ms;
    _Atomic uint64_t commands, flushes;
};

mux *mux_new(const rds_opts *o, int conns, int max_batch) {
    if (conns < 1) conns = 1;
    if (max_batch < 1) max_batch = 1;
    mux *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->slots = calloc((size_t)conns, sizeof *m->slots);
    if (!m->slots) goto err;
    m->nslots = conns;
    m->max_batch = max_batch;
    for (int i = 0; i < conns; i++)
        if (!(m->slots[i].c = rds_client_new(o))) goto err;
    pthread_mutex_init(&m->mu, NULL);
    return m;
err:
    if (m->slots)
        for (int i = 0; i < conns; i++) rds_client_free(m->slots[i].c);
    free(m->slots);
    free(m);
    return NULL;
}

void mux_free(mux *m) {
    if (!m) return;
    for (int i = 0; i < m->nslots; i++) rds_client_free(m->slots[i].c);
    free(m->slots);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void mux_set_wait(mux *m, int replicas, int timeout_ms) {
    m->wait_replicas = replicas > 0 ? replicas : 0;
    m->wait_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

static void fail(mreq *r, const char *why, int unknown) {
    r->reply = NULL;
    r->res->unknown = unknown;
    snprintf(r->res->err, sizeof r->res->err, "%s", why);
}

/* Write the N requests from BATCH as one pipeline on C and read their
 * replies in order. Called without the mutex. hiredis buffers the appends
 * and writes them all on the first read: one write, as few reads as the
 * replies need. */
static void flush(mux *m, mslot *s, mreq *batch, int n) {
    mreq *r = batch;
    int appended = 0;
    char wn[16], wt[16];
    const char *wv[] = { "WAIT", wn, wt };
    for (; appended < n; appended++, r = r->next)
        if (rds_appendargv(s->c, r->argc, r->argv, r->argvlen)) break;
    if (appended == n && m->wait_replicas) {
        snprintf(wn, sizeof wn, "%d", m->wait_replicas);
        snprintf(wt, sizeof wt, "%d", m->wait_timeout_ms);
        if (rds_appendargv(s->c, 3, wv, NULL)) appended = -1;
    }
    if (appended < n) {
        /* Nothing was written yet (hiredis writes on the first read): every
         * request of the batch fails as never sent. */
        char why[200];
        snprintf(why, sizeof why, "%s", rds_errstr(s->c));
        r = batch;
        for (int i = 0; i < n; i++, r = r->next) fail(r, why[0] ? why : "redis unavailable", 0);
        /* A failed append dropped the connection (rds.c), and with it
         * whatever had been appended before. */
        return;
    }
    r = batch;
    int i = 0;
    for (; i < n; i++, r = r->next) {
        r->reply = rds_get_reply(s->c);
        if (!r->reply) break;
    }
    if (i < n) {
        char why[200];
        snprintf(why, sizeof why, "%s", rds_errstr(s->c));
        for (; i < n; i++, r = r->next) fail(r, why[0] ? why : "connection lost", 1);
        return;
    }
    if (!m->wait_replicas) return;
    /* The commands' replies are in: whatever WAIT answers, they ran. */
    redisReply *w = rds_get_reply(s->c);
    int acked = w && w->type == REDIS_REPLY_INTEGER ? (int)w->integer : -1;
    freeReplyObject(w);
    for (r = batch; r; r = r->next) r->res->replicas = acked;
}

/* With the mutex held: a free connection's index, or -1. */
static int free_slot(mux *m) {
    for (int i = 0; i < m->nslots; i++)
        if (!m->slots[i].busy) return i;
    return -1;
}

/* With the mutex held: when requests are queued and a connection is free,
 * tell the oldest to take it (it may find it taken by then, and queue
 * again). Also after a leader left requests queued (more than max_batch)
 * with another connection free. */
static void hint_free_slot(mux *m) {
    mreq *h = m->head;
    if (!h || free_slot(m) < 0) return;
    int q = MREQ_QUEUED;
    if (atomic_compare_exchange_strong(&h->state, &q, MREQ_LEAD)) park_wake(&h->state);
}

/* With the mutex held and connection SI free: take it and up to max_batch
 * requests from the head of the queue, do the round trip without the
 * mutex, complete them, and come back with the mutex held, the connection
 * free again and, when requests are still queued, the oldest of them told
 * to take it. ME is the caller's own request (completed without a wake). */
static void lead(mux *m, int si, mreq *me) {
    mslot *s = &m->slots[si];
    s->busy = 1;
    mreq *batch = m->head, *last = batch;
    int n = 1;
    atomic_store_explicit(&batch->state, MREQ_TAKEN, memory_order_relaxed);
    while (n < m->max_batch && last->next) {
        last = last->next;
        atomic_store_explicit(&last->state, MREQ_TAKEN, memory_order_relaxed);
        n++;
    }
    m->head = last->next;
    if (!m->head) m->tail = NULL;
    last->next = NULL;
    hint_free_slot(m);
    pthread_mutex_unlock(&m->mu);

    flush(m, s, batch, n);
    atomic_fetch_add_explicit(&m->commands, (uint64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->flushes, 1, memory_order_relaxed);
    for (mreq *r = batch, *nx; r; r = nx) {
        nx = r->next; /* read before DONE: after it the request may be gone */
        if (r != me)
            park_set(&r->state, MREQ_DONE);
        else
            atomic_store_explicit(&r->state, MREQ_DONE, memory_order_relaxed);
    }

    pthread_mutex_lock(&m->mu);
    s->busy = 0;
    /* Requests queued during our round trip: the oldest takes the
     * connection we just freed. */
    hint_free_slot(m);
}

redisReply *mux_command(mux *m, int argc, const char **argv, const size_t *argvlen, mux_res *res) {
    res->unknown = 0;
    res->replicas = -1;
    res->err[0] = 0;
    mreq me = { .argc = argc, .argv = argv, .argvlen = argvlen, .res = res };
    atomic_init(&me.state, MREQ_QUEUED);
    pthread_mutex_lock(&m->mu);
    if (m->tail)
        m->tail->next = &me;
    else
        m->head = &me;
    m->tail = &me;
    for (;;) {
        /* Mutex held; we are queued (QUEUED or LEAD), TAKEN or DONE. */
        int st = atomic_load_explicit(&me.state, memory_order_acquire);
        if (st == MREQ_DONE) break;
        int si = st == MREQ_TAKEN ? -1 : free_slot(m);
        if (si >= 0) {
            lead(m, si, &me);
            continue;
        }
        if (st == MREQ_LEAD) atomic_store_explicit(&me.state, MREQ_QUEUED, memory_order_relaxed);
        pthread_mutex_unlock(&m->mu);
        st = park_while(&me.state, st == MREQ_TAKEN ? MREQ_TAKEN : MREQ_QUEUED);
        if (st == MREQ_TAKEN) st = park_while(&me.state, MREQ_TAKEN);
        if (st == MREQ_DONE) return me.reply;
        pthread_mutex_lock(&m->mu); /* LEAD: try to take the free connection */
    }
    pthread_mutex_unlock(&m->mu);
    return me.reply;
}

/* SCRIPT LOAD S's source through the pipeline; records its sha the first
 * time (the sha of a source never changes, so a reload after NOSCRIPT
 * rewrites nothing others may be reading). 0, or -1 with RES. */
static int script_load(mux *m, rds_script *s, mux_res *res) {
    const char *argv[] = { "SCRIPT", "LOAD", s->src };
    redisReply *r = mux_command(m, 3, argv, NULL, res);
    res->unknown = 0; /* a SCRIPT LOAD runs no commit, answered or not */
    if (!r) return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_STRING && r->len == 40) {
        rds_script_set_sha(s, r->str);
        rc = 0;
    } else {
        snprintf(res->err, sizeof res->err, "SCRIPT LOAD: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    }
    freeReplyObject(r);
    return rc;
}

redisReply *mux_eval(mux *m, rds_script *s, int argc, const char **argv, size_t *argvlen,
                     mux_res *res) {
    if (!atomic_load_explicit(&s->loaded, memory_order_acquire) && script_load(m, s, res))
        return NULL; /* nothing was run: res->unknown is 0 */
    argv[0] = "EVALSHA", argvlen[0] = 7;
    argv[1] = s->sha, argvlen[1] = 40;
    for (int tries = 0; tries < 2; tries++) {
        redisReply *r = mux_command(m, argc, argv, argvlen, res);
        if (!r || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "NOSCRIPT", 8) != 0 || tries > 0)
            return r;
        /* Redis lost its script cache (a restart): load it again, retry. */
        freeReplyObject(r);
        if (script_load(m, s, res)) return NULL;
    }
    return NULL; /* not reached */
}

void mux_get_stats(mux *m, mux_stats *out) {
    out->commands = atomic_load_explicit(&m->commands, memory_order_relaxed);
    out->flushes = atomic_load_explicit(&m->flushes, memory_order_relaxed);
}
