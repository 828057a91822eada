/* salewin.c -- sales over the last five minutes (see salewin.h).
 *
 * Why a ring of packed words: the sale path must not take a lock or talk to
 * Redis to feed a chart. Each slot holds its second and its count in one
 * 64-bit word, so the common case (the slot already belongs to this second)
 * is a single fetch-add, and the first sale of a new second claims the slot
 * with one compare-and-swap that also resets its count: no window where a
 * count of 300 seconds ago could be added to.
 */
#include "nerve/salewin.h"

#include <string.h>

#include "nerve/clock.h"

/* Whole seconds on the monotonic clock, from 1 (0 marks a free SKU slot). */
static uint64_t now_sec(void) {
    return clock_now_ns() / 1000000000ull + 1;
}

void salewin_init(salewin *w) {
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
}

void salewin_destroy(salewin *w) {
    if (w) pthread_mutex_destroy(&w->mu);
}

static void count_second(salewin *w, uint64_t t) {
    _Atomic uint64_t *slot = &w->ring[t % SALEWIN_SECONDS];
    uint64_t tag = (t & 0xffffffffull) << 32;
    uint64_t v = atomic_load_explicit(slot, memory_order_relaxed);
    for (;;) {
        if ((v & ~0xffffffffull) == tag) {
            atomic_fetch_add_explicit(slot, 1, memory_order_relaxed);
            return;
        }
        if (atomic_compare_exchange_weak_explicit(slot, &v, tag | 1, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

/* T is read before the try-lock, so another thread may already have
 * stamped E with a later second: that entry is in use (an unsigned T -
 * last_sec would wrap and call the busiest entry free, zeroing it). */
static int sku_slot_free(const salewin_sku *e, uint64_t t) {
    return !e->last_sec || (e->last_sec < t && t - e->last_sec >= SALEWIN_SECONDS);
}

static uint32_t hash(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Space-saving: the SKU's entry, else a free or expired one, else the one
 * of least weight (whose weight the newcomer inherits). Under w->mu. */
static void count_sku(salewin *w, const char *sku, uint64_t qty, uint64_t t) {
    uint32_t h = hash(sku);
    salewin_sku *hit = NULL, *low = NULL;
    for (int i = 0; i < SALEWIN_SKUS && !hit; i++) {
        salewin_sku *e = &w->skus[i];
        if (e->last_sec && e->hash == h && strcmp(e->sku, sku) == 0)
            hit = e;
        else if (sku_slot_free(e, t)) {
            if (!low || !sku_slot_free(low, t)) low = e; /* a free slot beats any weight */
        } else if (!low || (!sku_slot_free(low, t) && e->weight < low->weight))
            low = e;
    }
    if (hit && sku_slot_free(hit, t))
        hit->units = hit->sales = hit->weight = 0; /* back after a quiet window */
    if (!hit) {
        hit = low;
        if (sku_slot_free(hit, t)) hit->weight = 0;
        hit->units = hit->sales = 0;
        size_t n = strnlen(sku, SKU_MAX);
        memcpy(hit->sku, sku, n);
        hit->sku[n] = 0;
        hit->hash = h;
    }
    hit->units += qty;
    hit->weight += qty;
    hit->sales++;
    if (hit->last_sec < t) hit->last_sec = t;
}

void salewin_add(salewin *w, const char *sku, long long qty) {
    uint64_t t = now_sec();
    count_second(w, t);
    if (pthread_mutex_trylock(&w->mu) != 0) return; /* busy: not counted there */
    count_sku(w, sku, qty > 0 ? (uint64_t)qty : 0, t);
    pthread_mutex_unlock(&w->mu);
}

void salewin_read(salewin *w, salewin_snap *out) {
    uint64_t now = now_sec();
    for (int i = 0; i < SALEWIN_SECONDS; i++) {
        uint64_t t = now - (SALEWIN_SECONDS - 1) + (uint64_t)i;
        uint64_t v = atomic_load_explicit(&w->ring[t % SALEWIN_SECONDS], memory_order_relaxed);
        out->per_second[i] = (v >> 32) == (t & 0xffffffffull) ? (uint32_t)v : 0;
    }
    salewin_sku all[SALEWIN_SKUS];
    int n = 0;
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < SALEWIN_SKUS; i++)
        if (w->skus[i].last_sec && w->skus[i].last_sec + SALEWIN_SECONDS > now)
            all[n++] = w->skus[i];
    pthread_mutex_unlock(&w->mu);
    /* Most units first (insertion sort of at most SALEWIN_SKUS). */
    for (int i = 1; i < n; i++) {
        salewin_sku x = all[i];
        int j = i;
        for (; j > 0 && all[j - 1].units < x.units; j--) all[j] = all[j - 1];
        all[j] = x;
    }
    out->n_top = n < SALEWIN_TOP ? n : SALEWIN_TOP;
    memcpy(out->top, all, (size_t)out->n_top * sizeof all[0]);
}
