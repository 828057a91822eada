/* hist.c -- fixed-bucket latency histogram (see hist.h). */
#include "nerve/hist.h"

#include <stddef.h>

const double hist_bounds[HIST_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
};

void hist_observe(hist *h, double seconds) {
    if (seconds < 0) seconds = 0;
    size_t i = 0;
    while (i < HIST_BUCKETS && seconds > hist_bounds[i]) i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(seconds * 1e9), memory_order_relaxed);
}

void hist_read(hist *h, hist_snap *out) {
    out->count = 0;
    for (size_t i = 0; i <= HIST_BUCKETS; i++) {
        out->counts[i] = atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        out->count += out->counts[i];
    }
    out->sum = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
}
