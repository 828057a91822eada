/* salewin.h -- sales over the last five minutes, for the status page.
 *
 * Two small in-process views of recent sales that /status.json renders and
 * that cost the sale path almost nothing: the sales of each of the last
 * SALEWIN_SECONDS seconds (a ring of per-second counts; recording is one
 * relaxed atomic add in the common case, no lock) and the most-sold SKUs of
 * that window (a space-saving table of SALEWIN_SKUS entries taken with a
 * try-lock: a sale that finds it busy is simply not counted there, so the
 * table is a sample under contention and never makes a sale wait).
 *
 * Memory is fixed whatever the number of SKUs: the table forgets the least
 * counted SKU to make room (space-saving: a newcomer inherits its count as
 * its eviction weight), so any SKU selling more than 1/SALEWIN_SKUS of the
 * units stays in it; an entry leaves after SALEWIN_SECONDS without a sale.
 * What is shown is exact: the units since the SKU entered the table.
 *
 * A leaf module (clock only), embedded in the sale engine. The struct is
 * exposed only so that it can be embedded (zero-initialised is empty);
 * Thread-safety: every function.
 */
#ifndef NERVE_SALEWIN_H
#define NERVE_SALEWIN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "nerve/sku.h"

#define SALEWIN_SECONDS 300 /* the window: five minutes */
#define SALEWIN_SKUS    64  /* SKUs tracked; the top SALEWIN_TOP are shown */
#define SALEWIN_TOP     10

typedef struct salewin_sku {
    char sku[SKU_MAX + 1];
    uint64_t units;    /* units sold since it entered the table: exact */
    uint64_t sales;    /* sales since then */
    uint64_t last_sec; /* second of its last sale; 0: free slot */
    /* What eviction goes by (space-saving): units plus the count of the
     * entry it replaced, an upper bound of its units in the window. */
    uint64_t weight;
    uint32_t hash; /* of sku: the scan compares this first */
} salewin_sku;

typedef struct salewin {
    /* Slot t % SALEWIN_SECONDS: (second t << 32) | sales in it. */
    _Atomic uint64_t ring[SALEWIN_SECONDS];
    pthread_mutex_t mu; /* the SKU table: try-lock only on the sale path */
    salewin_sku skus[SALEWIN_SKUS];
} salewin;

void salewin_init(salewin *w);
void salewin_destroy(salewin *w);

/* Count one sale of QTY units of SKU now. Never blocks. */
void salewin_add(salewin *w, const char *sku, long long qty);

/* What salewin_read copies out. */
typedef struct salewin_snap {
    /* Sales of each of the last SALEWIN_SECONDS whole seconds, oldest
     * first; the last one is the second now running (still counting). */
    uint32_t per_second[SALEWIN_SECONDS];
    /* The most-sold SKUs with a sale in the window, most units (since
     * they entered the table) first. */
    salewin_sku top[SALEWIN_TOP];
    int n_top;
} salewin_snap;

void salewin_read(salewin *w, salewin_snap *out);

#endif
