/* tslot.c -- one object per calling thread (see tslot.h). A pthread key
 * finds the thread's object without a lock; the mutex only guards the list
 * of all objects, touched once per thread. */
#include "nerve/tslot.h"

#include <pthread.h>
#include <stdlib.h>

struct tslot {
    pthread_key_t key;
    void *(*create)(void *ud);
    void (*destroy)(void *obj);
    void *ud;
    pthread_mutex_t mu; /* guards all, n, cap */
    void **all;
    size_t n, cap;
};

tslot *tslot_new(void *(*create)(void *ud), void (*destroy)(void *obj), void *ud) {
    tslot *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (pthread_key_create(&s->key, NULL)) {
        free(s);
        return NULL;
    }
    s->create = create;
    s->destroy = destroy;
    s->ud = ud;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void *tslot_get(tslot *s) {
    void *obj = pthread_getspecific(s->key);
    if (obj) return obj;
    obj = s->create(s->ud);
    if (!obj) return NULL;
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 32;
        void **na = realloc(s->all, nc * sizeof *na);
        if (!na) {
            pthread_mutex_unlock(&s->mu);
            s->destroy(obj);
            return NULL;
        }
        s->all = na;
        s->cap = nc;
    }
    s->all[s->n++] = obj;
    pthread_mutex_unlock(&s->mu);
    pthread_setspecific(s->key, obj);
    return obj;
}

void tslot_free(tslot *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) s->destroy(s->all[i]);
    free(s->all);
    pthread_key_delete(s->key);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
