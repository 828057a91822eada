/* policy.h -- the sale gate: kill switch halts and sale-time rules.
 *
 * policy_gate() is the sale engine's sale_gate_fn. For each sale it checks the
 * local halt cache (423 when `global` or `sku:<SKU>` is engaged with
 * halt_sales), then, when the live set has rules on "sale_request", evaluates
 * them with the event {"type","sku","qty","unit_price"?,"order_id"} on a
 * rules_vm that holds ONLY the sale_request rules (so a big event rule is
 * never copied into the sale path), lent to the sale from a pool of 4 per
 * core (at least 8; built lazily, rebuilt when the generation changes): no
 * two sales share a Lua state at once, and 128 workers do not keep 128 of
 * them (policy.c). The first `reject` decision answers
 * 422 with that rule and reason; alert and kill decisions of sale rules go to
 * the actions module like any other. A rule that fails (error, instruction or
 * memory limit, rules.eval_timeout_ms) answers per rules.sale_on_error: reject
 * (422 naming the rule: fail closed, the default) or allow; both counted.
 *
 * State: ctx.state of a sale rule is per pooled vm (which sale gets which
 * vm is not defined); ctx.incr counts in
 * Redis (counters.h), fleet-wide -- the way to write a limit that
 * reconnecting or another instance cannot bypass.
 *
 * Decision log: every decision of a sale rule (reject, alert, kill), every
 * sale rule error and every sale failed closed by one is handed to DLOG
 * (declog.h: queued, never a Redis round trip on the sale) with the sale
 * event; a sale no rule decided on costs nothing there.
 *
 * Ownership: policy_new borrows its arguments (they must outlive it;
 * COUNTERS may be NULL: ctx.incr then counts per Lua state; DLOG may be
 * NULL: no decision log). The pool's vms
 * are freed with policy_free, after the HTTP server stopped.
 */
#ifndef NERVE_POLICY_H
#define NERVE_POLICY_H

#include <stdint.h>

#include "nerve/actions.h"
#include "nerve/counters.h"
#include "nerve/declog.h"
#include "nerve/killswitch.h"
#include "nerve/live.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

typedef struct policy policy;

policy *policy_new(live *l, ks *k, act *a, rds_pool *pool, ctr *counters, declog *dlog);
void policy_free(policy *p);

/* A sale_gate_fn: UD is the policy. */
sale_status policy_gate(void *ud, const sale_req *req, sale_res *res);

typedef struct policy_stats {
    /* Sales whose sale_request rules failed (error, limit or deadline), by
     * what rules.sale_on_error made of them. */
    uint64_t rule_failures_rejected, rule_failures_allowed;
} policy_stats;

/* Counters since policy_new. Thread-safe. */
void policy_get_stats(policy *p, policy_stats *out);

#endif
