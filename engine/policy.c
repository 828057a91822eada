/* policy.c -- the sale gate (see policy.h). */
#include "nerve/policy.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/log.h"
#include "nerve/tslot.h"

typedef struct tvm {
    rules_vm *vm;
    uint64_t gen;
} tvm;

struct policy {
    live *l;
    ks *k;
    act *a;
    rds_pool *pool;
    tslot *vms;                 /* one tvm per HTTP worker thread */
};

static void *tvm_create(void *ud) {
    (void)ud;
    return calloc(1, sizeof(tvm));
}

static void tvm_destroy(void *obj) {
    tvm *t = obj;
    rules_vm_free(t->vm);
    free(t);
}

policy *policy_new(live *l, ks *k, act *a, rds_pool *pool) {
    policy *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->l = l, p->k = k, p->a = a, p->pool = pool;
    p->vms = tslot_new(tvm_create, tvm_destroy, NULL);
    if (!p->vms) {
        free(p);
        return NULL;
    }
    return p;
}

void policy_free(policy *p) {
    if (!p) return;
    tslot_free(p->vms);
    free(p);
}

typedef struct gate_ctx {
    policy *p;
    sale_res *res;
    int rejected;
} gate_ctx;

static void on_decision(void *ud, const rules_decision *d) {
    gate_ctx *g = ud;
    if (d->action == RULES_REJECT) {
        if (!g->rejected) {
            g->rejected = 1;
            snprintf(g->res->rule, sizeof g->res->rule, "%s", d->rule);
            snprintf(g->res->reason, sizeof g->res->reason, "%s", d->reason);
            snprintf(g->res->message, sizeof g->res->message, "rejected by rule %s: %s", d->rule, d->reason);
        }
        return;
    }
    rds_client *c = rds_pool_client(g->p->pool);
    if (c) act_decision(g->p->a, c, d);
}

sale_status policy_gate(void *ud, const sale_req *req, sale_res *res) {
    policy *p = ud;
    char scope[KS_SCOPE_MAX + 1];
    if (ks_halted(p->k, req->sku, scope)) {
        res->status = SALE_HALTED;
        snprintf(res->scope, sizeof res->scope, "%s", scope);
        snprintf(res->message, sizeof res->message, "sales of %s are halted by the kill switch (scope %s)",
                 req->sku, scope);
        return SALE_HALTED;
    }
    tvm *t = tslot_get(p->vms);
    if (!t) return SALE_OK;
    uint64_t g = live_generation(p->l);
    if (!t->vm || t->gen != g) {
        uint64_t got;
        rules_set *set = live_get(p->l, &got);
        rules_vm *nvm = NULL;
        if (set && rules_set_listens(set, RULES_SALE_CHANNEL)) {
            char err[256] = "";
            nvm = rules_vm_new(set, t->vm, err, sizeof err);
            if (!nvm) log_error("policy", "cannot build a sale-rule evaluator: %s", err);
        }
        rules_set_unref(set);
        rules_vm_free(t->vm);
        t->vm = nvm;
        t->gen = got;
    }
    if (!t->vm) return SALE_OK;

    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "type", "sale_request");
    cJSON_AddStringToObject(ev, "sku", req->sku);
    cJSON_AddNumberToObject(ev, "qty", (double)req->qty);
    if (req->has_price) cJSON_AddNumberToObject(ev, "unit_price", req->unit_price);
    cJSON_AddStringToObject(ev, "order_id", req->order_id);
    gate_ctx gc = { p, res, 0 };
    rules_eval_cjson(t->vm, RULES_SALE_CHANNEL, ev, (long long)time(NULL), on_decision, &gc);
    cJSON_Delete(ev);
    if (gc.rejected) {
        res->status = SALE_REJECTED;
        return SALE_REJECTED;
    }
    return SALE_OK;
}
