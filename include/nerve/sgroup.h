/* sgroup.h -- a Redis Streams consumer-group reader over many streams.
 *
 * Why: Pub/Sub drops every message published while nobody listens; a stream
 * read through a consumer group keeps each entry until a consumer of the
 * group acknowledges it (XACK), and shares the entries of a stream among the
 * group's consumers, each entry delivered to one of them. An entry a
 * consumer took and never acknowledged (it died) stays in the group's
 * pending list and is claimed by another consumer once idle long enough
 * (XAUTOCLAIM). Delivery is therefore at least once: a consumer must make
 * what it does with an entry idempotent.
 *
 * One sg reads the streams STREAMS[0..N-1] as consumer CONSUMER of group
 * GROUP, over one hiredis connection of its own (rds_connect: AUTH, SELECT,
 * timeouts), or one per cluster primary (below). sg_read hands out, in this order:
 *   1. after each (re)connect, this consumer's own pending entries (read
 *      with id 0: entries it was handed before and never acknowledged, e.g.
 *      when the reply of a read was lost with the connection);
 *   2. every claim_idle_ms / 2 per stream, the entries of any consumer idle
 *      for at least claim_idle_ms (XAUTOCLAIM; claimed = 1);
 *   3. new entries (XREADGROUP ... >), waiting up to BLOCK_MS for one.
 * The group of each stream is created at id 0 with MKSTREAM on each
 * (re)connect (BUSYGROUP ignored), so entries appended before any consumer
 * ran are read too; a stream deleted, or a group destroyed, under a running
 * reader (NOGROUP) is created again and the read retried once.
 *
 * Redis Cluster (sg_opts.redis.cluster): a command may only name keys of one hash
 * slot, so the streams are cut into slot groups (a partition's streams share
 * the tag {pN}: one group per partition, one per ingest stream) and every
 * read is one XREADGROUP per group, each sent to the primary serving its
 * slot over a connection per primary; the commands of every node are all
 * written before any reply is read (one round trip per pass). The slot map
 * comes from CLUSTER SLOTS at each connect, asked of the nodes the reader
 * used last, then of the configured node; MOVED, ASK, TRYAGAIN or CLUSTERDOWN in a
 * reply drops every connection, so the next connect fetches the map again
 * (a slot migration pauses the reader while the slot's streams answer
 * ASK). A blocked command holds its connection and names one slot, so the
 * wait for new entries is a poll: a pass without BLOCK over every group,
 * then a pause of poll_ms (SG_CLUSTER_POLL_MS by default), until entries
 * come or the wait is over. An entry appended while the reader is idle is
 * read up to poll_ms later than from a single Redis (nothing waits under
 * load); idle, a reader asks the cluster for one read per group per poll.
 * In standalone mode every stream is in one group: one command, one
 * blocking read, as before.
 *
 * Bounds: an entry whose `event` field is over max_event_bytes, or that has
 * no `event` field, is acknowledged at once, never handed out, and counted
 * (oversized, skipped): it would otherwise come back after every claim. One
 * read asks for at most about MAX entries in all (COUNT per stream is MAX
 * divided among the streams, at least 1); the few over MAX wait inside the
 * sg for the next call.
 *
 * Gaps: every 5 s, and before the first read after a pause, the reader
 * compares each stream's length with the group's lag (entries added since
 * the last one it read): a lag above the length means entries were trimmed
 * (XADD MAXLEN ~) before the group read them; they are lost to it. That is
 * logged as an error and counted (gaps), not silent. (Redis reports no lag
 * for a group that never read the stream: such a gap goes unseen.)
 *
 * Failures: sg_read and sg_ack return -1 on a connection or Redis error (the
 * message in sg_errstr) and drop the connection (when a read failed after
 * entries were read, sg_read hands those out first and returns the -1 once
 * they are all out: a caller that sees -1 knows that the reconnect will read
 * its pending list again, see 1. above); the next call reconnects,
 * but not before a capped exponential backoff (backoff.h: 10 ms doubling up
 * to redis.reconnect_max_ms, equal jitter) has passed: a call made sooner
 * waits at most BLOCK_MS for it and returns -1 again.
 *
 * Thread-safety: an sg is NOT thread-safe (its own hiredis connections): one
 * thread calls sg_read/sg_ack/sg_close. sg_get_stats may be called from any
 * thread. sg_ack_client acknowledges on a caller's rds_client instead, for a
 * thread other than the reader's.
 * Ownership: sg_open copies the options and every string in them. A message's
 * stream points into the sg (valid until sg_close); its event is the
 * caller's, freed with sg_msgs_free.
 */
#ifndef NERVE_SGROUP_H
#define NERVE_SGROUP_H

#include <stddef.h>
#include <stdint.h>

#include "nerve/rds.h"

/* The pause between two polls of every slot group while a reader waits
 * (cluster mode): the added latency, at worst, of an event appended while
 * the reader is idle. (Not a BLOCK of this length: Redis 7.0 times blocked
 * commands out on its 100 ms cron.) */
#define SG_CLUSTER_POLL_MS 10

typedef struct sg_opts {
    rds_opts redis;             /* connect/command timeouts, reconnect_max_ms */
    const char *const *streams; /* stream keys */
    size_t n_streams;           /* >= 1 */
    const char *group;          /* consumer group, e.g. bus.group */
    const char *consumer;       /* this consumer's name (the instance id) */
    int claim_idle_ms;          /* claim others' entries idle this long; <= 0: never */
    size_t max_event_bytes;     /* larger `event` fields are acked and dropped; 0: no limit */
    const char *field;          /* the field handed out as `event`; NULL: "event" (the
                                  * ledger reads the audit stream's "data") */
    int poll_ms; /* cluster mode: the pause between polls; <= 0: SG_CLUSTER_POLL_MS */
} sg_opts;

typedef struct sg_msg {
    const char *stream; /* the stream key (owned by the sg) */
    size_t stream_idx;  /* index of that stream in sg_opts.streams */
    char id[48];        /* entry id "ms-seq" */
    uint64_t id_ms;     /* the ms part of the id: when the entry was appended */
    char *event;        /* the `event` field, NUL-terminated (len excludes it) */
    size_t len;
    int claimed; /* 1: taken over from another consumer (or from an
                          * earlier life of this one) by XAUTOCLAIM */
} sg_msg;

typedef struct sg_stats {
    uint64_t reads;     /* read commands sent (XREADGROUP, XAUTOCLAIM) */
    uint64_t messages;  /* entries handed out by sg_read */
    uint64_t claimed;   /* ... of which claimed by XAUTOCLAIM */
    uint64_t acked;     /* entries acknowledged (sg_ack, sg_ack_client, and the dropped ones) */
    uint64_t skipped;   /* entries without an `event` field, acked and dropped */
    uint64_t oversized; /* entries over max_event_bytes, acked and dropped */
    uint64_t deleted;   /* pending entries gone from the stream (trimmed), dropped by XAUTOCLAIM */
    uint64_t groups_created; /* XGROUP CREATE that created a group (not BUSYGROUP) */
    uint64_t reconnects;     /* connections opened after the first */
    uint64_t errors;         /* sg_read/sg_ack calls that returned -1 */
    uint64_t gaps;           /* entries found trimmed from a stream before the group read them (each
                    * new trim point once; logged as an error) */
    int connected;           /* 1 while the connection is up */
} sg_stats;

typedef struct sg sg;

/* Copy O and return the reader; it connects on the first sg_read. NULL on
 * bad options (no stream, no group or consumer) or OOM, with a message in ERR. */
sg *sg_open(const sg_opts *o, char *err, size_t errlen);

/* Fill OUT[0..n-1] with up to MAX (>= 1) entries, waiting up to BLOCK_MS
 * (0: not at all) for new ones when there is nothing pending or claimable.
 * Returns n >= 0, or -1 on an error (sg_errstr). The caller frees the
 * messages with sg_msgs_free after acknowledging them. */
int sg_read(sg *g, sg_msg *out, size_t max, int block_ms);

/* XACK the N messages (one pipelined XACK per stream). 0, or -1 (sg_errstr). */
int sg_ack(sg *g, const sg_msg *m, size_t n);

/* The same XACKs on the caller's client C (any thread): for entries handed
 * from the reader's thread to another. STREAMS[i] and IDS[i] name entry i.
 * 0, or -1 (rds_errstr(C)). Counted in G's stats when G is not NULL. */
int sg_ack_client(sg *g, rds_client *c, const char *group, const char *const *streams,
                  const char *const *ids, size_t n);

/* Free the events of M[0..n-1] (the array itself is the caller's). */
void sg_msgs_free(sg_msg *m, size_t n);

/* Close the connection and free. Entries read and not acknowledged stay
 * pending in Redis (claimed by another consumer later). The consumer is
 * removed (XGROUP DELCONSUMER) from the streams where it holds no pending
 * entry, so restarts do not pile up consumer names. NULL is fine. */
void sg_close(sg *g);

/* The last error, "" if none. */
const char *sg_errstr(const sg *g);

/* A snapshot of the counters (zeros for NULL). Thread-safe. */
void sg_get_stats(sg *g, sg_stats *out);

#endif
