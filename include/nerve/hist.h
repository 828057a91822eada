/* hist.h -- a fixed-bucket latency histogram for hot paths.
 *
 * One shape for every latency nerve exports (100 us .. 2.5 s, Prometheus'
 * cumulative `le` buckets), so that the module that times something can own
 * its histogram without depending on whoever renders it. Recording is two
 * relaxed atomic adds: no lock, no allocation.
 *
 * The fields are exposed only so that a hist can be embedded in its owner
 * (zero-initialised is empty); read it with hist_read, never directly.
 * Thread-safety: every function; hist_read is not a consistent snapshot
 * across buckets (good enough for a scrape).
 */
#ifndef NERVE_HIST_H
#define NERVE_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define HIST_BUCKETS 14

/* Upper bounds of the finite buckets, seconds, ascending. */
extern const double hist_bounds[HIST_BUCKETS];

typedef struct hist {
    _Atomic uint64_t counts[HIST_BUCKETS + 1]; /* last: +Inf; not cumulative */
    _Atomic uint64_t sum_ns;
} hist;

/* A plain copy of a hist, for readers. */
typedef struct hist_snap {
    uint64_t counts[HIST_BUCKETS + 1]; /* not cumulative */
    uint64_t count;                    /* sum of counts */
    double sum;                        /* seconds */
} hist_snap;

/* Count one observation of SECONDS (negative counts as 0). */
void hist_observe(hist *h, double seconds);

/* Copy H into OUT. */
void hist_read(hist *h, hist_snap *out);

#endif
