/* evaluator.h -- the thread that evaluates queued events against the live
 * rule set and hands decisions to the actions module.
 *
 * One thread, one rules_vm: events are evaluated in queue order, so events of
 * one channel keep their arrival order, and ctx.state needs no locking. When
 * the live generation changes the thread builds a vm for the new set between
 * two events, carrying ctx.state of unchanged rules over (logged per rule).
 * While idle it refreshes the kill switch halt cache every couple of seconds.
 *
 * Liveness: the thread stamps when it takes an event and when it finishes
 * one, so another thread can tell a slow or stuck evaluator (a rule that does
 * not return, Redis calls timing out one after another) from an idle one
 * without waiting on it: eval_get_liveness never waits for an evaluation.
 *
 * Acknowledgement: an event read from a stream (evq_item.stream) is handed
 * to eval_opts.ack once its decisions are applied (act_decision returned),
 * also when it could not be parsed or a rule failed on it: those are counted
 * (bad_events, rule_errors), never retried for ever. Acks are batched (up to
 * 64) while more events are queued, and sent before the thread waits. A
 * stream event's id ("<stream>/<entry id>") goes with its decisions to
 * act_decision_ev, so that a redelivered event publishes no alert twice.
 * Every decision and rule error also goes to the decision log (declog.h)
 * with the event, its channel, entry id and the generation that decided.
 *
 * Ownership: eval_start borrows everything in eval_opts (it must outlive the
 * evaluator). eval_stop returns once the queue is closed and drained (the
 * caller closes it) or immediately if asked to abandon. Stats are thread-safe.
 */
#ifndef NERVE_EVALUATOR_H
#define NERVE_EVALUATOR_H

#include <stddef.h>
#include <stdint.h>

#include "nerve/actions.h"
#include "nerve/counters.h"
#include "nerve/declog.h"
#include "nerve/killswitch.h"
#include "nerve/live.h"
#include "nerve/queue.h"
#include "nerve/rds.h"

#define EVAL_MAX_CHANNELS 64

#define EVAL_ACK_MAX 256

typedef struct eval_opts {
    live *live;
    evq *q;
    act *act;
    ks *ks;
    rds_pool *pool;
    ctr *counters; /* ctx.incr backend; NULL: counted per Lua state */
    declog *dlog;  /* every decision and rule error is recorded there; NULL: none */
    int resume_ms; /* act_resume_stalled every this long (at the halt cache refreshes, every 2 s) */
    int stall_ms; /* bus.stall_ms: stalled when work waits this long with no event finished; 0: 5000 */
    /* Acknowledge evaluated stream events (bus_ack); NULL: none. */
    int (*ack)(void *ud, rds_client *c, const evq_item *items, size_t n);
    /* Give back N stream events whose decisions failed, unacknowledged
     * (bus_release): they stay pending and are delivered again. */
    void (*release)(void *ud, size_t n);
    void *ack_ud;
    size_t ack_batch; /* acks sent this many at a time (or after a quiet 2 ms);
                         1..EVAL_ACK_MAX, 0 = EVAL_ACK_MAX (bus.h: BUS_ACK_BATCH) */
} eval_opts;

typedef struct eval_channel_count {
    char name[128];
    uint64_t events;
} eval_channel_count;

typedef struct eval_stats {
    uint64_t events, bad_events, decisions, rule_errors;
    uint64_t deferred; /* stream events left pending: a decision failed (Redis), or no rule vm */
    eval_channel_count channels[EVAL_MAX_CHANNELS];
    size_t n_channels;
} eval_stats;

/* A snapshot for /readyz and /metrics. Times are nanoseconds at the moment
 * of the call. */
typedef struct eval_liveness {
    size_t queued;          /* events waiting in the queue */
    uint64_t oldest_age_ns; /* how long the oldest queued event has waited, 0 when none */
    int busy;               /* 1 while an event is being evaluated */
    uint64_t busy_ns;       /* how long the current event has been in evaluation, 0 when idle */
    uint64_t since_done_ns; /* since the last event finished (since start when none has) */
    uint64_t
        waiting_ns; /* how long work has been pending with no event finished, 0 when none pending */
    int stalled;    /* waiting_ns >= stall_ms */
    int stall_ms;
} eval_liveness;

typedef struct eval eval;

eval *eval_start(const eval_opts *o, char *err, size_t errlen);
/* Wait for the thread to finish the queue (close it first), then free. */
void eval_stop(eval *e);
void eval_get_stats(eval *e, eval_stats *out);
/* Stalled = an event is queued or in evaluation, and no event has finished
 * for stall_ms counted from when that work arrived (so an evaluator idle for
 * an hour is not stalled by the first event that follows). */
void eval_get_liveness(eval *e, eval_liveness *out);

#endif
