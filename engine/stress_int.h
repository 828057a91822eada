/* stress_int.h -- internals shared by the files of `nerve stress` (not a
 * public header; the contract is include/nerve/stress.h).
 *
 *   stress.c         options, setup (stock, kill switch), the run, exit code
 *   (httpc.c         URLs, the incremental HTTP/1.1 response parser the
 *                    load loop feeds, and the blocking one-shot client: its
 *                    own module, which the daemon's CLI commands share)
 *   stress_load.c    the load generator: worker threads, each with its own
 *                    epoll loop over its own keep-alive connections
 *   stress_report.c  latency percentiles, invariants, human and JSON report
 *
 * Data flows one way: stress.c configures a stress_run, stress_load fills
 * the per-thread stress_stats, stress_report merges and judges them.
 */
#ifndef NERVE_STRESS_INT_H
#define NERVE_STRESS_INT_H

#include "nerve/clock.h"
#include "nerve/httpc.h"
#include "nerve/sku.h"
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define STRESS_MAX_URLS    64
#define STRESS_MAX_SKUS    10000
#define STRESS_MAX_CLIENTS 10000
#define STRESS_MAX_THREADS 256
#define STRESS_SKU_MAX     SKU_MAX /* bytes, as the sale endpoint allows (nerve/sku.h) */
#define STRESS_ERR_MAX     HTTPC_ERR_MAX
#define STRESS_HIST_US     65536 /* latencies under this many µs: counted per µs */

/* ---- the load (stress_load.c) ------------------------------------------------------ */

/* A sale whose outcome the run did not learn: its connection failed after
 * the request went out, or it answered 503 (which may follow a commit). */
typedef struct stress_pending {
    long long idx;
    int url;
} stress_pending;

/* What one worker thread counted. Owned by its thread during the run, read
 * by the report afterwards. */
typedef struct stress_stats {
    long long requests;       /* answered or failed */
    long long by_status[600]; /* HTTP answers by status (out of range: 599) */
    long long transport;      /* no complete HTTP answer */
    long long duplicates;     /* 200 with "duplicate": true */
    long long mismatched;     /* 200 not echoing its own order_id and sku */
    long long negative;       /* 200 with stock_remaining < 0 */
    long long min_remaining;  /* smallest stock_remaining of a 200 (LLONG_MAX: none) */
    long long *sold;          /* [nskus] units of non-duplicate 200s */
    long long *per_url;       /* [nurls] requests sent to each URL */
    /* Latency of every answered request, exact to the microsecond in
     * bounded memory: a count per µs below STRESS_HIST_US (65 ms), and each
     * slower one kept. */
    uint64_t *hist; /* [STRESS_HIST_US] */
    uint32_t *slow_us;
    size_t nslow, capslow;
    long long nlat;          /* samples in all */
    long long lat_dropped;   /* slow samples not kept (out of memory) */
    stress_pending *pending; /* to replay after the run */
    size_t npending, cappending;
    long long pending_lost; /* not kept (out of memory) */
    char first_error[STRESS_ERR_MAX];
    char first_mismatch[STRESS_ERR_MAX];
} stress_stats;

typedef struct stress_run {
    /* in */
    httpc_url *urls;
    int nurls;
    char (*skus)[STRESS_SKU_MAX + 1];
    int nskus;
    long long qty;
    int clients;
    int threads;
    long long requests; /* > 0: this many; 0: --duration */
    double duration_s;
    int timeout_ms;  /* per request */
    char run_id[32]; /* order_id = "st-<run_id>-<index>" */
    /* shared while running */
    atomic_llong next;   /* next request index to hand out */
    atomic_llong done;   /* finished requests (for progress) */
    atomic_llong failed; /* finished requests that were not 2xx/4xx sale answers */
    atomic_int stop;     /* set: hand out no more requests */
    atomic_int threads_done;
    uint64_t deadline_ns; /* duration mode */
    uint64_t started_ns;  /* when the workers started */
    /* out */
    stress_stats *stats; /* [threads] */
    double secs;         /* wall time of the run */
} stress_run;

/* The order_id of request IDX: "st-<run_id>-<idx>". */
void stress_order_id(const stress_run *r, long long idx, char *out, size_t len);

/* Start R->threads workers and return; R->stats is allocated here. 0, or -1
 * (reason in ERR) when the run could not start as asked; either way call
 * stress_load_wait (joins whatever started) and then stress_load_free. */
int stress_load_start(stress_run *r, char *err, size_t errlen);
/* Join the workers and set R->secs. */
void stress_load_wait(stress_run *r);
/* Free what stress_load_start allocated. NULL is fine. */
void stress_load_free(stress_run *r);

/* ---- the report (stress_report.c) ---------------------------------------------------- */

typedef struct stress_sku_result {
    long long initial;
    long long final; /* valid when final_ok */
    bool final_ok;
    char final_err[STRESS_ERR_MAX];
    long long sold;
    int kill; /* -1 not asserted, 0 not engaged, 1 engaged */
} stress_sku_result;

/* What replaying the pending sales with their own order_id found out. */
typedef struct stress_replay {
    long long replayed;
    long long had_sold;   /* 200 "duplicate": the first attempt had sold */
    long long sold_now;   /* 200: sold by the replay */
    long long not_sold;   /* 409 */
    long long unresolved; /* anything else, or out of time */
} stress_replay;

typedef struct stress_report_in {
    const stress_run *run;
    stress_sku_result *skus; /* [run->nskus]; sold includes the replays */
    const stress_replay *replay;
    long long stock;
    bool kill_check;
    long long critical;
    bool interrupted;
    bool json;
} stress_report_in;

/* Merge the threads' stats, judge the invariants, print the report on OUT
 * and one "INVARIANT FAILED: ..." line per failure on ERR. Returns 0 when
 * every invariant holds, 1 otherwise. */
int stress_report(const stress_report_in *in, FILE *out, FILE *err);

#endif
