/* live.c -- the rule set in force (see live.h). A mutex rather than an atomic
 * pointer: taking a reference and reading the pointer must be one step, or a
 * reader could ref a set that the swapper just dropped. The critical section
 * is a few instructions.
 *
 * live_sync_vm is here because every reader of the live set (the evaluator
 * thread, each HTTP worker's sale gate) caches a vm and rebuilds it the same
 * way when the generation changes. */
#include "nerve/live.h"

#include "nerve/log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct live {
    pthread_mutex_t mu;
    rules_set *set;
    _Atomic uint64_t gen;
    live_reload last;
    _Atomic uint64_t reloads_ok, reloads_failed;
    rules_tally *tally; /* per-rule counters every installed set counts into */
};

live *live_new(void) {
    live *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->tally = rules_tally_new();
    if (!l->tally) {
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void live_free(live *l) {
    if (!l) return;
    rules_set_unref(l->set);
    rules_tally_free(l->tally); /* sets still held elsewhere keep their counters */
    free(l->last.errors);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

uint64_t live_swap(live *l, rules_set *set) {
    /* Before anyone can build a vm from it. Out of memory only costs the
     * continuity of some counters, not the reload. */
    if (set && rules_set_adopt_tally(set, l->tally) != 0)
        log_warn("reload", "out of memory: some rules' counters start again at 0");
    pthread_mutex_lock(&l->mu);
    rules_set *old = l->set;
    l->set = set;
    uint64_t g = atomic_fetch_add(&l->gen, 1) + 1;
    pthread_mutex_unlock(&l->mu);
    rules_set_unref(old); /* readers still holding it keep it alive */
    return g;
}

rules_set *live_get(live *l, uint64_t *generation) {
    pthread_mutex_lock(&l->mu);
    rules_set *s = l->set ? rules_set_ref(l->set) : NULL;
    if (generation) *generation = atomic_load(&l->gen);
    pthread_mutex_unlock(&l->mu);
    return s;
}

uint64_t live_generation(live *l) {
    return atomic_load(&l->gen);
}

uint64_t live_record_reload(live *l, bool ok, uint64_t started_us, uint64_t generation,
                            rules_set *set, const char *errors) {
    char *copy = errors ? strdup(errors) : NULL;
    pthread_mutex_lock(&l->mu);
    free(l->last.errors);
    uint64_t seq = ++l->last.seq;
    l->last.ok = ok;
    l->last.at = (long long)time(NULL);
    l->last.started_us = started_us;
    l->last.generation = generation;
    l->last.rules = set ? rules_set_count(set) : 0;
    snprintf(l->last.sha256, sizeof l->last.sha256, "%s", set ? rules_set_sha256(set) : "");
    l->last.errors = copy;
    pthread_mutex_unlock(&l->mu);
    atomic_fetch_add_explicit(ok ? &l->reloads_ok : &l->reloads_failed, 1, memory_order_relaxed);
    return seq;
}

void live_get_stats(live *l, live_stats *out) {
    out->reloads_ok = atomic_load_explicit(&l->reloads_ok, memory_order_relaxed);
    out->reloads_failed = atomic_load_explicit(&l->reloads_failed, memory_order_relaxed);
}

void live_last_reload(live *l, live_reload *out) {
    pthread_mutex_lock(&l->mu);
    *out = l->last;
    out->errors = l->last.errors ? strdup(l->last.errors) : NULL;
    pthread_mutex_unlock(&l->mu);
}

int live_sync_vm(live *l, rules_vm **vm, uint64_t *gen, const live_vm_opts *o) {
    /* Nothing new since the last call, whatever it produced (a vm, none, or
     * a failed build not to retry before the next reload). */
    if (*gen != 0 && live_generation(l) == *gen) return 0;
    uint64_t got;
    rules_set *set = live_get(l, &got);
    /* A reload that left these rules alone costs no rebuild (128 workers
     * rebuilding on every reload showed in the sales' p99). */
    if (set && *vm && rules_vm_rebind(*vm, set) == 0) {
        rules_set_unref(set);
        *gen = got;
        return 1;
    }
    rules_vm *nvm = NULL;
    if (set && (!o->only_channel || rules_set_listens(set, o->only_channel))) {
        char err[256] = "";
        nvm = rules_vm_new_kind(set, *vm, o->kind, err, sizeof err);
        if (!nvm) {
            log_error(o->log_component,
                      "cannot build %s for generation %llu: %s; keeping the previous one", o->what,
                      (unsigned long long)got, err);
            rules_set_unref(set);
            *gen = got;
            return -1;
        }
        for (size_t i = 0; o->log_states && *vm && i < rules_set_count(set); i++) {
            rules_info info;
            if (rules_set_info(set, i, &info) == 0)
                log_info(o->log_component, "rule %s state %s generation=%llu", info.name,
                         rules_state_origin_name(rules_vm_state_origin(nvm, i)),
                         (unsigned long long)got);
        }
        rules_vm_on_error(nvm, o->on_error, o->error_ud);
        if (o->incr) rules_vm_set_incr(nvm, o->incr, o->incr_ud);
    }
    rules_set_unref(set);
    rules_vm_free(*vm);
    *vm = nvm;
    *gen = got;
    return 1;
}
