/* bus.h -- the event inputs that feed the event queue: Redis Streams read
 * through a consumer group, and Redis Pub/Sub.
 *
 * Streams (bus.streams): one reader thread (sgroup.h, a connection of its
 * own, or one per primary of a Redis Cluster, read slot by slot) reads, for each channel, its partition streams PREFIX{pN}:stream:CH
 * and its ingest stream PREFIXstream:CH through the fleet's consumer group
 * (bus.group), this instance being the consumer CONSUMER. Each entry is
 * pushed into the evq with its stream and id, waiting for room rather than
 * dropping it; the evaluator acknowledges it with bus_ack once its decisions
 * are applied. At most STREAM_WINDOW entries are in this process unacked at
 * a time, so an entry never waits here long enough to look abandoned
 * (claim_idle_ms) to the other instances. After a lost connection the
 * reader waits until every entry it handed out was acknowledged (or failed
 * to be) before reading its own pending list again, so that none is
 * evaluated twice by this instance. Delivery is at least once: the
 * decisions are idempotent (actions.h).
 *
 * Pub/Sub: one thread with its own hiredis connection (a subscribed
 * connection can do nothing else; on a Redis Cluster, to the configured
 * node: PUBLISH is broadcast to every node) SUBSCRIBEs to the configured channels
 * (when pubsub_input) and pushes every message into the evq, best effort:
 * what is published while it is not subscribed is lost. With streams on,
 * a message carrying a top-level "partition" field is nerve's own event,
 * already appended to a stream, and is ignored (counted), so that no event
 * is evaluated twice. When the connection is lost it reconnects and
 * resubscribes by itself with capped exponential backoff (logged, counted).
 * Messages over max_event_bytes are dropped and counted; drops (oversized or
 * queue full) are logged once per burst, not once per message.
 *
 * A control channel (e.g. "nerve:control") is also subscribed (also without
 * pubsub_input); its messages bypass the queue and go straight to
 * on_control, so that fleet-wide cache invalidations (kill switch engaged or
 * reset elsewhere) are never stuck behind a flood of events.
 *
 * Ownership: bus_start copies the options; Q must outlive the bus.
 * bus_get_stats and bus_ack are thread-safe.
 */
#ifndef NERVE_BUS_H
#define NERVE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nerve/queue.h"
#include "nerve/rds.h"
#include "nerve/sgroup.h"

/* Entries read from streams and not yet acknowledged, at most. */
#define BUS_STREAM_WINDOW 256
/* Entries a consumer acknowledges in one bus_ack call at most: half the
 * window, so the reader keeps reading while one batch waits for its ack. */
#define BUS_ACK_BATCH (BUS_STREAM_WINDOW / 2)

typedef struct bus_opts {
    rds_opts redis;
    char *const *channels;
    size_t n_channels;
    size_t max_event_bytes;
    const char *control_channel; /* NULL = none */
    void (*on_control)(void *ud, const char *msg, size_t len);
    void (*on_connect)(void *ud); /* after each (re)subscribe; may be NULL */
    void *ud;
    bool pubsub_input; /* subscribe to CHANNELS (else only to the control channel) */
    /* Streams input; off when !streams. */
    bool streams;
    const char *prefix; /* redis.prefix: the stream names (keys.h) */
    int partitions;     /* bus.partitions */
    const char *group;  /* bus.group */
    /* The channels nerve's commits append to (bus.inventory_channel,
     * bus.sales_channel): only theirs have partition streams to read; every
     * channel's ingest stream is read. */
    const char *inventory_channel, *sales_channel;
    const char *consumer; /* the instance id */
    int claim_idle_ms;
} bus_opts;

typedef struct bus_stats {
    /* Pub/Sub */
    uint64_t messages, oversized, queue_full, reconnects;
    uint64_t own_ignored; /* Pub/Sub messages carrying "partition": read from a stream instead */
    bool connected;
    /* Streams */
    bool streams;        /* the stream reader runs */
    sg_stats sg;         /* its counters (sgroup.h) */
    uint64_t in_flight;  /* entries handed to the queue and not yet acknowledged */
    uint64_t ack_errors; /* bus_ack calls that failed (the entries stay pending) */
} bus_stats;

typedef struct bus bus;

/* Start the subscriber thread (it connects in the background). NULL on OOM
 * or thread failure with a message in ERR. */
bus *bus_start(const bus_opts *o, evq *q, char *err, size_t errlen);

/* Stop reading (within ~200 ms; the stream reader first queues what it
 * has read, waiting up to 2 s for room): nothing is pushed after it
 * returns. bus_ack still works. NULL is fine; idempotent. */
void bus_stop_input(bus *b);

/* bus_stop_input, then free. NULL is fine. */
void bus_stop(bus *b);

/* Acknowledge the stream entries among ITEMS[0..n-1] (items without a
 * stream are skipped) on the caller's client C: XACK to the group. Call it
 * once their decisions are applied. 0, or -1 on a Redis error (the entries
 * stay pending and are claimed again later). Thread-safe. */
int bus_ack(bus *b, rds_client *c, const evq_item *items, size_t n);

/* N stream entries handed out are given back without an acknowledgement
 * (their decisions failed): they stay pending in Redis and are claimed
 * again after bus.claim_idle_ms; this frees their place in the reader's
 * window. Thread-safe. */
void bus_release(bus *b, size_t n);

void bus_get_stats(bus *b, bus_stats *out);

#endif
