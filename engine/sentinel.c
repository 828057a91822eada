/* sentinel.c -- the current Redis primary, as Redis Sentinel names it
 * (sentinel.h).
 *
 * The sentinels are reached with plain hiredis, not rds.h: rds_connect
 * itself asks this module where the primary is, and a sentinel is not a
 * Redis data server (no SELECT, no scripts, its own password).
 */
#include "nerve/sentinel.h"

#include "nerve/clock.h"
#include "nerve/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A failed resolution is not retried before this much time: the callers
 * (every reconnecting client) get the same error meanwhile. */
#define RETRY_MS 100
/* Writes pause at most this long after a failover began (a failover that
 * never announces its end: aborted, or the watcher's sentinel lost). */
#define HOLD_MS 10000

struct snt {
    snt *next; /* the registry's list */
    pthread_mutex_t mu;
    snt_addr *conf;  /* the sentinels as configured (never changes) */
    snt_addr *addrs; /* under mu: in the order to ask them (the last one that answered first) */
    int n;
    char master[65];
    char pass[256];
    int connect_timeout_ms, command_timeout_ms;
    /* under mu */
    snt_addr primary;
    int known;
    long long failed_at_ms;  /* the last failed resolution (0: none) */
    long long hold_until_ms; /* a failover began: no primary until then (0: none) */
    int failed_rc;
    char failed_err[512];
    _Atomic unsigned long switches; /* snt_generation */
    /* the +switch-master watcher (snt_watch_start); watching under registry_mu */
    pthread_t watcher;
    int watching;
    _Atomic int watch_stop;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static snt *registry;

static int same_config(const snt *s, const snt_addr *addrs, int n, const char *master,
                       const char *pass, int cto, int qto) {
    if (s->n != n || strcmp(s->master, master) || strcmp(s->pass, pass) ||
        s->connect_timeout_ms != cto || s->command_timeout_ms != qto)
        return 0;
    for (int i = 0; i < n; i++)
        if (s->conf[i].port != addrs[i].port || strcmp(s->conf[i].host, addrs[i].host)) return 0;
    return 1;
}

snt *snt_shared(const snt_addr *addrs, int n, const char *master, const char *pass,
                int connect_timeout_ms, int command_timeout_ms, char *err, size_t errlen) {
    if (!pass) pass = "";
    if (n < 1 || n > SNT_MAX || !master || !master[0] || strlen(master) >= 65 ||
        strlen(pass) >= 256) {
        snprintf(err, errlen, "sentinel: need 1 to %d sentinels and a master name", SNT_MAX);
        return NULL;
    }
    pthread_mutex_lock(&registry_mu);
    snt *s = registry;
    while (s && !same_config(s, addrs, n, master, pass, connect_timeout_ms, command_timeout_ms))
        s = s->next;
    if (!s && (s = calloc(1, sizeof *s)) != NULL) {
        if (!(s->conf = malloc(2 * (size_t)n * sizeof *s->conf))) {
            free(s);
            s = NULL;
        } else {
            s->addrs = s->conf + n;
            memcpy(s->conf, addrs, (size_t)n * sizeof *addrs);
            memcpy(s->addrs, addrs, (size_t)n * sizeof *addrs);
            s->n = n;
            snprintf(s->master, sizeof s->master, "%s", master);
            snprintf(s->pass, sizeof s->pass, "%s", pass);
            s->connect_timeout_ms = connect_timeout_ms;
            s->command_timeout_ms = command_timeout_ms;
            pthread_mutex_init(&s->mu, NULL);
            s->next = registry;
            registry = s;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    if (!s) snprintf(err, errlen, "sentinel: out of memory");
    return s;
}

static struct timeval tv_ms(int ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* A connection to sentinel A, the one way nerve opens them: connect and
 * command timeouts, TCP keepalive (a half-open watch link is noticed), AUTH
 * with NERVE_SENTINEL_PASSWORD when set. NULL with WHY when it fails. */
static redisContext *connect_sentinel(const snt *s, const snt_addr *a, char *why, size_t whylen) {
    redisContext *c = redisConnectWithTimeout(a->host, a->port, tv_ms(s->connect_timeout_ms));
    if (!c || c->err) {
        snprintf(why, whylen, "%s", c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv_ms(s->command_timeout_ms));
    redisEnableKeepAlive(c);
    if (s->pass[0]) {
        redisReply *r = redisCommand(c, "AUTH %s", s->pass);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "AUTH: %s", r ? r->str : c->errstr);
            freeReplyObject(r);
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    return c;
}

/* Ask sentinel A where the master is. SNT_OK with OUT set; SNT_UNKNOWN when
 * it answered that it does not know the master; SNT_DOWN otherwise. WHY
 * gets a short reason in both failure cases. */
static int ask(const snt *s, const snt_addr *a, snt_addr *out, char *why, size_t whylen) {
    int rc = SNT_DOWN;
    redisReply *r = NULL;
    redisContext *c = connect_sentinel(s, a, why, whylen);
    if (!c) goto out;
    r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", s->master);
    if (!r) {
        snprintf(why, whylen, "%s", c->errstr);
    } else if (r->type == REDIS_REPLY_NIL) {
        snprintf(why, whylen, "does not know master %s", s->master);
        rc = SNT_UNKNOWN;
    } else if (r->type == REDIS_REPLY_ERROR) {
        /* A plain Redis server, or an ACL that forbids the command. */
        snprintf(why, whylen, "%.200s", r->str);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
               r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len == 0 ||
               r->element[0]->len >= sizeof out->host) {
        snprintf(why, whylen, "unexpected reply to SENTINEL get-master-addr-by-name");
    } else {
        char *end;
        long port = strtol(r->element[1]->str, &end, 10);
        if (*end || end == r->element[1]->str || port < 1 || port > 65535) {
            snprintf(why, whylen, "bad port in its answer");
        } else {
            memcpy(out->host, r->element[0]->str, r->element[0]->len + 1);
            out->port = (int)port;
            rc = SNT_OK;
        }
    }
out:
    freeReplyObject(r);
    if (c) redisFree(c);
    return rc;
}

/* With S->mu held: GOT is the primary now. A change of address (not the
 * first answer) is a switch: connections opened before it are replaced
 * (snt_generation). */
static void set_primary(snt *s, const snt_addr *got, const char *how) {
    if (strcmp(got->host, s->primary.host) || got->port != s->primary.port) {
        if (s->primary.port) {
            log_warn("sentinel", "primary changed master=%s from=%s:%d to=%s:%d how=%s", s->master,
                     s->primary.host, s->primary.port, got->host, got->port, how);
            atomic_fetch_add_explicit(&s->switches, 1, memory_order_release);
        } else {
            log_info("sentinel", "primary found master=%s addr=%s:%d", s->master, got->host,
                     got->port);
        }
    }
    s->primary = *got;
    s->known = 1;
    s->failed_at_ms = 0;
    s->hold_until_ms = 0;
}

/* With S->mu held: ask the sentinels in order; the first that knows moves
 * to the front. */
static int resolve(snt *s, char *err, size_t errlen) {
    char why[256], msg[512];
    int unknown = 0, down = 0;
    size_t m = 0;
    msg[0] = 0;
    for (int i = 0; i < s->n; i++) {
        snt_addr got;
        int rc = ask(s, &s->addrs[i], &got, why, sizeof why);
        if (rc == SNT_OK) {
            if (i > 0) {
                snt_addr first = s->addrs[i];
                memmove(&s->addrs[1], &s->addrs[0], (size_t)i * sizeof *s->addrs);
                s->addrs[0] = first;
            }
            set_primary(s, &got, "asked");
            return SNT_OK;
        }
        if (rc == SNT_UNKNOWN)
            unknown++;
        else
            down++;
        if (m < sizeof msg) {
            int w = snprintf(msg + m, sizeof msg - m, "%s%s:%d: %s", m ? "; " : "",
                             s->addrs[i].host, s->addrs[i].port, why);
            if (w > 0) m += (size_t)w;
        }
    }
    if (unknown && !down) {
        snprintf(err, errlen,
                 "no sentinel knows a master named \"%s\" (check redis.master_name) (%.300s)",
                 s->master, msg);
        return SNT_UNKNOWN;
    }
    snprintf(err, errlen, "no sentinel named the primary of master \"%s\" (%.300s)", s->master,
             msg);
    return SNT_DOWN;
}

int snt_primary(snt *s, char *host, size_t hostlen, int *port, char *err, size_t errlen) {
    int rc = SNT_OK;
    pthread_mutex_lock(&s->mu);
    if (s->hold_until_ms && clock_now_ms() < s->hold_until_ms) {
        snprintf(err, errlen,
                 "failover of master \"%s\" in progress: writes wait for the sentinels to "
                 "announce the new primary",
                 s->master);
        pthread_mutex_unlock(&s->mu);
        return SNT_DOWN;
    }
    s->hold_until_ms = 0;
    if (!s->known) {
        long long now = clock_now_ms();
        if (s->failed_at_ms && now - s->failed_at_ms < RETRY_MS) {
            rc = s->failed_rc;
        } else {
            rc = resolve(s, s->failed_err, sizeof s->failed_err);
            s->failed_rc = rc;
            s->failed_at_ms = rc == SNT_OK ? 0 : clock_now_ms();
        }
    }
    if (rc == SNT_OK) {
        snprintf(host, hostlen, "%s", s->primary.host);
        *port = s->primary.port;
    } else {
        snprintf(err, errlen, "%s", s->failed_err);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void snt_forget(snt *s, const char *host, int port) {
    pthread_mutex_lock(&s->mu);
    if (s->known && s->primary.port == port && !strcmp(s->primary.host, host)) {
        s->known = 0;
        log_info("sentinel", "asking the sentinels again master=%s was=%s:%d", s->master, host,
                 port);
    }
    pthread_mutex_unlock(&s->mu);
}

int snt_check_role(redisContext *ctx, char *err, size_t errlen) {
    redisReply *r = redisCommand(ctx, "ROLE");
    if (!r) {
        snprintf(err, errlen, "ROLE on %.200s:%d: %s", ctx->tcp.host ? ctx->tcp.host : "?",
                 ctx->tcp.port, ctx->errstr);
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") != 0) {
        snprintf(err, errlen, "%.200s:%d is a %s, not the primary (a failover in progress?)",
                 ctx->tcp.host ? ctx->tcp.host : "?", ctx->tcp.port, r->element[0]->str);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

int snt_readonly_reply(const redisReply *r) {
    return r && r->type == REDIS_REPLY_ERROR && r->str && !strncmp(r->str, "READONLY", 8);
}

unsigned long snt_generation(const snt *s) {
    return atomic_load_explicit(&s->switches, memory_order_acquire);
}

/* ---- the watcher: +switch-master -------------------------------------------- */

/* A failover of our master began: the sentinels promote a replica now
 * (+failover-state-send-slaveof-noone) and announce it when done
 * (+switch-master), about a second later. Meanwhile the old primary, when
 * it is still up (SENTINEL FAILOVER, a network split), keeps taking writes
 * that the promoted replica never receives: measured, nearly every sale of
 * that second was lost. So no connection goes to any primary until the
 * announcement (or HOLD_MS), and the open ones are replaced (generation). */
static void hold(snt *s, const char *old_host, int old_port) {
    pthread_mutex_lock(&s->mu);
    /* A late message (heard from one sentinel after another's
     * +switch-master) is about a primary we already left: no new pause
     * (found in review). */
    if (s->known && (strcmp(s->primary.host, old_host) != 0 || s->primary.port != old_port)) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->hold_until_ms = clock_now_ms() + HOLD_MS;
    s->known = 0;
    atomic_fetch_add_explicit(&s->switches, 1, memory_order_release);
    log_warn("sentinel", "failover started master=%s: writes paused until the new primary is known",
             s->master);
    pthread_mutex_unlock(&s->mu);
}

/* One message read from a sentinel's subscription: act on those of our
 * master. "+switch-master" is "NAME OLDIP OLDPORT NEWIP NEWPORT";
 * "+failover-state-send-slaveof-noone" is "slave NAME IP PORT @ MASTER IP
 * PORT" (published by the sentinel that runs the failover only: hence a
 * subscription to every sentinel). */
static void on_message(snt *s, const redisReply *r) {
    const char *at, *chan, *msg;
    char name[65], host[SNT_HOST_MAX];
    int port;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    chan = r->element[1]->str;
    msg = r->element[2]->str;
    if (!strcmp(chan, "+failover-state-send-slaveof-noone")) {
        if ((at = strstr(msg, " @ ")) && sscanf(at + 3, "%64s %255s %d", name, host, &port) == 3 &&
            !strcmp(name, s->master))
            hold(s, host, port);
    } else if (!strcmp(chan, "+switch-master")) {
        /* %64s and %255s: the buffers' sizes less the NUL. */
        if (sscanf(msg, "%64s %*s %*d %255s %d", name, host, &port) == 3 &&
            !strcmp(name, s->master) && port > 0 && port <= 65535) {
            snt_addr got;
            snprintf(got.host, sizeof got.host, "%s", host);
            got.port = port;
            pthread_mutex_lock(&s->mu);
            set_primary(s, &got, "+switch-master");
            pthread_mutex_unlock(&s->mu);
        }
    }
}

/* Connect to A and subscribe; NULL when it does not answer. */
static redisContext *subscribe(const snt *s, const snt_addr *a) {
    char why[256];
    redisContext *c = connect_sentinel(s, a, why, sizeof why);
    redisReply *r = NULL;
    int ok = c != NULL;
    /* Two channels: two confirmations, the second read as a message (and
     * ignored) by the loop. */
    if (ok) {
        r = redisCommand(c, "SUBSCRIBE +switch-master +failover-state-send-slaveof-noone");
        ok = r && r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
    }
    if (!ok && c) {
        redisFree(c);
        c = NULL;
    }
    return c;
}

/* Read every reply C has, buffered or on the socket (which poll said is
 * readable). 0, or -1 when the connection broke. */
static int drain(snt *s, redisContext *c) {
    void *v = NULL;
    if (redisGetReply(c, &v) != REDIS_OK || !v) return -1;
    do {
        on_message(s, v);
        freeReplyObject(v);
        v = NULL;
        if (redisReaderGetReply(c->reader, &v) != REDIS_OK) return -1;
    } while (v);
    return 0;
}

/* The watcher: one subscription per sentinel, in one poll loop; a sentinel
 * that does not answer is tried again a second later. */
static void *watch_main(void *arg) {
    snt *s = arg;
    int n = s->n;
    redisContext **cs = calloc((size_t)n, sizeof *cs);
    long long *retry_at = calloc((size_t)n, sizeof *retry_at);
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    snt_addr *addrs = malloc((size_t)n * sizeof *addrs);
    if (!cs || !retry_at || !pf || !addrs) {
        log_error("sentinel", "watcher: out of memory; failovers are followed on errors only");
        goto out;
    }
    memcpy(addrs, s->conf, (size_t)n * sizeof *addrs);
    while (!atomic_load_explicit(&s->watch_stop, memory_order_acquire)) {
        int subscribed = 0;
        for (int i = 0; i < n; i++) {
            /* Stop between subscriptions too: each may take a connect
             * timeout when sentinels are unreachable. */
            if (atomic_load_explicit(&s->watch_stop, memory_order_acquire)) break;
            if (!cs[i] && clock_now_ms() >= retry_at[i]) {
                if ((cs[i] = subscribe(s, &addrs[i])) != NULL) {
                    subscribed = 1;
                } else {
                    retry_at[i] = clock_now_ms() + 1000;
                }
            }
            pf[i].fd = cs[i] ? cs[i]->fd : -1;
            pf[i].events = POLLIN;
            pf[i].revents = 0;
        }
        if (atomic_load_explicit(&s->watch_stop, memory_order_acquire)) break;
        if (subscribed) {
            /* A switch announced while we were not listening: the next
             * connection asks the sentinels (and sees it). */
            pthread_mutex_lock(&s->mu);
            s->known = 0;
            pthread_mutex_unlock(&s->mu);
        }
        int rc = poll(pf, (nfds_t)n, 200);
        if (rc < 0 && errno != EINTR) break;
        for (int i = 0; rc > 0 && i < n; i++) {
            if (!cs[i] || !pf[i].revents) continue;
            if (drain(s, cs[i])) {
                redisFree(cs[i]);
                cs[i] = NULL;
                retry_at[i] = clock_now_ms() + 1000;
            }
        }
    }
out:
    for (int i = 0; cs && i < n; i++)
        if (cs[i]) redisFree(cs[i]);
    free(cs);
    free(retry_at);
    free(pf);
    free(addrs);
    return NULL;
}

int snt_watch_start(snt *s, char *err, size_t errlen) {
    pthread_mutex_lock(&registry_mu);
    int rc = 0;
    if (!s->watching) {
        atomic_store(&s->watch_stop, 0);
        if (pthread_create(&s->watcher, NULL, watch_main, s) != 0) {
            snprintf(err, errlen, "sentinel: cannot start the watcher thread");
            rc = -1;
        } else {
            s->watching = 1;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    return rc;
}

void snt_watch_stop(snt *s) {
    pthread_mutex_lock(&registry_mu);
    int was = s->watching;
    s->watching = 0;
    pthread_mutex_unlock(&registry_mu);
    if (!was) return;
    atomic_store_explicit(&s->watch_stop, 1, memory_order_release);
    pthread_join(s->watcher, NULL);
}
