/* bus.h -- the Redis Pub/Sub subscriber that feeds the event queue.
 *
 * One thread with its own hiredis connection (a subscribed connection can do
 * nothing else) SUBSCRIBEs to the configured channels and pushes every
 * message into the evq. When the connection is lost it reconnects and
 * resubscribes by itself with capped exponential backoff (logged, counted).
 * Messages over max_event_bytes are dropped and counted; drops (oversized or
 * queue full) are logged once per burst, not once per message.
 *
 * A control channel (e.g. "nerve:control") is also subscribed; its messages
 * bypass the queue and go straight to on_control, so that fleet-wide cache
 * invalidations (kill switch engaged or reset elsewhere) are never stuck
 * behind a flood of events.
 *
 * Ownership: bus_start copies the options; Q must outlive the bus.
 * bus_get_stats is thread-safe.
 */
#ifndef NERVE_BUS_H
#define NERVE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nerve/queue.h"
#include "nerve/rds.h"

typedef struct bus_opts {
    rds_opts redis;
    char *const *channels;
    size_t n_channels;
    size_t max_event_bytes;
    const char *control_channel; /* NULL = none */
    void (*on_control)(void *ud, const char *msg, size_t len);
    void (*on_connect)(void *ud); /* after each (re)subscribe; may be NULL */
    void *ud;
} bus_opts;

typedef struct bus_stats {
    uint64_t messages, oversized, queue_full, reconnects;
    bool connected;
} bus_stats;

typedef struct bus bus;

/* Start the subscriber thread (it connects in the background). NULL on OOM
 * or thread failure with a message in ERR. */
bus *bus_start(const bus_opts *o, evq *q, char *err, size_t errlen);

/* Stop the thread (within ~200 ms) and free. NULL is fine. */
void bus_stop(bus *b);

void bus_get_stats(bus *b, bus_stats *out);

#endif
