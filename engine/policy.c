/* policy.c -- the sale gate (see policy.h). */
#include "nerve/policy.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pthread.h>
#include <unistd.h>

#include "nerve/log.h"

typedef struct gate_ctx gate_ctx;

/* A vm holding only the sale_request rules, lent to one sale at a time. */
typedef struct tvm {
    rules_vm *vm;
    uint64_t gen;
    gate_ctx *cur;    /* the sale being evaluated, for the error callback */
    int build_failed; /* the current generation's vm could not be built */
    struct tvm *next; /* in the free list */
} tvm;

/* Why a pool and not one vm per worker thread: over a run every one of the
 * 128 workers built one (61 KB of Lua heap each, plus its malloc holes: a
 * quarter of the daemon's peak RSS, issue 12), while evaluation is CPU work
 * that never runs on more threads than there are cores, except while a rule
 * waits on Redis in ctx.incr. POOL_PER_CORE vms per core (at least
 * POOL_MIN) are built lazily and lent per sale; a sale that finds none free
 * waits for one. */
#define POOL_PER_CORE 4
#define POOL_MIN      8

struct policy {
    live *l;
    ks *k;
    act *a;
    rds_pool *pool;
    ctr *counters;
    declog *dlog;
    pthread_mutex_t mu; /* guards free_vms, made, and wakes through cv */
    pthread_cond_t cv;
    tvm *free_vms;
    int made, max;
    tvm **all;                                        /* the MAX slots, for policy_free */
    _Atomic uint64_t failed_rejected, failed_allowed; /* policy_stats */
};

struct gate_ctx {
    policy *p;
    sale_res *res;
    int rejected;
    char failed_rule[129]; /* first rule that failed, "" if none */
    const cJSON *ev;       /* the sale as the rules saw it */
    char *ev_text;         /* ... printed for the decision log, once, when needed */
    uint64_t gen;          /* the generation of the vm that decided */
};

/* What the decision log says of this sale: printed only when a record is
 * written (a reject, a rule's alert or kill, a rule error), never on the way
 * of a sale that passes. */
static declog_src log_src(gate_ctx *g) {
    if (!g->ev_text) g->ev_text = cJSON_PrintUnformatted(g->ev);
    declog_src src = { RULES_SALE_CHANNEL, NULL, g->gen, g->ev_text,
                       g->ev_text ? strlen(g->ev_text) : 0 };
    return src;
}

policy *policy_new(live *l, ks *k, act *a, rds_pool *pool, ctr *counters, declog *dlog) {
    policy *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->l = l, p->k = k, p->a = a, p->pool = pool, p->counters = counters, p->dlog = dlog;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p->max = cores > 0 && cores * POOL_PER_CORE > POOL_MIN ? (int)cores * POOL_PER_CORE : POOL_MIN;
    p->all = calloc((size_t)p->max, sizeof *p->all);
    if (!p->all) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

void policy_free(policy *p) {
    if (!p) return;
    for (int i = 0; i < p->made; i++) {
        rules_vm_free(p->all[i]->vm);
        free(p->all[i]);
    }
    free(p->all);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Borrow a vm: a free one, a new one while fewer than MAX exist, or wait
 * for one to come back. NULL only when out of memory with none made. */
static tvm *borrow(policy *p) {
    pthread_mutex_lock(&p->mu);
    tvm *t;
    for (;;) {
        if ((t = p->free_vms)) {
            p->free_vms = t->next;
            break;
        }
        if (p->made < p->max) {
            t = calloc(1, sizeof *t);
            if (t) p->all[p->made++] = t;
            if (t || p->made == 0) break;
        }
        pthread_cond_wait(&p->cv, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return t;
}

static void give_back(policy *p, tvm *t) {
    pthread_mutex_lock(&p->mu);
    t->next = p->free_vms;
    p->free_vms = t;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void policy_get_stats(policy *p, policy_stats *out) {
    out->rule_failures_rejected = atomic_load_explicit(&p->failed_rejected, memory_order_relaxed);
    out->rule_failures_allowed = atomic_load_explicit(&p->failed_allowed, memory_order_relaxed);
}

static void on_decision(void *ud, const rules_decision *d) {
    gate_ctx *g = ud;
    if (g->p->dlog) {
        declog_src src = log_src(g);
        declog_decision(g->p->dlog, d, &src);
    }
    if (d->action == RULES_REJECT) {
        if (!g->rejected) {
            g->rejected = 1;
            snprintf(g->res->rule, sizeof g->res->rule, "%s", d->rule);
            snprintf(g->res->reason, sizeof g->res->reason, "%s", d->reason);
            snprintf(g->res->message, sizeof g->res->message, "rejected by rule %s: %s", d->rule,
                     d->reason);
        }
        return;
    }
    rds_client *c = rds_pool_client(g->p->pool);
    if (c) act_decision(g->p->a, c, d);
}

/* A sale rule failed (error, limit, deadline): logged with FILE:LINE like
 * any rule error; the gate decides what the sale gets. */
static void on_rule_error(void *ud, const char *rule, const char *msg) {
    tvm *t = ud;
    log_error("rules", "%s rule=%s", msg, rule);
    if (!t->cur) return;
    if (t->cur->p->dlog) {
        declog_src src = log_src(t->cur);
        declog_rule_error(t->cur->p->dlog, rule, msg, &src);
    }
    if (!t->cur->failed_rule[0])
        snprintf(t->cur->failed_rule, sizeof t->cur->failed_rule, "%s", rule);
}

/* Make T's vm evaluate the live set (rebuilt on a generation change; the
 * previous vm carries ctx.state over). No sale rule, no vm. */
static int sync_vm(policy *p, tvm *t) {
    live_vm_opts o = {
        .kind = RULES_VM_SALE,
        .only_channel = RULES_SALE_CHANNEL,
        .log_component = "policy",
        .what = "a sale-rule evaluator",
        .on_error = on_rule_error,
        .error_ud = t,
        .incr = p->counters ? ctr_incr : NULL,
        .incr_ud = p->counters,
    };
    return live_sync_vm(p->l, &t->vm, &t->gen, &o);
}

/* The sale rules could not run (FAILED_RULE failed, or the evaluator could
 * not be built): the sale gets what rules.sale_on_error says, counted. */
static sale_status rules_failed(policy *p, int allow, const char *failed_rule, const char *why,
                                sale_res *res) {
    atomic_fetch_add_explicit(allow ? &p->failed_allowed : &p->failed_rejected, 1,
                              memory_order_relaxed);
    if (allow) return SALE_OK;
    res->status = SALE_REJECTED;
    snprintf(res->rule, sizeof res->rule, "%s", failed_rule);
    snprintf(res->reason, sizeof res->reason, "%s (rules.sale_on_error=reject: sales fail closed)",
             why);
    snprintf(res->message, sizeof res->message,
             "rejected: %s, and sales fail closed (rules.sale_on_error=reject)", why);
    return SALE_REJECTED;
}

static sale_status gate_rules(policy *p, tvm *t, const sale_req *req, sale_res *res);

sale_status policy_gate(void *ud, const sale_req *req, sale_res *res) {
    policy *p = ud;
    char scope[KS_SCOPE_MAX + 1];
    if (ks_halted(p->k, req->sku, scope)) {
        res->status = SALE_HALTED;
        snprintf(res->scope, sizeof res->scope, "%s", scope);
        snprintf(res->message, sizeof res->message,
                 "sales of %s are halted by the kill switch (scope %s)", req->sku, scope);
        return SALE_HALTED;
    }
    tvm *t = borrow(p);
    if (!t) {
        res->status = SALE_UNAVAILABLE;
        snprintf(res->message, sizeof res->message,
                 "out of memory building the sale-rule evaluator");
        return SALE_UNAVAILABLE;
    }
    sale_status st = gate_rules(p, t, req, res);
    give_back(p, t);
    return st;
}

/* The sale rules of the live set on T for REQ. */
static sale_status gate_rules(policy *p, tvm *t, const sale_req *req, sale_res *res) {
    int synced = sync_vm(p, t);
    if (synced != 0) t->build_failed = synced < 0;
    if (t->build_failed) {
        /* This vm could not be built for the current set's sale rules (say
         * a rule that needs more C stack than a worker has): skipping them
         * would let every sale through, so it is a failure of the rules. */
        uint64_t g;
        rules_set *cur = live_get(p->l, &g);
        int allow = cur && rules_set_sale_allow(cur);
        rules_set_unref(cur);
        return rules_failed(p, allow, "(build)",
                            "the sale rules could not be built on this worker (see the log)", res);
    }
    if (!t->vm) return SALE_OK;

    cJSON *ev = cJSON_CreateObject();
    if (!ev) {
        res->status = SALE_UNAVAILABLE;
        snprintf(res->message, sizeof res->message, "out of memory evaluating the sale rules");
        return SALE_UNAVAILABLE;
    }
    cJSON_AddStringToObject(ev, "type", "sale_request");
    cJSON_AddStringToObject(ev, "sku", req->sku);
    cJSON_AddNumberToObject(ev, "qty", (double)req->qty);
    if (req->has_price) cJSON_AddNumberToObject(ev, "unit_price", req->unit_price);
    cJSON_AddStringToObject(ev, "order_id", req->order_id);
    gate_ctx gc = { .p = p, .res = res, .ev = ev, .gen = t->gen };
    t->cur = &gc;
    int failed = rules_eval_cjson(t->vm, RULES_SALE_CHANNEL, ev, (long long)time(NULL), on_decision,
                                  &gc);
    t->cur = NULL;
    sale_status st = SALE_OK;
    if (gc.rejected) {
        res->status = st = SALE_REJECTED;
    } else if (failed > 0) {
        char why[200];
        snprintf(why, sizeof why, "sale rule %s failed", gc.failed_rule[0] ? gc.failed_rule : "?");
        st = rules_failed(p, rules_set_sale_allow(rules_vm_set(t->vm)),
                          gc.failed_rule[0] ? gc.failed_rule : "?", why, res);
        if (st == SALE_REJECTED && p->dlog) {
            /* Failed closed: a reject like any other in the log (the rule
             * error that caused it is recorded just before). */
            rules_decision d = { .rule = res->rule,
                                 .channel = RULES_SALE_CHANNEL,
                                 .action = RULES_REJECT,
                                 .reason = res->reason };
            declog_src src = log_src(&gc);
            declog_decision(p->dlog, &d, &src);
        }
    }
    free(gc.ev_text);
    cJSON_Delete(ev);
    return st;
}
