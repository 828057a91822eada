/* queue.c -- bounded event queue (see queue.h).
 *
 * A ring of item slots guarded by one mutex: pushes come from one bus thread
 * and pops from one evaluator thread, so the lock is never contended enough
 * to matter next to the JSON parse and the Lua call each event costs.
 */
#include "nerve/queue.h"

#include "nerve/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct evq {
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* an item arrived, or closed */
    pthread_cond_t room; /* an item left, or closed */
    evq_item *ring;
    size_t cap, head, n;
    int closed;
    evq_stats st;
};

evq *evq_new(size_t capacity) {
    evq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->ring = calloc(capacity ? capacity : 1, sizeof *q->ring);
    if (!q->ring) {
        free(q);
        return NULL;
    }
    q->cap = capacity ? capacity : 1;
    q->st.capacity = q->cap;
    pthread_mutex_init(&q->mu, NULL);
    clock_cond_init(&q->cv);
    clock_cond_init(&q->room);
    return q;
}

void evq_item_free(evq_item *it) {
    if (!it) return;
    free(it->channel);
    free(it->data);
    free(it->stream);
    it->channel = it->data = it->stream = NULL;
}

void evq_free(evq *q) {
    if (!q) return;
    for (size_t i = 0; i < q->n; i++) evq_item_free(&q->ring[(q->head + i) % q->cap]);
    free(q->ring);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    pthread_cond_destroy(&q->room);
    free(q);
}

/* Copy the arguments into IT (outside the lock). 0, or -1 on OOM. */
static int make_item(evq_item *it, const char *channel, const char *data, size_t len,
                     const char *stream, const char *id) {
    memset(it, 0, sizeof *it);
    it->channel = strdup(channel);
    it->data = malloc(len + 1);
    it->len = len;
    if (stream) {
        it->stream = strdup(stream);
        snprintf(it->id, sizeof it->id, "%s", id);
    }
    if (!it->channel || !it->data || (stream && !it->stream)) {
        evq_item_free(it);
        return -1;
    }
    memcpy(it->data, data, len);
    it->data[len] = 0;
    return 0;
}

/* Queue IT (locked). */
static void put(evq *q, evq_item *it) {
    it->enq_ns = clock_now_ns();
    q->ring[(q->head + q->n) % q->cap] = *it;
    q->n++;
    q->st.pushed++;
    if (q->n > q->st.high_water) q->st.high_water = q->n;
    pthread_cond_signal(&q->cv);
}

int evq_push(evq *q, const char *channel, const char *data, size_t len) {
    /* Refuse before copying when full: a flood must cost as little as possible. */
    pthread_mutex_lock(&q->mu);
    int full = q->closed || q->n == q->cap;
    if (full) {
        q->st.dropped++;
        q->st.last_drop_ns = clock_now_ns();
    }
    pthread_mutex_unlock(&q->mu);
    if (full) return -1;

    evq_item it;
    if (make_item(&it, channel, data, len, NULL, NULL) != 0) return -1;

    pthread_mutex_lock(&q->mu);
    if (q->closed || q->n == q->cap) {
        q->st.dropped++;
        q->st.last_drop_ns = clock_now_ns();
        pthread_mutex_unlock(&q->mu);
        evq_item_free(&it);
        return -1;
    }
    put(q, &it);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int evq_push_entry(evq *q, const char *channel, const char *data, size_t len, const char *stream,
                   const char *id, int wait_ms) {
    evq_item it;
    if (make_item(&it, channel, data, len, stream, id) != 0) return -1;
    struct timespec dl = clock_deadline_ms(wait_ms);
    pthread_mutex_lock(&q->mu);
    while (!q->closed && q->n == q->cap)
        if (pthread_cond_timedwait(&q->room, &q->mu, &dl) == ETIMEDOUT) break;
    int rc = q->closed ? -1 : q->n < q->cap ? 0 : 1;
    if (rc == 0) put(q, &it);
    pthread_mutex_unlock(&q->mu);
    if (rc) evq_item_free(&it);
    return rc;
}

evq_pop_result evq_pop(evq *q, evq_item *out, int timeout_ms) {
    struct timespec dl = clock_deadline_ms(timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (q->n == 0 && !q->closed) {
        if (pthread_cond_timedwait(&q->cv, &q->mu, &dl) == ETIMEDOUT) break;
    }
    evq_pop_result rc;
    if (q->n) {
        *out = q->ring[q->head];
        memset(&q->ring[q->head], 0, sizeof q->ring[q->head]);
        q->head = (q->head + 1) % q->cap;
        q->n--;
        q->st.popped++;
        pthread_cond_signal(&q->room);
        rc = EVQ_GOT;
    } else {
        rc = q->closed ? EVQ_CLOSED : EVQ_TIMEOUT;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

void evq_close(evq *q) {
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->mu);
}

void evq_get_stats(evq *q, evq_stats *out) {
    pthread_mutex_lock(&q->mu);
    *out = q->st;
    out->depth = q->n;
    /* FIFO: the head is the oldest, so its age is how late the consumer is. */
    out->oldest_enq_ns = q->n ? q->ring[q->head].enq_ns : 0;
    pthread_mutex_unlock(&q->mu);
}

uint64_t evq_oldest_age_ns(const evq_stats *st, uint64_t now) {
    if (!st->depth || !st->oldest_enq_ns || now < st->oldest_enq_ns) return 0;
    return now - st->oldest_enq_ns;
}
