/* bus.c -- the stream reader and the Pub/Sub subscriber (see bus.h).
 *
 * The subscriber polls the socket itself (200 ms) rather than blocking inside
 * redisGetReply, so that bus_stop never waits on a quiet channel and a read
 * timeout never poisons the hiredis context. The stream reader blocks in
 * XREADGROUP (or, on a Redis Cluster, polls: sgroup.h) for at most 200 ms
 * for the same reason.
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

#include <cjson/cJSON.h>

#include "nerve/backoff.h"
#include "nerve/clock.h"
#include "nerve/keys.h"
#include "nerve/log.h"

struct bus {
    bus_opts o;
    char **channels;
    char *control;
    char *group;
    evq *q;
    pthread_t th, sth;
    bool sth_started, stopped;
    _Atomic int stop;
    pthread_mutex_t mu; /* guards st */
    bus_stats st;
    /* streams */
    sg *sg;
    size_t *stream_ch; /* the channel (index) of each stream of the sg */
    size_t n_streams;
    pthread_mutex_t fly_mu; /* guards in_flight (st.in_flight is a copy) */
    pthread_cond_t fly_cv;  /* in_flight went down */
    uint64_t in_flight;
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
    size_t nch = b->o.pubsub_input ? b->o.n_channels : 0;
    size_t n = nch + (b->control ? 1 : 0);
    if (!n) {
        snprintf(err, errlen, "nothing to subscribe to");
        goto err;
    }
    const char **argv = calloc(n + 1, sizeof *argv);
    if (!argv) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    argv[0] = "SUBSCRIBE";
    for (size_t i = 0; i < nch; i++) argv[i + 1] = b->channels[i];
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

/* A message nerve itself published carries "partition" and "instance"
 * (keys.h; cjson encodes them as "partition":N and "instance":"..."): it is
 * in a stream already. Two memmem calls, no parse: every sale's event comes
 * back here once per subscribed instance. A foreign Pub/Sub message with
 * both keys is taken for nerve's own and not evaluated (README). */
static bool own_event(const char *msg, size_t len) {
    return memmem(msg, len, "\"partition\":", 12) && memmem(msg, len, "\"instance\":", 11);
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
    if (b->o.streams && own_event(msg->str, msg->len)) {
        stat_add(b, &b->st.own_ignored, 1);
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
    pthread_setname_np(pthread_self(), "nerve-pubsub"); /* top -H, perf */
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
        log_info("bus", "subscribed channels=%zu", b->o.pubsub_input ? b->o.n_channels : 0);
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

/* ---- streams ----------------------------------------------------------------- */

static void fly_add(bus *b, uint64_t n) {
    pthread_mutex_lock(&b->fly_mu);
    b->in_flight += n;
    pthread_mutex_unlock(&b->fly_mu);
}

static void fly_sub(bus *b, uint64_t n) {
    pthread_mutex_lock(&b->fly_mu);
    b->in_flight = b->in_flight > n ? b->in_flight - n : 0;
    pthread_cond_broadcast(&b->fly_cv);
    pthread_mutex_unlock(&b->fly_mu);
}

/* Wait (200 ms at most) until fewer than LIMIT entries are in flight; the
 * room left, 0 when there is none yet. */
static uint64_t fly_room(bus *b, uint64_t limit) {
    struct timespec dl = clock_deadline_ms(200);
    pthread_mutex_lock(&b->fly_mu);
    while (b->in_flight >= limit && !atomic_load(&b->stop))
        if (pthread_cond_timedwait(&b->fly_cv, &b->fly_mu, &dl) == ETIMEDOUT) break;
    uint64_t room = b->in_flight < limit ? limit - b->in_flight : 0;
    pthread_mutex_unlock(&b->fly_mu);
    return room;
}

/* Queue one entry, waiting for room; once stopping, for 2 s at most (what
 * is not queued stays pending in Redis for another instance to claim). */
static int push_entry(bus *b, const sg_msg *m, uint64_t *stop_at) {
    const char *ch = b->channels[b->stream_ch[m->stream_idx]];
    for (;;) {
        int rc = evq_push_entry(b->q, ch, m->event, m->len, m->stream, m->id, 200);
        if (rc <= 0) return rc; /* queued, or closed / out of memory */
        if (atomic_load(&b->stop)) {
            /* One 2 s budget for the whole read, not 2 s per entry. */
            uint64_t now = clock_now_ns();
            if (!*stop_at) *stop_at = now + 2000000000ull;
            if (now >= *stop_at) return -1;
        }
    }
}

#define READ_LINGER_US 1000

static void *stream_run(void *arg) {
    pthread_setname_np(pthread_self(), "nerve-streams"); /* top -H, perf */
    bus *b = arg;
    enum { BATCH = 128 };
    sg_msg m[BATCH];
    bool down = false;
    while (!atomic_load(&b->stop)) {
        uint64_t room = fly_room(b, BUS_STREAM_WINDOW);
        if (!room) continue;
        size_t want = room < BATCH ? (size_t)room : BATCH;
        int n = sg_read(b->sg, m, want, 200);
        if (n < 0) {
            if (!down)
                log_warn("bus", "stream reader down, retrying error=\"%s\"", sg_errstr(b->sg));
            down = true;
            /* Its next connect reads this consumer's pending list again:
             * first let every entry handed out be acknowledged, so that
             * none of them is queued twice. */
            while (!atomic_load(&b->stop) && fly_room(b, 1) == 0) continue;
            continue;
        }
        if (down) log_info("bus", "stream reader back streams=%zu", b->n_streams);
        down = false;
        uint64_t stop_at = 0;
        for (int i = 0; i < n; i++) {
            fly_add(b, 1);
            if (push_entry(b, &m[i], &stop_at) != 0) fly_sub(b, 1);
        }
        sg_msgs_free(m, (size_t)n);
        /* Under load (the read found entries, fewer than it could take),
         * let more arrive before the next read: each XREADGROUP over every
         * stream costs Redis about as much as the sales it returns when it
         * returns a few (commandstats, issue 12). Only events of a burst
         * wait, at most this long; the first after a quiet spell is read
         * at once (the read blocks until it arrives). */
        if (n > 0 && (size_t)n < want && !atomic_load(&b->stop)) {
            struct timespec ts = { 0, READ_LINGER_US * 1000L };
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

void bus_release(bus *b, size_t n) {
    fly_sub(b, n);
}

int bus_ack(bus *b, rds_client *c, const evq_item *items, size_t n) {
    const char *streams[BUS_ACK_BATCH], *ids[BUS_ACK_BATCH];
    int rc = 0;
    size_t i = 0;
    while (i < n) {
        size_t k = 0;
        for (; i < n && k < BUS_ACK_BATCH; i++)
            if (items[i].stream) {
                streams[k] = items[i].stream;
                ids[k++] = items[i].id;
            }
        if (!k) continue;
        if (sg_ack_client(b->sg, c, b->group, streams, ids, k) != 0) {
            rc = -1;
            stat_add(b, &b->st.ack_errors, 1);
        }
        fly_sub(b, k);
    }
    return rc;
}

/* 1 when nerve's commits append to CH's partition streams (keys.h). */
static bool appended_by_nerve(const bus *b, const char *ch) {
    return (b->o.inventory_channel && strcmp(ch, b->o.inventory_channel) == 0) ||
           (b->o.sales_channel && strcmp(ch, b->o.sales_channel) == 0);
}

/* The stream keys of every channel (keys.h), in channel order: the ingest
 * stream of each, and the partition streams of the channels nerve's
 * commits append to. Nothing else writes partition streams (external
 * producers append to the ingest one), and each stream more in every
 * XREADGROUP is work for Redis on every read. */
static int open_streams(bus *b, char *err, size_t errlen) {
    size_t per = (size_t)b->o.partitions + 1, total = 0, cap = per * b->o.n_channels;
    char **keys = calloc(cap ? cap : 1, sizeof *keys);
    b->stream_ch = calloc(cap ? cap : 1, sizeof *b->stream_ch);
    if (!keys || !b->stream_ch) {
        free(keys);
        goto oom;
    }
    for (size_t i = 0; i < b->o.n_channels; i++) {
        char **v = NULL;
        size_t nv = 0;
        if (keys_streams_of(b->o.prefix, b->o.partitions, b->channels[i], &v, &nv) != 0 ||
            nv != per) {
            keys_streams_free(v, nv);
            snprintf(err, errlen, "bus: the stream names of channel %.200s do not fit",
                     b->channels[i]);
            keys_streams_free(keys, total);
            return -1;
        }
        bool own = appended_by_nerve(b, b->channels[i]);
        for (size_t k = 0; k < nv; k++) {
            if (own || k + 1 == nv) { /* the ingest stream is the last */
                b->stream_ch[total] = i;
                keys[total++] = v[k];
            } else {
                free(v[k]);
            }
        }
        free(v); /* the strings moved to KEYS */
    }
    sg_opts so = { .redis = b->o.redis,
                   .streams = (const char *const *)keys,
                   .n_streams = total,
                   .group = b->o.group,
                   .consumer = b->o.consumer,
                   .claim_idle_ms = b->o.claim_idle_ms,
                   .max_event_bytes = b->o.max_event_bytes };
    b->sg = sg_open(&so, err, errlen);
    keys_streams_free(keys, total);
    b->n_streams = total;
    return b->sg ? 0 : -1;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* ---- lifecycle ------------------------------------------------------------------ */

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
    if (o->streams && o->n_channels) {
        if (!o->prefix || !o->group || !o->consumer || o->partitions < 1) {
            snprintf(err, errlen, "bus: streams need a prefix, a group, a consumer and partitions");
            goto err;
        }
        if (!(b->group = strdup(o->group))) goto oom;
        if (open_streams(b, err, errlen) != 0) goto err;
    }
    b->o.streams = b->sg != NULL;
    b->st.streams = b->o.streams;
    pthread_mutex_init(&b->mu, NULL);
    pthread_mutex_init(&b->fly_mu, NULL);
    clock_cond_init(&b->fly_cv);
    if (pthread_create(&b->th, NULL, run, b) != 0) {
        snprintf(err, errlen, "cannot start the bus thread");
        goto err_sync;
    }
    if (b->sg) {
        if (pthread_create(&b->sth, NULL, stream_run, b) != 0) {
            atomic_store(&b->stop, 1);
            pthread_join(b->th, NULL);
            snprintf(err, errlen, "cannot start the stream reader thread");
            goto err_sync;
        }
        b->sth_started = true;
        log_info("bus", "reading streams=%zu group=%s consumer=%s claim_idle_ms=%d", b->n_streams,
                 o->group, o->consumer, o->claim_idle_ms);
    }
    return b;
err_sync:
    pthread_mutex_destroy(&b->mu);
    pthread_mutex_destroy(&b->fly_mu);
    pthread_cond_destroy(&b->fly_cv);
    goto err;
oom:
    snprintf(err, errlen, "out of memory");
err:
    if (b) {
        for (size_t i = 0; b->channels && i < o->n_channels; i++) free(b->channels[i]);
        free(b->channels);
        free(b->control);
        free(b->group);
        free(b->stream_ch);
        sg_close(b->sg);
        free(b);
    }
    return NULL;
}

void bus_stop_input(bus *b) {
    if (!b || b->stopped) return;
    atomic_store(&b->stop, 1);
    pthread_join(b->th, NULL);
    if (b->sth_started) pthread_join(b->sth, NULL);
    b->stopped = true;
}

void bus_stop(bus *b) {
    if (!b) return;
    bus_stop_input(b);
    for (size_t i = 0; i < b->o.n_channels; i++) free(b->channels[i]);
    free(b->channels);
    free(b->control);
    free(b->group);
    free(b->stream_ch);
    sg_close(b->sg);
    pthread_mutex_destroy(&b->mu);
    pthread_mutex_destroy(&b->fly_mu);
    pthread_cond_destroy(&b->fly_cv);
    free(b);
}

void bus_get_stats(bus *b, bus_stats *out) {
    pthread_mutex_lock(&b->mu);
    *out = b->st;
    pthread_mutex_unlock(&b->mu);
    if (b->sg) sg_get_stats(b->sg, &out->sg);
    pthread_mutex_lock(&b->fly_mu);
    out->in_flight = b->in_flight;
    pthread_mutex_unlock(&b->fly_mu);
}
