/* policy.h -- the sale gate: kill switch halts and sale-time rules.
 *
 * policy_gate() is the sale engine's sale_gate_fn. For each sale it checks the
 * local halt cache (423 when `global` or `sku:<SKU>` is engaged with
 * halt_sales), then, when the live set has rules on "sale_request", evaluates
 * them with the event {"sku","qty","unit_price","order_id"} on a rules_vm
 * owned by the calling thread (rebuilt when the generation changes), so HTTP
 * workers never share a Lua state or wait on one global mutex. The first
 * `reject` decision answers 422 with that rule and reason; alert and kill
 * decisions of sale rules go to the actions module like any other.
 *
 * Ownership: policy_new borrows its arguments (they must outlive it). Each
 * thread's vm (a tslot) is freed with policy_free, after the HTTP server stopped.
 */
#ifndef NERVE_POLICY_H
#define NERVE_POLICY_H

#include "nerve/actions.h"
#include "nerve/killswitch.h"
#include "nerve/live.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

typedef struct policy policy;

policy *policy_new(live *l, ks *k, act *a, rds_pool *pool);
void policy_free(policy *p);

/* A sale_gate_fn: UD is the policy. */
sale_status policy_gate(void *ud, const sale_req *req, sale_res *res);

#endif
