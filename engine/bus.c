/* bus.c -- Redis Pub/Sub subscriber (see bus.h).
 *
 * The thread polls the socket itself (200 ms) rather than blocking inside
 * redisGetReply, so that bus_stop never waits on a quiet channel and a read
 * timeout never poisons the hiredis context.
 */
#include "nerve/bus.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/backoff.h"
#include "nerve/log.h"

struct bus {
    bus_opts o;
    char **channels;
    char *control;
    evq *q;
    pthread_t th;
    _Atomic int stop;
    pthread_mutex_t mu; /* guards st */
    bus_stats st;
};

static void stat_add(bus *b, uint64_t *field, uint64_t n) {
    pthread_mutex_lock(&b->mu);
    *field += n;
    pthread_mutex_unlock(&b->mu);
}

static void set_connected(bus *b, bool up) {
    pthread_mutex_lock(&b->mu);
    b->st.connected = up;
    pthread_mutex_unlock(&b->mu);
}

/* Connect (rds_connect: timeouts, AUTH, SELECT) and subscribe. NULL with a
 * message in ERR. */
static redisContext *subscribe(bus *b, char *err, size_t errlen) {
    redisContext *c = rds_connect(&b->o.redis, err, errlen);
    if (!c) return NULL;
    /* SUBSCRIBE ch... control */
    size_t n = b->o.n_channels + (b->control ? 1 : 0);
    const char **argv = calloc(n + 1, sizeof *argv);
    if (!argv) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    argv[0] = "SUBSCRIBE";
    for (size_t i = 0; i < b->o.n_channels; i++) argv[i + 1] = b->channels[i];
    if (b->control) argv[n] = b->control;
    int rc = redisAppendCommandArgv(c, (int)n + 1, argv, NULL);
    free(argv);
    if (rc != REDIS_OK) {
        snprintf(err, errlen, "SUBSCRIBE: %s", c->errstr);
        goto err;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep || rep->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "SUBSCRIBE: %s",
                     rep && rep->type == REDIS_REPLY_ERROR ? rep->str : c->errstr);
            freeReplyObject(rep);
            goto err;
        }
        freeReplyObject(rep);
    }
    return c;
err:
    if (c) redisFree(c);
    return NULL;
}

/* Handle one pushed reply: ["message", channel, payload]. */
static void on_reply(bus *b, redisReply *r, uint64_t *burst_drops) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message") != 0)
        return;
    const redisReply *ch = r->element[1], *msg = r->element[2];
    if (ch->type != REDIS_REPLY_STRING || msg->type != REDIS_REPLY_STRING) return;
    stat_add(b, &b->st.messages, 1);
    if (b->control && strcmp(ch->str, b->control) == 0) {
        if (b->o.on_control) b->o.on_control(b->o.ud, msg->str, msg->len);
        return;
    }
    if (msg->len > b->o.max_event_bytes) {
        stat_add(b, &b->st.oversized, 1);
        if ((*burst_drops)++ == 0)
            log_warn(
                "bus",
                "dropping oversized event channel=%s bytes=%zu max=%zu (logged once per burst)",
                ch->str, msg->len, b->o.max_event_bytes);
        return;
    }
    if (evq_push(b->q, ch->str, msg->str, msg->len) != 0) {
        stat_add(b, &b->st.queue_full, 1);
        if ((*burst_drops)++ == 0)
            log_warn("bus", "event queue full: dropping events channel=%s (logged once per burst)",
                     ch->str);
        return;
    }
    if (*burst_drops > 1)
        log_warn("bus", "burst over: %llu events dropped", (unsigned long long)*burst_drops);
    *burst_drops = 0;
}

static void *run(void *arg) {
    bus *b = arg;
    /* 10 ms doubling to the reconnect cap, jittered so that a fleet does
     * not resubscribe in lockstep after a Redis restart. */
    backoff_policy bp = { 10, b->o.redis.reconnect_max_ms > 0 ? b->o.redis.reconnect_max_ms : 2000,
                          2.0, BACKOFF_JITTER_EQUAL };
    int fails = 0;
    int first = 1;
    char err[512];
    while (!atomic_load(&b->stop)) {
        redisContext *c = subscribe(b, err, sizeof err);
        if (!c) {
            if (fails < 64) fails++;
            long long backoff = backoff_delay(&bp, fails);
            log_warn("bus", "subscriber down, retrying in %lld ms error=\"%s\"", backoff, err);
            /* Sleep in slices so bus_stop stays prompt. */
            for (long long left = backoff; left > 0 && !atomic_load(&b->stop); left -= 50) {
                long long ms = left < 50 ? left : 50;
                struct timespec ts = { 0, ms * 1000000L };
                nanosleep(&ts, NULL);
            }
            continue;
        }
        if (!first) stat_add(b, &b->st.reconnects, 1);
        first = 0;
        fails = 0;
        set_connected(b, true);
        log_info("bus", "subscribed channels=%zu", b->o.n_channels);
        if (b->o.on_connect) b->o.on_connect(b->o.ud);

        uint64_t burst = 0;
        while (!atomic_load(&b->stop)) {
            void *rep = NULL;
            /* Drain what the reader already holds before touching the socket. */
            if (redisGetReplyFromReader(c, &rep) != REDIS_OK) break;
            if (rep) {
                on_reply(b, rep, &burst);
                freeReplyObject(rep);
                continue;
            }
            struct pollfd p = { c->fd, POLLIN, 0 };
            int pr = poll(&p, 1, 200);
            if (pr < 0 && errno != EINTR) break;
            if (pr <= 0) continue;
            if (redisBufferRead(c) != REDIS_OK) break;
        }
        if (!atomic_load(&b->stop))
            log_warn("bus", "subscriber connection lost error=\"%s\"",
                     c->errstr[0] ? c->errstr : "closed");
        set_connected(b, false);
        redisFree(c);
    }
    return NULL;
}

bus *bus_start(const bus_opts *o, evq *q, char *err, size_t errlen) {
    bus *b = calloc(1, sizeof *b);
    if (!b) goto oom;
    b->o = *o;
    b->q = q;
    b->channels = calloc(o->n_channels ? o->n_channels : 1, sizeof *b->channels);
    if (!b->channels) goto oom;
    for (size_t i = 0; i < o->n_channels; i++)
        if (!(b->channels[i] = strdup(o->channels[i]))) goto oom;
    if (o->control_channel && !(b->control = strdup(o->control_channel))) goto oom;
    pthread_mutex_init(&b->mu, NULL);
    if (pthread_create(&b->th, NULL, run, b) != 0) {
        snprintf(err, errlen, "cannot start the bus thread");
        pthread_mutex_destroy(&b->mu);
        goto err;
    }
    return b;
oom:
    snprintf(err, errlen, "out of memory");
err:
    if (b) {
        for (size_t i = 0; b->channels && i < o->n_channels; i++) free(b->channels[i]);
        free(b->channels);
        free(b->control);
        free(b);
    }
    return NULL;
}

void bus_stop(bus *b) {
    if (!b) return;
    atomic_store(&b->stop, 1);
    pthread_join(b->th, NULL);
    for (size_t i = 0; i < b->o.n_channels; i++) free(b->channels[i]);
    free(b->channels);
    free(b->control);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

void bus_get_stats(bus *b, bus_stats *out) {
    pthread_mutex_lock(&b->mu);
    *out = b->st;
    pthread_mutex_unlock(&b->mu);
}
