/* evaluator.h -- the thread that evaluates queued events against the live
 * rule set and hands decisions to the actions module.
 *
 * One thread, one rules_vm: events are evaluated in queue order, so events of
 * one channel keep their arrival order, and ctx.state needs no locking. When
 * the live generation changes the thread builds a vm for the new set between
 * two events, carrying ctx.state of unchanged rules over (logged per rule).
 * While idle it refreshes the kill switch halt cache every couple of seconds.
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
#include "nerve/killswitch.h"
#include "nerve/live.h"
#include "nerve/queue.h"
#include "nerve/rds.h"

#define EVAL_MAX_CHANNELS 64

typedef struct eval_opts {
    live *live;
    evq *q;
    act *act;
    ks *ks;
    rds_pool *pool;
} eval_opts;

typedef struct eval_channel_count {
    char name[128];
    uint64_t events;
} eval_channel_count;

typedef struct eval_stats {
    uint64_t events, bad_events, decisions, rule_errors;
    eval_channel_count channels[EVAL_MAX_CHANNELS];
    size_t n_channels;
} eval_stats;

typedef struct eval eval;

eval *eval_start(const eval_opts *o, char *err, size_t errlen);
/* Wait for the thread to finish the queue (close it first), then free. */
void eval_stop(eval *e);
void eval_get_stats(eval *e, eval_stats *out);

#endif
