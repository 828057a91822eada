/* queue.h -- the bounded event queue between the bus and the evaluator.
 *
 * Multi-producer, multi-consumer FIFO of (channel, payload) copies, with a
 * fixed capacity: a push into a full queue drops the event and counts it
 * (never unbounded memory growth). FIFO order means events of one channel are
 * evaluated in arrival order by a single consumer.
 *
 * An item read from a stream also carries its stream key and entry id, so
 * that the consumer can acknowledge it once evaluated; such a producer waits
 * for room rather than drop (evq_push_entry): an entry it dropped would stay
 * pending in Redis and come back only when claimed.
 *
 * Ownership: evq_push copies its arguments; evq_pop hands the item's strings
 * to the caller, who frees them with evq_item_free. All functions are
 * thread-safe.
 */
#ifndef NERVE_QUEUE_H
#define NERVE_QUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct evq_item {
    char *channel;
    char *data; /* NUL-terminated; len excludes the NUL */
    size_t len;
    uint64_t enq_ns; /* CLOCK_MONOTONIC when pushed */
    char *stream;    /* the stream key it was read from; NULL: Pub/Sub (nothing to ack) */
    char id[48];     /* its entry id ("" for Pub/Sub) */
} evq_item;

typedef struct evq_stats {
    uint64_t pushed, dropped, popped;
    size_t depth, capacity, high_water;
    uint64_t last_drop_ns;  /* CLOCK_MONOTONIC of the last drop, 0 if never */
    uint64_t oldest_enq_ns; /* enq_ns of the oldest queued item, 0 when empty */
} evq_stats;

typedef struct evq evq;

evq *evq_new(size_t capacity); /* NULL on OOM */
void evq_free(evq *q);         /* frees queued items; NULL is fine */

/* 0 queued; -1 full (dropped and counted), closed, or out of memory. */
int evq_push(evq *q, const char *channel, const char *data, size_t len);

/* The same for a stream entry STREAM/ID, waiting up to WAIT_MS for room
 * when the queue is full. 0 queued; 1 still full after WAIT_MS (not counted
 * as a drop: the caller still holds the entry and retries, or leaves it
 * pending in Redis); -1 closed or out of memory. */
int evq_push_entry(evq *q, const char *channel, const char *data, size_t len, const char *stream,
                   const char *id, int wait_ms);

typedef enum {
    EVQ_CLOSED = -1, /* closed and empty: the consumer is done */
    EVQ_TIMEOUT = 0, /* nothing arrived in time */
    EVQ_GOT = 1,     /* *OUT holds an item */
} evq_pop_result;

/* Wait up to TIMEOUT_MS for an item. */
evq_pop_result evq_pop(evq *q, evq_item *out, int timeout_ms);

/* No more pushes; pops drain what is left, then return -1. */
void evq_close(evq *q);

/* A consistent snapshot (one lock), cheap enough for every scrape and probe. */
void evq_get_stats(evq *q, evq_stats *out);
/* How long the oldest queued item has waited at NOW (clock_now_ns), 0 when empty. */
uint64_t evq_oldest_age_ns(const evq_stats *st, uint64_t now);
void evq_item_free(evq_item *it);

#endif
