/* counters.h -- fleet-wide counters for rules: the Redis backend of
 * ctx.incr(key, window_s [, by]).
 *
 * A rule's state (ctx.state) lives in one Lua state: per thread for
 * sale_request rules, per process for event rules. A limit such as "reject
 * the 4th sale of a card within an hour" must hold whichever connection,
 * worker or instance a request reaches, so it needs a count every instance
 * shares: one Redis key per (rule, key, window length, window number),
 * PREFIXctr:{RULE}:KEY:W:N, incremented atomically and expiring one window
 * after its own ends. Windows are fixed and aligned on multiples of W
 * seconds (epoch time), exactly as the local counter of fixtures and dry
 * runs counts them (engine/rules_values.c).
 *
 * Thread-safety: ctr_incr may be called from any thread; it uses that
 * thread's client of the pool. Ownership: ctr_new borrows POOL (it must
 * outlive the ctr) and copies PREFIX.
 */
#ifndef NERVE_COUNTERS_H
#define NERVE_COUNTERS_H

#include <stddef.h>

#include "nerve/rds.h"

typedef struct ctr ctr;

ctr *ctr_new(rds_pool *pool, const char *prefix);
void ctr_free(ctr *c);

/* A rules_incr_fn (rules.h); UD is the ctr. 0, or -1 with ERR when Redis
 * cannot be reached or answers an error (the rule then fails: a limit that
 * cannot be counted is not silently skipped). */
int ctr_incr(void *ud, const char *rule, const char *key, size_t keylen, long long window_s,
             long long by, long long now, long long *count, char *err, size_t errlen);

#endif
