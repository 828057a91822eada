/* rds.c -- Redis connections with timeouts, AUTH/SELECT, reconnect backoff,
 * EVALSHA scripts and a per-thread pool (see rds.h).
 *
 * Why a pool of per-thread clients rather than one shared connection: a
 * redisContext is not thread-safe, and a mutex around a shared one would
 * serialise every sale. Each HTTP worker gets its own connection instead.
 */
#include "nerve/rds.h"
#include "rds_int.h"

#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/tslot.h"
#include "nerve/sentinel.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void rds_set_error(rds_client *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
}
#define set_error rds_set_error

/* ---- URL ---------------------------------------------------------------- */

static int unescape(const char *s, size_t len, char *out, size_t cap) {
    size_t j = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= len) return -1; /* needs two hex digits */
            char hex[3] = { s[i + 1], s[i + 2], 0 };
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end || end != hex + 2) return -1;
            ch = (char)v;
            i += 2;
        }
        if (j + 1 >= cap) return -1;
        out[j++] = ch;
    }
    out[j] = 0;
    return 0;
}

int rds_parse_url(const char *url, rds_opts *o, char *err, size_t errlen) {
    const char *p;
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "redis url must start with redis:// (got \"%.64s\")", url);
        return -1;
    }
    p = url + 8;
    o->user[0] = o->pass[0] = 0;
    o->port = 6379;
    o->db = 0;

    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at && (!slash || at < slash)) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (unescape(p, (size_t)(colon - p), o->user, sizeof o->user) ||
                unescape(colon + 1, (size_t)(at - colon - 1), o->pass, sizeof o->pass)) {
                snprintf(err, errlen, "redis url: bad user or password");
                return -1;
            }
        } else if (unescape(p, (size_t)(at - p), o->pass, sizeof o->pass)) {
            snprintf(err, errlen, "redis url: bad password");
            return -1;
        }
        p = at + 1;
    }
    /* An IPv6 literal is bracketed in the URL, bare for hiredis. */
    int v6 = *p == '[';
    const char *hostend = v6 ? strchr(p, ']') : p + strcspn(p, ":/");
    size_t hl = hostend ? (size_t)(hostend - p) - (size_t)v6 : 0;
    if (hl == 0 || hl >= sizeof o->host) {
        snprintf(err, errlen, "redis url: missing or too long host");
        return -1;
    }
    memcpy(o->host, p + v6, hl);
    o->host[hl] = 0;
    p = hostend + v6;
    if (*p == ':') {
        char *end;
        errno = 0;
        long v = strtol(p + 1, &end, 10);
        if (!isdigit((unsigned char)p[1]) || errno || v < 1 || v > 65535 || (*end && *end != '/')) {
            snprintf(err, errlen, "redis url: port must be 1..65535");
            return -1;
        }
        o->port = (int)v;
        p = end;
    }
    if (*p == '/') {
        p++;
        if (*p) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (!isdigit((unsigned char)*p) || *end || errno || v < 0 || v > 100000) {
                snprintf(err, errlen, "redis url: database must be a number >= 0");
                return -1;
            }
            o->db = (int)v;
        }
    }
    return 0;
}

/* ---- client --------------------------------------------------------------- */

rds_client *rds_client_new(const rds_opts *o) {
    rds_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->o = *o;
    if (o->cluster && !(c->cl = rds_route_new(c))) {
        free(c);
        return NULL;
    }
    return c;
}

static void drop(const rds_opts *o, rds_conn *n) {
    if (n->ctx) {
        redisFree(n->ctx);
        n->ctx = NULL;
    }
    n->pending = 0;
    /* Capped exponential backoff between reconnect attempts, jittered so
     * that a fleet's clients do not reconnect in lockstep. */
    n->down = 1;
    if (n->fails < 64) n->fails++;
    backoff_policy b = { 1, o->reconnect_max_ms > 0 ? o->reconnect_max_ms : 2000, 2.0,
                         BACKOFF_JITTER_EQUAL };
    n->retry_at_ms = clock_now_ms() + backoff_delay(&b, n->fails);
}

void rds_conn_close(rds_conn *n) {
    if (n->ctx) redisFree(n->ctx);
    n->ctx = NULL;
    n->pending = 0;
}

void rds_client_free(rds_client *c) {
    if (!c) return;
    rds_route_free(c->cl);
    if (c->one.ctx) redisFree(c->one.ctx);
    free(c);
}

static struct timeval tv_ms(int ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* Run a setup command on a fresh context; 0 ok, -1 with a message in ERR. */
static int setup_cmd(redisContext *ctx, redisReply *r, const char *what, char *err, size_t errlen) {
    if (!r) {
        snprintf(err, errlen, "%s: %s", what, ctx->errstr);
        return -1;
    }
    int bad = r->type == REDIS_REPLY_ERROR;
    if (bad) snprintf(err, errlen, "%s: %s", what, r->str);
    freeReplyObject(r);
    return bad ? -1 : 0;
}

static redisContext *connect_at(const rds_opts *o, const char *host, int port, char *err,
                                size_t errlen) {
    redisContext *ctx = redisConnectWithTimeout(host, port, tv_ms(o->connect_timeout_ms));
    if (!ctx || ctx->err) {
        snprintf(err, errlen, "connect %.200s:%d: %.200s", host, port,
                 ctx ? ctx->errstr : "out of memory");
        goto err;
    }
    redisSetTimeout(ctx, tv_ms(o->command_timeout_ms));
    redisEnableKeepAlive(ctx);
    if (o->pass[0]) {
        redisReply *r = o->user[0] ? redisCommand(ctx, "AUTH %s %s", o->user, o->pass)
                                   : redisCommand(ctx, "AUTH %s", o->pass);
        if (setup_cmd(ctx, r, "AUTH", err, errlen)) goto err;
    }
    if (o->db) {
        if (setup_cmd(ctx, redisCommand(ctx, "SELECT %d", o->db), "SELECT", err, errlen)) goto err;
    }
    return ctx;
err:
    if (ctx) redisFree(ctx);
    return NULL;
}

redisContext *rds_connect(const rds_opts *o, char *err, size_t errlen) {
    if (!o->sentinel) return connect_at(o, o->host, o->port, err, errlen);
    /* Sentinel mode: the primary the sentinels name, if ROLE agrees. A dead
     * or demoted one is forgotten and the sentinels asked once more: during
     * a failover they still name the old primary until they promote
     * another, and this connection fails (the client's backoff retries). */
    for (int tries = 0; tries < 2; tries++) {
        char host[SNT_HOST_MAX];
        int port;
        if (snt_primary(o->sentinel, host, sizeof host, &port, err, errlen) != SNT_OK) return NULL;
        redisContext *ctx = connect_at(o, host, port, err, errlen);
        if (ctx && snt_check_role(ctx, err, errlen) == 0) return ctx;
        if (ctx) redisFree(ctx);
        snt_forget(o->sentinel, host, port);
    }
    return NULL;
}

/* An idle request/response connection never has anything to read: if its
 * socket is readable, Redis closed it (restart, timeout, kill). Checked only
 * after a pause, so a busy connection pays nothing. */
static int stale(rds_conn *n) {
    long long now = clock_now_ms();
    long long idle = now - n->last_used_ms;
    n->last_used_ms = now;
    if (idle < 50) return 0;
    struct pollfd p = { n->ctx->fd, POLLIN, 0 };
    return poll(&p, 1, 0) > 0;
}

/* Sentinel mode: the primary changed since connection N was opened (a
 * failover the watcher heard of, or another connection found): it may be
 * to a former primary, still up and taking writes that will be lost. */
static int moved(const rds_conn *n, const rds_opts *o) {
    return o->sentinel && snt_generation(o->sentinel) != n->gen;
}

int rds_conn_ensure(rds_client *c, rds_conn *n, const rds_opts *o) {
    c->unknown = 0;
    if (n->ctx && !n->readonly && !moved(n, o) && !stale(n)) return 0;
    if (n->ctx && n->readonly && o->sentinel)
        snt_forget(o->sentinel, n->ctx->tcp.host ? n->ctx->tcp.host : "", n->ctx->tcp.port);
    n->readonly = 0;
    if (n->ctx) {
        /* Reconnect at once: the connection was fine until it went away. */
        redisFree(n->ctx);
        n->ctx = NULL;
        n->down = 0;
    }
    /* A new primary announced since the last attempt: try it now. */
    if (n->down && clock_now_ms() < n->retry_at_ms && !moved(n, o)) {
        if (!c->errstr[0]) set_error(c, "redis down, retrying");
        return -1;
    }
    /* Read before connecting: a switch during the connect replaces it. */
    if (o->sentinel) n->gen = snt_generation(o->sentinel);
    n->ctx = rds_connect(o, c->errstr, sizeof c->errstr);
    if (n->ctx && moved(n, o)) {
        /* A failover began while it connected: it may be to the old
         * primary. Once more, to the one the sentinels name now. */
        redisFree(n->ctx);
        n->gen = snt_generation(o->sentinel);
        n->ctx = rds_connect(o, c->errstr, sizeof c->errstr);
    }
    if (!n->ctx) {
        drop(o, n);
        return -1;
    }
    static _Atomic unsigned long serials;
    n->serial = atomic_fetch_add_explicit(&serials, 1, memory_order_relaxed) + 1;
    n->down = 0;
    n->fails = 0;
    c->errstr[0] = 0;
    return 0;
}

unsigned long rds_conn_serial(const rds_client *c) {
    return c->cl || !c->one.ctx ? 0 : c->one.serial;
}

/* After a NULL reply the context is unusable: remember why and drop it. */
void rds_conn_failed(rds_client *c, rds_conn *n) {
    c->unknown = 1;
    set_error(c, "%s", n->ctx && n->ctx->errstr[0] ? n->ctx->errstr : "connection lost");
    drop(&c->o, n);
}

static int ensure(rds_client *c) {
    return rds_conn_ensure(c, &c->one, &c->o);
}

static void *failed(rds_client *c) {
    rds_conn_failed(c, &c->one);
    return NULL;
}

/* A reply R (not NULL): a -READONLY one means the server is a replica now
 * (demoted in a failover while this connection stayed open): nothing ran,
 * and the connection is replaced before the next command (ensure). */
static redisReply *answered(rds_client *c, redisReply *r) {
    /* Sentinel mode only: on one Redis a replica named by mistake (or a
     * VIP not flipped yet) would otherwise be reconnected to on every
     * write of every thread, with no backoff (found in review). */
    if (c->o.sentinel && snt_readonly_reply(r)) c->one.readonly = 1;
    return r;
}

redisReply *rds_command(rds_client *c, const char *fmt, ...) {
    va_list ap;
    if (c->cl) {
        /* Formatted once: the key is read back from the formatted command,
         * which is also what a redirect sends again. */
        char *cmd = NULL;
        va_start(ap, fmt);
        int len = redisvFormatCommand(&cmd, fmt, ap);
        va_end(ap);
        if (len < 0) {
            set_error(c, "out of memory or bad format");
            return NULL;
        }
        return rds_route_formatted(c, cmd, (size_t)len); /* frees cmd */
    }
    if (ensure(c)) return NULL;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c->one.ctx, fmt, ap);
    va_end(ap);
    return r ? answered(c, r) : failed(c);
}

redisReply *rds_commandargv(rds_client *c, int argc, const char **argv, const size_t *argvlen) {
    if (c->cl) return rds_route_argv(c, argc, argv, argvlen);
    if (ensure(c)) return NULL;
    redisReply *r = redisCommandArgv(c->one.ctx, argc, argv, argvlen);
    return r ? answered(c, r) : failed(c);
}

/* Within a pipeline (commands appended, replies not all read) the
 * connection is never checked for staleness or replaced: a reconnect there
 * would drop the commands appended so far unsent and hand their replies'
 * places to the later ones (a caller reading N replies would give each
 * command another's reply; found in review, issue 12). It fails instead. */
int rds_appendargv(rds_client *c, int argc, const char **argv, const size_t *argvlen) {
    if (c->cl) return rds_route_append(c, argc, argv, argvlen);
    if (c->one.pending > 0) {
        if (!c->one.ctx) return -1;
    } else if (ensure(c)) {
        return -1;
    }
    if (redisAppendCommandArgv(c->one.ctx, argc, argv, argvlen) != REDIS_OK) {
        failed(c);
        return -1;
    }
    c->one.pending++;
    return 0;
}

redisReply *rds_get_reply(rds_client *c) {
    if (c->cl) return rds_route_get_reply(c);
    if (!c->one.ctx) return NULL;
    void *r = NULL;
    if (redisGetReply(c->one.ctx, &r) != REDIS_OK || !r) return failed(c);
    if (c->one.pending > 0) c->one.pending--;
    return answered(c, r);
}

const char *rds_errstr(const rds_client *c) {
    return c->errstr;
}
int rds_outcome_unknown(const rds_client *c) {
    return c->unknown;
}

/* ---- scripts --------------------------------------------------------------- */

/* SCRIPT LOAD S. The sha is a pure function of the source, so it is stored
 * once (under a mutex) and never written again; a later load after NOSCRIPT
 * only puts the script back into Redis' cache. */
void rds_script_set_sha(rds_script *s, const char *sha) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!atomic_load_explicit(&s->loaded, memory_order_relaxed)) {
        memcpy(s->sha, sha, 40);
        s->sha[40] = 0;
        atomic_store_explicit(&s->loaded, 1, memory_order_release);
    }
    pthread_mutex_unlock(&mu);
}

static int load_script(rds_client *c, rds_script *s) {
    redisReply *r = rds_command(c, "SCRIPT LOAD %s", s->src);
    if (!r) return -1;
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        set_error(c, "SCRIPT LOAD: %s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        freeReplyObject(r);
        return -1;
    }
    rds_script_set_sha(s, r->str);
    freeReplyObject(r);
    return 0;
}

int rds_script_load(rds_client *c, rds_script *s) {
    if (atomic_load_explicit(&s->loaded, memory_order_acquire)) return 0;
    return load_script(c, s);
}

redisReply *rds_eval(rds_client *c, rds_script *s, int nkeys, int argc, const char **argv,
                     const size_t *argvlen) {
    /* Heap, not stack: CivetWeb workers run on small (~100 KiB) stacks. */
    const char **av = malloc(((size_t)argc + 3) * sizeof *av);
    size_t *al = malloc(((size_t)argc + 3) * sizeof *al);
    redisReply *r = NULL;
    char nk[16];
    if (!av || !al) {
        set_error(c, "out of memory");
        goto out;
    }
    snprintf(nk, sizeof nk, "%d", nkeys);
    av[0] = "EVALSHA";
    al[0] = 7;
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[i + 3] = argv[i];
        al[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    for (int tries = 0; tries < 2; tries++) {
        if ((tries > 0 || !atomic_load_explicit(&s->loaded, memory_order_acquire)) &&
            load_script(c, s))
            goto out;
        av[1] = s->sha;
        al[1] = 40;
        r = rds_commandargv(c, argc + 3, av, al);
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            /* Redis restarted or flushed its script cache: load again. */
            freeReplyObject(r);
            r = NULL;
            continue;
        }
        goto out;
    }
    set_error(c, "script could not be loaded");
out:
    free(av);
    free(al);
    return r;
}

/* ---- pool ------------------------------------------------------------------ */

struct rds_pool {
    rds_opts o;
    tslot *clients; /* one rds_client per calling thread */
};

static void *pool_create(void *ud) {
    return rds_client_new(&((rds_pool *)ud)->o);
}
static void pool_destroy(void *c) {
    rds_client_free(c);
}

rds_pool *rds_pool_new(const rds_opts *o) {
    rds_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->o = *o;
    p->clients = tslot_new(pool_create, pool_destroy, p);
    if (!p->clients) {
        free(p);
        return NULL;
    }
    return p;
}

rds_client *rds_pool_client(rds_pool *p) {
    return tslot_get(p->clients);
}

void rds_pool_free(rds_pool *p) {
    if (!p) return;
    tslot_free(p->clients);
    free(p);
}
