/* policy.c -- the sale gate (see policy.h). */
#include "nerve/policy.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nerve/log.h"

typedef struct tvm {
    rules_vm *vm;
    uint64_t gen;
} tvm;

struct policy {
    live *l;
    ks *k;
    act *a;
    rds_pool *pool;
    pthread_key_t key;
    pthread_mutex_t mu;         /* guards all[] */
    tvm **all;
    size_t n, cap;
};

static void tvm_free(void *p) {
    tvm *t = p;
    if (t) rules_vm_free(t->vm);
    /* The struct itself stays in all[] and is freed by policy_free. */
    if (t) t->vm = NULL;
}

policy *policy_new(live *l, ks *k, act *a, rds_pool *pool) {
    policy *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->l = l, p->k = k, p->a = a, p->pool = pool;
    if (pthread_key_create(&p->key, tvm_free)) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    return p;
}

void policy_free(policy *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        rules_vm_free(p->all[i]->vm);
        free(p->all[i]);
    }
    free(p->all);
    pthread_key_delete(p->key);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static tvm *thread_vm(policy *p) {
    tvm *t = pthread_getspecific(p->key);
    if (t) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    pthread_mutex_lock(&p->mu);
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 32;
        tvm **na = realloc(p->all, nc * sizeof *na);
        if (!na) {
            pthread_mutex_unlock(&p->mu);
            free(t);
            return NULL;
        }
        p->all = na, p->cap = nc;
    }
    p->all[p->n++] = t;
    pthread_mutex_unlock(&p->mu);
    pthread_setspecific(p->key, t);
    return t;
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
    tvm *t = thread_vm(p);
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
