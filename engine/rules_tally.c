/* rules_tally.c -- per-rule counters that outlive rule sets (see rules.h).
 *
 * Why: the counters used to live in the set, so every reload (even one that
 * changed nothing) started nerve_rule_evaluations_total over at 0, and a
 * Prometheus counter must not go backwards. Now a set only points at
 * counters; the tally owned by the live set keeps one per rule name and
 * hands the same ones to each new set. Counters are reference counted: a set
 * still finishing an evaluation after a reload keeps its counters alive, and
 * its counts land in the same place as the new set's.
 *
 * The tally never forgets a name: rule names are few (one per file ever
 * loaded) and a rule removed and added back continues where it stopped.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rules_int.h"

rules_counters *rules_counters_new(void) {
    size_t sz = (sizeof(rules_counters) + 63) / 64 * 64; /* aligned_alloc wants a multiple */
    rules_counters *c = aligned_alloc(64, sz);
    if (c == NULL) return NULL;
    memset(c, 0, sz);
    atomic_init(&c->refs, 1);
    return c;
}

void rules_counters_unref(rules_counters *c) {
    if (c && atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}

typedef struct tally_entry {
    char *name;
    rules_counters *c; /* one reference */
} tally_entry;

struct rules_tally {
    pthread_mutex_t mu;
    tally_entry *e;
    size_t n, cap;
};

rules_tally *rules_tally_new(void) {
    rules_tally *t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void rules_tally_free(rules_tally *t) {
    if (t == NULL) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->e[i].name);
        rules_counters_unref(t->e[i].c);
    }
    free(t->e);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* The tally's counters for NAME, registering OWN under it when there are
 * none yet; NULL when out of memory. Called with t->mu held. */
static rules_counters *tally_get(rules_tally *t, const char *name, rules_counters *own) {
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->e[i].name, name) == 0) return t->e[i].c;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 16;
        tally_entry *ne = realloc(t->e, nc * sizeof *ne);
        if (ne == NULL) return NULL;
        t->e = ne, t->cap = nc;
    }
    char *copy = strdup(name);
    if (copy == NULL) return NULL;
    atomic_fetch_add(&own->refs, 1);
    t->e[t->n++] = (tally_entry){ copy, own };
    return own;
}

int rules_set_adopt_tally(rules_set *s, rules_tally *t) {
    int rc = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < s->n; i++) {
        rules_counters *c = tally_get(t, s->rules[i].name, s->ctr[i]);
        if (c == NULL) {
            rc = -1;
            continue;
        }
        if (c == s->ctr[i]) continue;
        atomic_fetch_add(&c->refs, 1);
        rules_counters_unref(s->ctr[i]);
        s->ctr[i] = c;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}
