/* rds_cluster.c -- Redis Cluster routing inside rds_client (see rds.h, "Redis
 * Cluster"): which node a command goes to, redirects, the shared slot map,
 * pipelines spread over nodes.
 *
 * Shape, as hiredis-cluster and redis-py's RedisCluster have it: every client
 * keeps its own connections (a redisContext is not thread-safe), one per node
 * it talked to, found by host:port; the slot map is shared by every client
 * made from the same seed (a process-wide registry), immutable once built
 * and swapped whole under a mutex, so a command reads it without locking (a
 * generation counter tells a client that a newer map is there). The map is
 * fetched again on MOVED and when a node fails, by one thread at a time and
 * at most once per RDS_CLUSTER_REFRESH_MS (cluster.h's cl_refresh).
 *
 * A command is formatted once (hiredis' RESP text), its key read back from
 * the arguments, and the formatted text is what a redirect sends again: no
 * second formatting, no copy of the arguments the caller owns.
 */
#include "nerve/cluster.h"
#include "nerve/clock.h"
#include "rds_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SLOT_ANY   RDS_SLOT_ANY
#define SLOT_CROSS RDS_SLOT_CROSS
#define SLOT_ALL   RDS_SLOT_ALL

/* A client talks to this many nodes at most: a bound against a hostile or
 * broken cluster redirecting it to ever new addresses. */
#define CONNS_MAX 256

static const char ASKING_CMD[] = "*1\r\n$6\r\nASKING\r\n";

/* ---- the shared map --------------------------------------------------------- */

typedef struct cmap {
    cl_map *m;
    _Atomic int refs;
} cmap;

typedef struct shared {
    struct shared *next;
    char host[256]; /* the seed, and the user: what makes two clients share */
    int port;
    char user[128];
    int refs; /* clients using it, under reg_mu */
    pthread_mutex_t mu;
    cmap *map;            /* under mu */
    _Atomic unsigned gen; /* bumped on each new map; 0 = none yet */
    cl_refresh rf;
} shared;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static shared *reg;
static _Atomic unsigned long long st_moved, st_ask, st_refresh, st_referr;

static void cmap_unref(cmap *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
        cl_map_free(m->m);
        free(m);
    }
}

/* ---- per client --------------------------------------------------------------- */

typedef struct pend {
    int conn;  /* index in conns */
    int parts; /* broadcast: how many entries (this one and the next) */
    char *cmd; /* the formatted command (first part only): for a redirect */
    size_t len;
    redisReply *reply; /* read ahead */
    int got;           /* reply read (NULL: the connection failed) */
} pend;

struct rds_route {
    shared *sh;
    cmap *map;
    unsigned gen;
    int *node_conn; /* map node index -> conns index, -1 = not looked up */
    rds_conn *conns;
    int nconns, cap;
    rds_opts nodeo; /* the client's opts, host:port of the node connected to */
    pend *q;        /* the pipeline, in append order */
    size_t qhead, qn, qcap;
    const char **av; /* argument views of the command being routed */
    size_t *al;
    int acap;
};

rds_route *rds_route_new(rds_client *c) {
    rds_route *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->nodeo = c->o;
    r->nodeo.db = 0;
    pthread_mutex_lock(&reg_mu);
    shared *s = reg;
    while (s &&
           !(s->port == c->o.port && !strcmp(s->host, c->o.host) && !strcmp(s->user, c->o.user)))
        s = s->next;
    if (!s && (s = calloc(1, sizeof *s))) {
        snprintf(s->host, sizeof s->host, "%s", c->o.host);
        s->port = c->o.port;
        snprintf(s->user, sizeof s->user, "%s", c->o.user);
        pthread_mutex_init(&s->mu, NULL);
        cl_refresh_init(&s->rf, RDS_CLUSTER_REFRESH_MS);
        s->next = reg;
        reg = s;
    }
    if (s) s->refs++;
    pthread_mutex_unlock(&reg_mu);
    if (!s) {
        free(r);
        return NULL;
    }
    r->sh = s;
    return r;
}

static void pipeline_clear(rds_route *r) {
    for (size_t i = r->qhead; i < r->qn; i++) {
        free(r->q[i].cmd);
        if (r->q[i].reply) freeReplyObject(r->q[i].reply);
    }
    r->qhead = r->qn = 0;
}

void rds_route_free(rds_route *r) {
    if (!r) return;
    pipeline_clear(r);
    for (int i = 0; i < r->nconns; i++) rds_conn_close(&r->conns[i]);
    free(r->conns);
    free(r->q);
    free(r->av);
    free(r->al);
    free(r->node_conn);
    cmap_unref(r->map);
    pthread_mutex_lock(&reg_mu);
    shared *s = r->sh;
    if (--s->refs == 0) {
        shared **pp = &reg;
        while (*pp != s) pp = &(*pp)->next;
        *pp = s->next;
        cmap_unref(s->map);
        pthread_mutex_destroy(&s->mu);
        free(s);
    }
    pthread_mutex_unlock(&reg_mu);
    free(r);
}

/* The connection to HOST:PORT, added when new. -1 (error set) past CONNS_MAX. */
static int conn_for(rds_client *c, const char *host, int port) {
    rds_route *r = c->cl;
    for (int i = 0; i < r->nconns; i++)
        if (r->conns[i].port == port && !strcmp(r->conns[i].host, host)) return i;
    if (r->nconns == CONNS_MAX || strlen(host) >= sizeof r->conns[0].host) {
        rds_set_error(c, "redis cluster: more than %d nodes, or a node name too long", CONNS_MAX);
        return -1;
    }
    if (r->nconns == r->cap) {
        int cap = r->cap ? r->cap * 2 : 8;
        rds_conn *v = realloc(r->conns, (size_t)cap * sizeof *v);
        if (!v) {
            rds_set_error(c, "out of memory");
            return -1;
        }
        r->conns = v;
        r->cap = cap;
    }
    rds_conn *n = &r->conns[r->nconns];
    memset(n, 0, sizeof *n);
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    return r->nconns++;
}

static int node_ensure(rds_client *c, int ci) {
    rds_route *r = c->cl;
    rds_conn *n = &r->conns[ci];
    if (n->ctx && n->pending > 0) return 0; /* inside a pipeline: never replaced */
    memcpy(r->nodeo.host, n->host, sizeof r->nodeo.host);
    r->nodeo.port = n->port;
    return rds_conn_ensure(c, n, &r->nodeo);
}

/* Start using map M (a reference the caller gives us) of generation GEN. */
static int use_map(rds_client *c, cmap *m, unsigned gen) {
    rds_route *r = c->cl;
    int nn = cl_map_nnodes(m->m);
    int *nc = malloc((size_t)(nn ? nn : 1) * sizeof *nc);
    if (!nc) {
        cmap_unref(m);
        rds_set_error(c, "out of memory");
        return -1;
    }
    for (int i = 0; i < nn; i++) nc[i] = -1;
    free(r->node_conn);
    r->node_conn = nc;
    cmap_unref(r->map);
    r->map = m;
    r->gen = gen;
    return 0;
}

/* CLUSTER SLOTS on the node of connection CI. NULL with why in ERR. */
static cl_map *fetch_from(rds_client *c, int ci, char *err, size_t errlen) {
    rds_route *r = c->cl;
    if (r->conns[ci].pending > 0 || node_ensure(c, ci)) {
        snprintf(err, errlen, "%s", r->conns[ci].pending ? "busy" : c->errstr);
        return NULL;
    }
    rds_conn *n = &r->conns[ci];
    redisReply *rep = redisCommand(n->ctx, "CLUSTER SLOTS");
    if (!rep) {
        snprintf(err, errlen, "%.100s:%d: %.150s", n->host, n->port,
                 n->ctx->errstr[0] ? n->ctx->errstr : "connection lost");
        rds_conn_failed(c, n);
        return NULL;
    }
    cl_map *m = cl_map_from_reply(rep, n->host, err, errlen);
    freeReplyObject(rep);
    if (m && cl_map_covered(m) == 0) {
        snprintf(err, errlen, "%.100s:%d serves no slot (not part of a cluster yet?)", n->host,
                 n->port);
        cl_map_free(m);
        return NULL;
    }
    return m;
}

/* Fetch the slot map from the first node that answers: the primaries and
 * replicas of the map in use (a replica knows the map too, which matters
 * when its primary just died), then the seed; never from connection SKIP.
 * Installs it for every client of the seed. 0, or -1 with rds_errstr. */
static int fetch_map(rds_client *c, int skip) {
    rds_route *r = c->cl;
    shared *sh = r->sh;
    char err[300] = "no node to ask";
    cl_map *m = NULL;
    int nn = r->map ? cl_map_nnodes(r->map->m) : 0;
    for (int i = 0; i <= nn && !m; i++) {
        const cl_node *node = i < nn ? cl_map_node_at(r->map->m, i) : NULL;
        int naddr = node ? 1 + node->nreplicas : 1;
        for (int j = 0; j < naddr && !m; j++) {
            const char *host = node ? (j ? node->replicas[j - 1].host : node->primary.host)
                                    : sh->host;
            int port = node ? (j ? node->replicas[j - 1].port : node->primary.port) : sh->port;
            int ci = conn_for(c, host, port);
            if (ci < 0 || ci == skip) continue;
            m = fetch_from(c, ci, err, sizeof err);
        }
    }
    if (!m) {
        atomic_fetch_add(&st_referr, 1);
        rds_set_error(c, "redis cluster: no node answered CLUSTER SLOTS (last: %.200s)", err);
        return -1;
    }
    cmap *cm = calloc(1, sizeof *cm);
    if (!cm) {
        cl_map_free(m);
        rds_set_error(c, "out of memory");
        return -1;
    }
    cm->m = m;
    atomic_init(&cm->refs, 2); /* the shared slot's and ours */
    pthread_mutex_lock(&sh->mu);
    cmap *old = sh->map;
    sh->map = cm;
    unsigned gen = atomic_load(&sh->gen) + 1;
    if (gen == 0) gen = 1;
    atomic_store_explicit(&sh->gen, gen, memory_order_release);
    pthread_mutex_unlock(&sh->mu);
    cmap_unref(old);
    atomic_fetch_add(&st_refresh, 1);
    return use_map(c, cm, gen);
}

/* Make sure the client uses the newest map (fetching the first one). */
static int sync_map(rds_client *c) {
    rds_route *r = c->cl;
    shared *sh = r->sh;
    unsigned g = atomic_load_explicit(&sh->gen, memory_order_acquire);
    if (r->map && g == r->gen) return 0;
    if (!g) return fetch_map(c, -1);
    pthread_mutex_lock(&sh->mu);
    cmap *m = sh->map;
    atomic_fetch_add(&m->refs, 1);
    g = atomic_load(&sh->gen);
    pthread_mutex_unlock(&sh->mu);
    return use_map(c, m, g);
}

/* After a MOVED or a node failure: fetch the map again when it is this
 * thread's turn (cl_refresh), leaving the caller's error as it was. */
static void maybe_refresh(rds_client *c, int skip) {
    shared *sh = c->cl->sh;
    if (!cl_refresh_due(&sh->rf, clock_now_ms())) return;
    char save[sizeof c->errstr];
    int unknown = c->unknown;
    memcpy(save, c->errstr, sizeof save);
    cl_refresh_done(&sh->rf, fetch_map(c, skip) == 0);
    memcpy(c->errstr, save, sizeof save);
    c->unknown = unknown;
}

/* The connection of the primary of map node I. */
static int node_conn(rds_client *c, int i) {
    rds_route *r = c->cl;
    if (r->node_conn[i] < 0) {
        const cl_node *n = cl_map_node_at(r->map->m, i);
        r->node_conn[i] = conn_for(c, n->primary.host, n->primary.port);
    }
    return r->node_conn[i];
}

static int slot_conn(rds_client *c, int slot) {
    rds_route *r = c->cl;
    int i = cl_map_node_index(r->map->m, slot);
    if (i < 0) {
        rds_set_error(c,
                      "redis cluster: slot %d has no node (the map covers %d of 16384 slots): "
                      "the cluster is not ok",
                      slot, cl_map_covered(r->map->m));
        maybe_refresh(c, -1);
        return -1;
    }
    return node_conn(c, i);
}

/* A node for a command without a key: the first primary not waiting out
 * a reconnect backoff. */
static int any_conn(rds_client *c) {
    rds_route *r = c->cl;
    int nn = cl_map_nnodes(r->map->m), first = -1;
    long long now = clock_now_ms();
    for (int i = 0; i < nn; i++) {
        int ci = node_conn(c, i);
        if (ci < 0) continue;
        if (first < 0) first = ci;
        const rds_conn *n = &r->conns[ci];
        if (n->ctx || !n->down || now >= n->retry_at_ms) return ci;
    }
    if (first < 0) rds_set_error(c, "redis cluster: the slot map names no node");
    return first;
}

/* ---- which slot a command goes to ---------------------------------------------- */

static int is(const char *a, size_t al, const char *lit) {
    size_t n = strlen(lit);
    return al == n && strncasecmp(a, lit, n) == 0;
}

static int is_any(const char *a, size_t al, const char *const *lits) {
    for (; *lits; lits++)
        if (is(a, al, *lits)) return 1;
    return 0;
}

static const char *const keyless[] = {
    "PING",     "INFO",      "ECHO",      "TIME",         "CLUSTER",    "CLIENT",
    "CONFIG",   "DBSIZE",    "COMMAND",   "PUBLISH",      "AUTH",       "SELECT",
    "HELLO",    "WAIT",      "SCAN",      "KEYS",         "RANDOMKEY",  "MULTI",
    "EXEC",     "DISCARD",   "ACL",       "LASTSAVE",     "ROLE",       "FUNCTION",
    "READONLY", "READWRITE", "ASKING",    "SLOWLOG",      "LATENCY",    "DEBUG",
    "QUIT",     "RESET",     "SUBSCRIBE", "UNSUBSCRIBE",  "PSUBSCRIBE", "PUNSUBSCRIBE",
    "PUBSUB",   "SAVE",      "BGSAVE",    "BGREWRITEAOF", "SWAPDB",     "MONITOR",
    NULL
};
static const char *const scripts[] = { "EVAL",  "EVALSHA",  "EVAL_RO", "EVALSHA_RO",
                                       "FCALL", "FCALL_RO", NULL };
static const char *const sub_key[] = { "XGROUP", "XINFO", "OBJECT", "MEMORY", NULL };
static const char *const all_keys[] = { "DEL", "UNLINK", "EXISTS", "TOUCH", "MGET", "WATCH", NULL };
static const char *const two_keys[] = { "RENAME", "RENAMENX",  "SMOVE", "LMOVE",
                                        "BLMOVE", "RPOPLPUSH", "COPY",  NULL };

int rds_cluster_slot(int argc, const char **av, const size_t *al, char *err, size_t errlen) {
    int first = 1, last = 1, step = 1;
    if (argc < 2 || is_any(av[0], al[0], keyless)) return SLOT_ANY;
    if (is(av[0], al[0], "SCRIPT"))
        return is(av[1], al[1], "LOAD") || is(av[1], al[1], "FLUSH") ? SLOT_ALL : SLOT_ANY;
    if (is(av[0], al[0], "FLUSHALL") || is(av[0], al[0], "FLUSHDB")) return SLOT_ALL;
    if (is_any(av[0], al[0], scripts)) {
        long k = 0;
        if (argc < 3 || al[2] > 6) return SLOT_ANY;
        for (size_t i = 0; i < al[2]; i++) {
            if (av[2][i] < '0' || av[2][i] > '9') return SLOT_ANY; /* Redis will say why */
            k = k * 10 + (av[2][i] - '0');
        }
        if (k == 0) return SLOT_ANY;
        first = 3;
        last = 2 + (int)k < argc - 1 ? 2 + (int)k : argc - 1;
        if (first > last) return SLOT_ANY;
    } else if (is(av[0], al[0], "XREAD") || is(av[0], al[0], "XREADGROUP")) {
        int i = 1;
        while (i < argc && !is(av[i], al[i], "STREAMS")) i++;
        int rest = argc - i - 1;
        if (rest < 2) return SLOT_ANY;
        first = i + 1;
        last = i + rest / 2;
    } else if (is_any(av[0], al[0], sub_key)) {
        if (argc < 3) return SLOT_ANY;
        first = last = 2;
    } else if (is_any(av[0], al[0], all_keys)) {
        last = argc - 1;
    } else if (is(av[0], al[0], "MSET") || is(av[0], al[0], "MSETNX")) {
        last = argc - 1;
        step = 2;
    } else if (is_any(av[0], al[0], two_keys)) {
        last = argc > 2 ? 2 : 1;
    }
    int slot = cl_keyslot(av[first], al[first]);
    for (int i = first + step; i <= last; i += step) {
        int s = cl_keyslot(av[i], al[i]);
        if (s == slot) continue;
        /* Lengths, not NULs: the arguments may point into a formatted
         * command. */
        snprintf(err, errlen,
                 "CROSSSLOT: %.*s with keys \"%.*s\" (slot %d) and \"%.*s\" (slot %d) would span "
                 "nodes of the cluster; nothing sent",
                 (int)(al[0] < 32 ? al[0] : 32), av[0], (int)(al[first] < 80 ? al[first] : 80),
                 av[first], slot, (int)(al[i] < 80 ? al[i] : 80), av[i], s);
        return SLOT_CROSS;
    }
    return slot;
}

static int cmd_slot(rds_client *c, int argc, const char **av, const size_t *al) {
    return rds_cluster_slot(argc, av, al, c->errstr, sizeof c->errstr);
}

/* Room for N argument views. */
static int views(rds_client *c, int n) {
    rds_route *r = c->cl;
    if (n <= r->acap) return 0;
    int cap = n < 16 ? 16 : n;
    const char **av = malloc((size_t)cap * sizeof *av);
    size_t *al = malloc((size_t)cap * sizeof *al);
    if (!av || !al) {
        free(av);
        free(al);
        rds_set_error(c, "out of memory");
        return -1;
    }
    free(r->av);
    free(r->al);
    r->av = av;
    r->al = al;
    r->acap = cap;
    return 0;
}

/* The slot of the formatted command CMD (LEN bytes of RESP: *N then N bulk
 * strings, as hiredis formats them). */
static int formatted_slot(rds_client *c, const char *cmd, size_t len) {
    rds_route *r = c->cl;
    const char *p = cmd, *end = cmd + len;
    char *e;
    if (len < 4 || *p != '*') return SLOT_ANY;
    long n = strtol(p + 1, &e, 10);
    if (n < 1 || n > 1000000 || views(c, (int)n)) return SLOT_ANY;
    p = e + 2;
    for (long i = 0; i < n; i++) {
        if (p >= end || *p != '$') return SLOT_ANY;
        long l = strtol(p + 1, &e, 10);
        if (l < 0 || e + 2 + l > end) return SLOT_ANY;
        r->av[i] = e + 2;
        r->al[i] = (size_t)l;
        p = e + 2 + l + 2;
    }
    return cmd_slot(c, (int)n, r->av, r->al);
}

/* ---- one command, redirects followed --------------------------------------------- */

static int starts(const redisReply *r, const char *word) {
    size_t n = strlen(word);
    return r->len >= n && !memcmp(r->str, word, n);
}

/* Send CMD (LEN bytes, formatted) to connection CI (after ASKING when ASK)
 * and follow redirects. HOP counts the redirects already followed. */
static redisReply *run_at(rds_client *c, const char *cmd, size_t len, int ci, int ask, int hop) {
    rds_route *r = c->cl;
    for (;; hop++) {
        if (node_ensure(c, ci)) {
            maybe_refresh(c, ci);
            return NULL; /* unknown is 0: nothing was sent */
        }
        rds_conn *n = &r->conns[ci];
        void *rep = NULL;
        int ok = (!ask || redisAppendFormattedCommand(n->ctx, ASKING_CMD, sizeof ASKING_CMD - 1) ==
                              REDIS_OK) &&
                 redisAppendFormattedCommand(n->ctx, cmd, len) == REDIS_OK;
        if (ok && ask) {
            ok = redisGetReply(n->ctx, &rep) == REDIS_OK && rep;
            if (rep) freeReplyObject(rep);
            rep = NULL;
        }
        if (!ok || redisGetReply(n->ctx, &rep) != REDIS_OK || !rep) {
            char why[200];
            snprintf(why, sizeof why, "%s", n->ctx->errstr[0] ? n->ctx->errstr : "connection lost");
            rds_conn_failed(c, n);
            rds_set_error(c, "redis cluster node %s:%d: %s", n->host, n->port, why);
            maybe_refresh(c, ci);
            return NULL;
        }
        redisReply *rr = rep;
        if (rr->type != REDIS_REPLY_ERROR) return rr;
        cl_redirect rd;
        char e[160];
        int pr = cl_parse_redirect(rr->str, rr->len, &rd, e, sizeof e);
        if (pr == 1 && (starts(rr, "TRYAGAIN") || starts(rr, "CLUSTERDOWN"))) {
            /* Nothing ran: the caller fails as if the node were away (503). */
            rds_set_error(c, "redis cluster node %s:%d: %.180s", n->host, n->port, rr->str);
            freeReplyObject(rr);
            c->unknown = 0;
            return NULL;
        }
        if (pr != 0) return rr; /* another error, or a malformed redirect: as Redis said */
        if (hop >= RDS_CLUSTER_REDIRECTS) {
            rds_set_error(c, "redis cluster: more than %d redirects for slot %d (last: %.120s)",
                          RDS_CLUSTER_REDIRECTS, rd.slot, rr->str);
            freeReplyObject(rr);
            return NULL;
        }
        if (!rd.host[0]) snprintf(rd.host, sizeof rd.host, "%s", n->host);
        freeReplyObject(rr);
        ask = rd.kind == CL_ASK;
        if (ask) {
            atomic_fetch_add_explicit(&st_ask, 1, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&st_moved, 1, memory_order_relaxed);
            maybe_refresh(c, -1);
        }
        if ((ci = conn_for(c, rd.host, rd.port)) < 0) return NULL;
    }
}

/* The connection index of every primary of the current map (-1: none),
 * malloc'd, *N of them. Taken before anything is sent: a node that fails
 * makes run_at/append_to refresh the map, which may then have fewer nodes,
 * and node_conn(c, i) past the new map's end would read out of bounds
 * (found in review). Connection indices stay valid: the table only grows. */
static int *primaries(rds_client *c, int *n) {
    int nn = cl_map_nnodes(c->cl->map->m);
    int *cis = malloc((size_t)(nn > 0 ? nn : 1) * sizeof *cis);
    if (!cis) {
        rds_set_error(c, "out of memory");
        return NULL;
    }
    for (int i = 0; i < nn; i++) cis[i] = node_conn(c, i);
    *n = nn;
    return cis;
}

/* Every primary gets CMD; the first success is the reply (SCRIPT LOAD
 * answers the same sha everywhere). */
static redisReply *broadcast(rds_client *c, const char *cmd, size_t len) {
    redisReply *best = NULL;
    int nn = 0, *cis = primaries(c, &nn);
    if (!cis) return NULL;
    for (int i = 0; i < nn; i++) {
        int ci = cis[i];
        if (ci < 0) continue;
        redisReply *rr = run_at(c, cmd, len, ci, 0, RDS_CLUSTER_REDIRECTS);
        if (!rr) continue;
        if (!best || (best->type == REDIS_REPLY_ERROR && rr->type != REDIS_REPLY_ERROR)) {
            if (best) freeReplyObject(best);
            best = rr;
        } else {
            freeReplyObject(rr);
        }
    }
    free(cis);
    if (best) c->unknown = 0;
    return best;
}

/* A command without a key: on the first primary that connects (a node
 * that cannot be reached has been sent nothing, so the next may have it). */
static redisReply *run_any(rds_client *c, const char *cmd, size_t len) {
    int first = any_conn(c), nn = cl_map_nnodes(c->cl->map->m), start = 0;
    if (first < 0) return NULL;
    for (int i = 0; i < nn; i++)
        if (node_conn(c, i) == first) start = i;
    for (int i = 0; i < nn; i++) {
        int ci = node_conn(c, (start + i) % nn);
        if (ci >= 0 && node_ensure(c, ci) == 0) return run_at(c, cmd, len, ci, 0, 0);
    }
    maybe_refresh(c, -1);
    return NULL; /* unknown is 0: nothing was sent */
}

static redisReply *run(rds_client *c, const char *cmd, size_t len, int slot) {
    c->unknown = 0;
    if (slot == SLOT_CROSS || sync_map(c)) return NULL;
    if (slot == SLOT_ALL) return broadcast(c, cmd, len);
    if (slot == SLOT_ANY) return run_any(c, cmd, len);
    int ci = slot_conn(c, slot);
    return ci < 0 ? NULL : run_at(c, cmd, len, ci, 0, 0);
}

redisReply *rds_route_formatted(rds_client *c, char *cmd, size_t len) {
    redisReply *r = run(c, cmd, len, formatted_slot(c, cmd, len));
    redisFreeCommand(cmd);
    return r;
}

/* ARGVLEN, or the strlen of each argument when NULL, in the view buffer. */
static const size_t *lengths(rds_client *c, int argc, const char **argv, const size_t *argvlen) {
    if (argvlen) return argvlen;
    if (views(c, argc)) return NULL;
    for (int i = 0; i < argc; i++) c->cl->al[i] = strlen(argv[i]);
    return c->cl->al;
}

redisReply *rds_route_argv(rds_client *c, int argc, const char **argv, const size_t *argvlen) {
    const size_t *al = lengths(c, argc, argv, argvlen);
    if (!al) return NULL;
    int slot = cmd_slot(c, argc, argv, al);
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, al);
    if (len < 0) {
        rds_set_error(c, "out of memory");
        return NULL;
    }
    redisReply *r = run(c, cmd, (size_t)len, slot);
    redisFreeCommand(cmd);
    return r;
}

/* ---- pipelines ---------------------------------------------------------------------- */

/* Give the pipeline up: its commands' connections are closed (what they
 * had appended is never sent; what was sent is unknown), its entries
 * freed. */
static void abandon(rds_client *c) {
    rds_route *r = c->cl;
    /* Every connection with a reply not read, whether or not its command
     * made it into the queue (an append whose entry could not be added). */
    for (int i = 0; i < r->nconns; i++)
        if (r->conns[i].pending > 0) rds_conn_close(&r->conns[i]);
    pipeline_clear(r);
}

static int push(rds_client *c, int ci, int parts, char *cmd, size_t len) {
    rds_route *r = c->cl;
    if (r->qn == r->qcap) {
        size_t cap = r->qcap ? r->qcap * 2 : 16;
        pend *v = realloc(r->q, cap * sizeof *v);
        if (!v) {
            rds_set_error(c, "out of memory");
            return -1;
        }
        r->q = v;
        r->qcap = cap;
    }
    pend *p = &r->q[r->qn++];
    memset(p, 0, sizeof *p);
    p->conn = ci;
    p->parts = parts;
    p->cmd = cmd;
    p->len = len;
    return 0;
}

/* Append CMD to connection CI. */
static int append_to(rds_client *c, int ci, const char *cmd, size_t len) {
    rds_route *r = c->cl;
    if (r->conns[ci].pending > 0) {
        if (!r->conns[ci].ctx) return -1;
    } else if (node_ensure(c, ci)) {
        maybe_refresh(c, ci);
        return -1;
    }
    rds_conn *n = &r->conns[ci];
    if (redisAppendFormattedCommand(n->ctx, cmd, len) != REDIS_OK) {
        rds_conn_failed(c, n);
        return -1;
    }
    n->pending++;
    return 0;
}

/* An error reply of our own, TEXT on one line as Redis would send it, for a
 * pipelined command that could not be sent. NULL on OOM. */
static redisReply *own_error(const char *text) {
    char line[400];
    size_t n = 0;
    line[n++] = '-';
    for (const char *p = text; *p && n < sizeof line - 2; p++)
        line[n++] = *p == '\r' || *p == '\n' ? ' ' : *p;
    line[n++] = '\r';
    line[n++] = '\n';
    redisReader *rd = redisReaderCreate();
    void *rep = NULL;
    if (!rd) return NULL;
    if (redisReaderFeed(rd, line, n) != REDIS_OK || redisReaderGetReply(rd, &rep) != REDIS_OK)
        rep = NULL;
    redisReaderFree(rd);
    return rep;
}

int rds_route_append(rds_client *c, int argc, const char **argv, const size_t *argvlen) {
    rds_route *r = c->cl;
    const size_t *al = lengths(c, argc, argv, argvlen);
    char *cmd = NULL;
    int owned = 0;
    int slot = al ? cmd_slot(c, argc, argv, al) : SLOT_CROSS;
    int len = slot == SLOT_CROSS ? -1 : redisFormatCommandArgv(&cmd, argc, argv, al);
    c->unknown = 0;
    if (len < 0 || sync_map(c)) goto fail;
    if (slot == SLOT_ALL) {
        /* One entry per primary that took it; the first owns CMD and counts
         * the parts. A primary that cannot be reached is skipped (as
         * broadcast does), not the whole pipeline: a SCRIPT LOAD after a
         * failover must not fail every other node's commits with it. */
        int nn = 0, k = 0, *cis = primaries(c, &nn);
        if (!cis) goto fail;
        for (int i = 0; i < nn; i++)
            if (cis[i] >= 0 && append_to(c, cis[i], cmd, (size_t)len) == 0) cis[k++] = cis[i];
        for (int j = 0; j < k; j++) {
            if (push(c, cis[j], j ? 0 : k, j ? NULL : cmd, (size_t)len)) {
                free(cis);
                goto fail;
            }
            if (j == 0) owned = 1;
        }
        free(cis);
        if (k > 0) return 0;
        goto fail;
    }
    int ci = slot >= 0 ? slot_conn(c, slot) : any_conn(c);
    if (ci >= 0 && (r->conns[ci].pending > 0 || node_ensure(c, ci) == 0)) {
        if (append_to(c, ci, cmd, (size_t)len) || push(c, ci, 1, cmd, (size_t)len)) goto fail;
        return 0;
    }
    /* Its node cannot be reached (or its slot has none): nothing was sent,
     * and the pipeline's commands for the other nodes need not fail with
     * it (a shared commit pipeline carries every node's sales). Its reply
     * is an error of our own, in its place. */
    if (ci >= 0) maybe_refresh(c, ci);
    char msg[360];
    snprintf(msg, sizeof msg, "UNREACHABLE redis cluster: %.300s (not sent)", c->errstr);
    redisReply *e = own_error(msg);
    if (!e || push(c, ci, 1, cmd, (size_t)len)) {
        if (e) freeReplyObject(e);
        goto fail;
    }
    r->q[r->qn - 1].got = 1;
    r->q[r->qn - 1].reply = e;
    return 0;
fail:
    if (cmd && !owned) redisFreeCommand(cmd);
    abandon(c);
    return -1;
}

/* Write every node's appended commands, then read every reply not read yet,
 * in order: the round trips to the nodes overlap instead of adding up. */
static void read_ahead(rds_client *c) {
    rds_route *r = c->cl;
    for (int i = 0; i < r->nconns; i++) {
        rds_conn *n = &r->conns[i];
        int done = 0;
        if (!n->ctx || n->pending == 0) continue;
        while (!done)
            if (redisBufferWrite(n->ctx, &done) != REDIS_OK) {
                rds_conn_failed(c, n);
                break;
            }
    }
    for (size_t i = r->qhead; i < r->qn; i++) {
        pend *p = &r->q[i];
        if (p->got) continue; /* read before, or answered here (not sent) */
        rds_conn *n = &r->conns[p->conn];
        void *rep = NULL;
        p->got = 1;
        if (!n->ctx) continue;
        if (redisGetReply(n->ctx, &rep) != REDIS_OK || !rep) {
            char why[200];
            snprintf(why, sizeof why, "%s", n->ctx->errstr[0] ? n->ctx->errstr : "connection lost");
            rds_conn_failed(c, n);
            rds_set_error(c, "redis cluster node %s:%d: %s", n->host, n->port, why);
            continue;
        }
        if (n->pending > 0) n->pending--;
        p->reply = rep;
    }
}

redisReply *rds_route_get_reply(rds_client *c) {
    rds_route *r = c->cl;
    if (r->qhead == r->qn) {
        rds_set_error(c, "no reply pending");
        return NULL;
    }
    if (!r->q[r->qhead].got) read_ahead(c);
    pend *p = &r->q[r->qhead];
    int parts = p->parts > 0 ? p->parts : 1, lost = 0;
    redisReply *best = NULL;
    for (int k = 0; k < parts && r->qhead + (size_t)k < r->qn; k++) {
        pend *e = &r->q[r->qhead + (size_t)k];
        redisReply *rr = e->reply;
        e->reply = NULL;
        if (!rr) {
            lost = 1;
        } else if (!best || (best->type == REDIS_REPLY_ERROR && rr->type != REDIS_REPLY_ERROR)) {
            if (best) freeReplyObject(best);
            best = rr;
        } else {
            freeReplyObject(rr);
        }
    }
    char *cmd = p->cmd;
    size_t len = p->len;
    p->cmd = NULL;
    r->qhead += (size_t)parts;
    if (r->qhead >= r->qn) r->qhead = r->qn = 0;
    if (!best || (lost && parts == 1)) {
        /* As on one server: the connection failed, the rest is lost. */
        if (best) freeReplyObject(best);
        free(cmd);
        c->unknown = 1;
        abandon(c);
        maybe_refresh(c, -1);
        return NULL;
    }
    cl_redirect rd;
    char e[160];
    if (parts == 1 && best->type == REDIS_REPLY_ERROR &&
        cl_parse_redirect(best->str, best->len, &rd, e, sizeof e) == 0) {
        /* Every reply is read by now, so no connection has one pending and
         * the command can go again on its own. */
        /* A copy: conn_for may move the connections it would read it from. */
        if (!rd.host[0]) snprintf(rd.host, sizeof rd.host, "%s", r->conns[p->conn].host);
        int ci = conn_for(c, rd.host, rd.port);
        freeReplyObject(best);
        best = NULL;
        if (rd.kind == CL_ASK) {
            atomic_fetch_add_explicit(&st_ask, 1, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&st_moved, 1, memory_order_relaxed);
            maybe_refresh(c, -1);
        }
        read_ahead(c); /* later commands' replies, if any were appended since */
        if (ci >= 0) best = run_at(c, cmd, len, ci, rd.kind == CL_ASK, 1);
        if (!best) {
            free(cmd);
            abandon(c);
            return NULL;
        }
    }
    free(cmd);
    return best;
}

/* ---- what the rest of nerve asks ------------------------------------------------------ */

void rds_cluster_get_stats(rds_cluster_stats *out) {
    out->moved = atomic_load(&st_moved);
    out->ask = atomic_load(&st_ask);
    out->refreshes = atomic_load(&st_refresh);
    out->refresh_errors = atomic_load(&st_referr);
}

int rds_is_cluster(const rds_client *c) {
    return c->cl != NULL;
}

int rds_cluster_nnodes(rds_client *c) {
    if (!c->cl) return 1;
    return sync_map(c) ? 0 : cl_map_nnodes(c->cl->map->m);
}

redisReply *rds_commandargv_node(rds_client *c, int node, int argc, const char **argv,
                                 const size_t *argvlen) {
    if (!c->cl) return rds_commandargv(c, argc, argv, argvlen);
    c->unknown = 0;
    if (sync_map(c)) return NULL;
    if (node < 0 || node >= cl_map_nnodes(c->cl->map->m)) {
        rds_set_error(c, "redis cluster: no node %d (the map has %d)", node,
                      cl_map_nnodes(c->cl->map->m));
        return NULL;
    }
    int ci = node_conn(c, node);
    if (ci < 0) return NULL;
    if (node_ensure(c, ci)) {
        maybe_refresh(c, ci);
        return NULL;
    }
    rds_conn *n = &c->cl->conns[ci];
    redisReply *r = redisCommandArgv(n->ctx, argc, argv, argvlen);
    if (!r) {
        rds_conn_failed(c, n);
        maybe_refresh(c, ci);
    }
    return r;
}

int rds_cluster_check(rds_client *c, char *err, size_t errlen) {
    if (!c->cl) return 0;
    c->unknown = 0;
    if (sync_map(c)) {
        snprintf(err, errlen, "%s", c->errstr);
        return -1;
    }
    int covered = cl_map_covered(c->cl->map->m);
    if (covered < CL_SLOTS) {
        maybe_refresh(c, -1);
        covered = cl_map_covered(c->cl->map->m);
    }
    if (covered < CL_SLOTS) {
        snprintf(err, errlen, "redis cluster: the slot map covers %d of %d slots", covered,
                 CL_SLOTS);
        return -1;
    }
    /* The node asked tells whether the cluster as a whole is ok (a
     * primary down and not yet replaced makes it "fail"). */
    redisReply *r = rds_command(c, "CLUSTER INFO");
    if (!r) {
        snprintf(err, errlen, "%s", c->errstr);
        return -1;
    }
    int ok = r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
    if (!ok) {
        const char *st = r->type == REDIS_REPLY_STRING ? strstr(r->str, "cluster_state:") : NULL;
        size_t n = st ? strcspn(st, "\r\n") : 0;
        snprintf(err, errlen, "redis cluster: %.*s", (int)(n ? n : 40),
                 st                             ? st
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "CLUSTER INFO: unexpected reply");
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}
