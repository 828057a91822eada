/* mux.h -- one Redis pipeline shared by the threads of a process.
 *
 * Why: with a connection per thread, every command costs a write, a read and
 * a wake-up on both sides, in nerve and in Redis, and Redis spends most of
 * its time in those system calls, not in the commands (measured for issue
 * 12: 43 us of Redis CPU per sale over 64 connections). Commands that threads
 * are ready to send at the same moment are instead written as ONE pipeline
 * on one connection and their replies read back in order (group commit, as
 * StackExchange.Redis and Lettuce multiplex).
 *
 * There is no I/O thread: the caller that finds a connection free writes
 * every command queued so far (up to max_batch) and reads their replies;
 * while that round trip is in flight newcomers queue, and the next caller to
 * find a connection free takes them all. A caller whose command went in
 * someone else's round trip sleeps on its own condition variable and is woken
 * once, when its reply is in. So a lone command goes out at once (no added
 * latency), and the busier the process the larger the batches.
 *
 * Ordering: commands on one connection run in the order they were queued;
 * two commands queued by different threads may run in either order. Callers
 * that need an order between their commands (sale.c's per-SKU batches) keep
 * at most one in flight.
 *
 * Replication (sale.wait_replicas): with mux_set_wait, every round trip
 * ends with `WAIT N TIMEOUT` after its commands, on the same connection.
 * WAIT covers every write the connection made before it, so one per round
 * trip covers the whole batch: each command of it learns how many replicas
 * acknowledged (mux_res.replicas) for the price of one extra reply.
 *
 * Faults: the connections are rds_clients (reconnect with capped backoff).
 * A command written but never answered fails with mux_res.unknown = 1 (it
 * may have run); one that was never written fails with unknown = 0.
 *
 * Ownership: mux_command's reply is the caller's (freeReplyObject). ARGV
 * must stay valid until mux_command returns. Thread-safe.
 */
#ifndef NERVE_MUX_H
#define NERVE_MUX_H

#include <stddef.h>
#include <stdint.h>
#include "nerve/rds.h"

typedef struct mux mux;

/* CONNS connections to O's server (opened on first use), each carrying one
 * pipeline of at most MAX_BATCH commands at a time. NULL on OOM. */
mux *mux_new(const rds_opts *o, int conns, int max_batch);
void mux_free(mux *m);

typedef struct mux_res {
    int unknown;   /* failed after it was written: it may have run */
    int replicas;  /* with mux_set_wait: the replicas WAIT counted after the
                    * command (-1: WAIT failed or timed out of the connection) */
    char err[200]; /* why it failed */
} mux_res;

/* From now on, end every round trip with WAIT REPLICAS TIMEOUT_MS
 * (REPLICAS 0: no WAIT, the default). Call before the first command. */
void mux_set_wait(mux *m, int replicas, int timeout_ms);

/* Send one command through a shared pipeline and wait for its reply.
 * Returns the reply (a Redis error is a REDIS_REPLY_ERROR reply, not NULL),
 * or NULL with RES filled. */
redisReply *mux_command(mux *m, int argc, const char **argv, const size_t *argvlen, mux_res *res);

/* EVALSHA S through a shared pipeline, as rds_eval does on one client:
 * SCRIPT LOAD first when S's sha is not known yet, and once more after a
 * NOSCRIPT (Redis restarted and lost its script cache), then the EVALSHA
 * again. ARGV[0] and ARGV[1] (and their ARGVLEN) are filled here with
 * EVALSHA and the sha; ARGV[2..ARGC) are NUMKEYS, the keys and the
 * arguments (the caller leaves the two slots free: no copy of the argument
 * vector on the hot path). The reply, or NULL with RES: res->unknown is
 * set only when the EVALSHA itself was written and not answered (a failed
 * SCRIPT LOAD ran nothing). */
redisReply *mux_eval(mux *m, rds_script *s, int argc, const char **argv, size_t *argvlen,
                     mux_res *res);

typedef struct mux_stats {
    uint64_t commands; /* answered or failed */
    uint64_t flushes;  /* round trips */
} mux_stats;
void mux_get_stats(mux *m, mux_stats *out);

#endif
