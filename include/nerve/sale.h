/* sale.h -- the atomic sale: request validation, per-SKU coalescing and the
 * fenced commit script.
 *
 * A sale of SKU runs under the distributed lock nerve:{SKU}:lock. Sales of one
 * SKU that arrive while another is in progress in this process queue up; the
 * thread whose request is at the head of the queue takes the lock once and
 * commits the whole batch (up to cfg.max_batch sales, in arrival order) with
 * one script call. The script checks, atomically inside Redis: that the lock
 * is still held by our token (fencing: a holder stalled past the TTL cannot
 * commit after another took over), each order_id against its idempotency
 * record, each client unit_price against the SKU's catalog price (when the
 * operator set one), each qty against the stock; it then decrements, records
 * the orders and publishes the stock_changed and sale events. Every sale is
 * still checked on its own; batching only shares the lock round trips.
 *
 * The catalog price is the operator's (PUT /admin/stock), never the client's:
 * a client may pay more than it, never less, and the sale event carries it as
 * catalog_price so that rules judge pricing errors on a number no anonymous
 * client controls.
 *
 * Keys and streams: keys.h (PREFIX{pN}:stock:SKU, ...:price:SKU, ...:lock:SKU,
 * ...:order:SKU:ORDER_ID, PREFIX{pN}:stream:CHANNEL; N = the SKU's
 * partition). With streams on, the commit script appends each sale event and
 * each stock_changed event to its channel's partition stream (field "event",
 * the JSON text also PUBLISHed) in the same script as the decrement, so an
 * acknowledged sale is never missing from the log; a stock set through
 * sale_item_put or seeded is appended the same way. Every event nerve appends
 * carries "partition" (the Pub/Sub input skips such messages: they are read
 * from the stream) and "instance".
 *
 * Ownership: sale_engine_new copies what it needs from its options except the
 * pool, which must outlive the engine. sale_execute is thread-safe.
 */
#ifndef NERVE_SALE_H
#define NERVE_SALE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "nerve/hist.h"
#include "nerve/rds.h"
#include "nerve/salewin.h"
#include "nerve/sku.h"

#define SALE_STR_MAX SKU_MAX /* sku and order_id, bytes */

typedef struct sale_req {
    char sku[SALE_STR_MAX + 1];
    long long qty;
    char order_id[SALE_STR_MAX + 1]; /* generated when the client sent none */
    bool client_order_id;            /* true when the client sent it */
    double unit_price;
    bool has_price;
} sale_req;

typedef enum {
    SALE_OK = 0,       /* 200 (also a duplicate: see res.duplicate) */
    SALE_BAD_REQUEST,  /* 400 */
    SALE_OUT_OF_STOCK, /* 409 (also an SKU with no stock record) */
    SALE_REJECTED,     /* 422 a sale_request rule said no */
    SALE_HALTED,       /* 423 kill switch with halt_sales */
    SALE_UNAVAILABLE,  /* 503 Redis down or lock wait exceeded */
} sale_status;

typedef struct sale_res {
    sale_status status;
    long long qty;             /* for a duplicate: the first sale's */
    long long stock_remaining; /* -1 when unknown */
    bool duplicate;
    char message[512];    /* human text for errors */
    char rule[129];       /* SALE_REJECTED */
    char reason[256];     /* SALE_REJECTED */
    char scope[208];      /* SALE_HALTED */
    double catalog_price; /* SALE_REJECTED by rule "catalog_price" */
    bool has_catalog_price;
} sale_res;

/* How every stock_changed event of a commit begins, as the commit script
 * appends it: the ledger, which ignores these, recognises them by it without
 * parsing them (ledger.c). */
#define SALE_COMMIT_STOCK_HEAD "{\"type\":\"stock_changed\",\"source\":\"sale\","

/* The rule name a sale under the catalog price is rejected with. */
#define SALE_RULE_CATALOG_PRICE "catalog_price"
/* Highest unit_price and catalog price, like any money amount we accept. */
#define SALE_PRICE_MAX 1e15

/* Validate a JSON body: {"sku": str, "qty": int >= 1, "order_id": str?,
 * "unit_price": number 0..1e15?}. On success fills REQ (generating an
 * order_id when absent) and returns 0; otherwise returns -1 with a human
 * message in ERR. The unit_price is the client's offer: the commit refuses it
 * under the SKU's catalog price, and it is never trusted as the price. */
int sale_parse(const char *body, size_t len, long long max_qty, sale_req *req, char *err,
               size_t errlen);

/* Called for each sale before it is queued; returns SALE_OK to let it pass or
 * SALE_HALTED/SALE_REJECTED with RES filled in. Must be thread-safe. */
typedef sale_status (*sale_gate_fn)(void *ud, const sale_req *req, sale_res *res);

typedef struct sale_opts {
    const char *prefix;            /* key prefix, "nerve:" */
    const char *inventory_channel; /* stock_changed events */
    const char *sales_channel;     /* sale events */
    int partitions;                /* bus.partitions; < 1 counts as 1 */
    bool streams;                  /* XADD events to the partition streams */
    long stream_maxlen;            /* their MAXLEN ~; <= 0: 1000000 */
    bool publish;                  /* PUBLISH events too */
    const char *instance;          /* recorded in events; NULL: "" */
    int lock_ttl_ms;
    int lock_max_wait_ms;
    int idempotency_ttl_s;
    int max_batch;
    long long max_qty;
    const rds_opts *redis; /* commits share sale_engine's pipelines to it (mux.h); NULL:
                              each thread commits on its client from the pool */
    int pipelines;         /* connections of those pipelines; < 1 counts as 1 */
    /* sale.wait_replicas: after each commit, WAIT until this many replicas
     * acknowledged it, at most wait_timeout_ms (0: no WAIT). A sale that
     * fewer acknowledged is in the primary but may not survive a failover:
     * it answers SALE_UNAVAILABLE ("retry with the same order_id", which
     * then answers the recorded sale, replicated by then, as a duplicate, or
     * sells it again when a failover lost it), counted in
     * sale_stats.replication_short. */
    int wait_replicas;
    int wait_timeout_ms;
    sale_gate_fn gate; /* may be NULL */
    void *gate_ud;
} sale_opts;

typedef struct sale_engine sale_engine;

/* NULL only on OOM. POOL must outlive the engine. */
sale_engine *sale_engine_new(const sale_opts *o, rds_pool *pool);
void sale_engine_free(sale_engine *e);

/* The engine's options (its own copies): what the stock helpers below take,
 * so that every caller names keys and streams the way the engine does. */
const sale_opts *sale_engine_opts(const sale_engine *e);

/* Run one validated sale to its end, waiting for its batch. Thread-safe. */
void sale_execute(sale_engine *e, const sale_req *req, sale_res *res);

/* How sales were answered, as counted (nerve_sales_total's result label):
 * SALE_OK is split into first sales and duplicates. */
typedef enum {
    SALE_RESULT_OK,
    SALE_RESULT_DUPLICATE,
    SALE_RESULT_OUT_OF_STOCK,
    SALE_RESULT_REJECTED,
    SALE_RESULT_HALTED,
    SALE_RESULT_UNAVAILABLE,
    SALE_RESULT_BAD_REQUEST,
    SALE_RESULT_COUNT
} sale_result;

/* "ok", "duplicate", "out_of_stock", "rejected", "halted", "unavailable",
 * "bad_request"; NULL out of range. */
const char *sale_result_name(sale_result r);

typedef struct sale_stats {
    uint64_t results[SALE_RESULT_COUNT];
    hist_snap duration;  /* what sale_record was told, seconds */
    hist_snap lock_wait; /* per batch: 0 when the fast path took the lock */
    /* The shared pipelines (mux.h): commit scripts sent, and the round trips
     * that carried them (their ratio is the commits per round trip). */
    uint64_t pipeline_commands, pipeline_flushes;
    /* Sales committed on the primary that fewer than sale.wait_replicas
     * replicas acknowledged in time (answered 503). */
    uint64_t replication_short;
} sale_stats;

/* Count one answered sale with STATUS (DUPLICATE: a repeated order_id) that
 * took SECONDS end to end. The caller that answers the client records it,
 * because it alone sees every answer (a body that fails sale_parse never
 * reaches the engine) and when the request arrived. Thread-safe, lock-free. */
void sale_record(sale_engine *e, sale_status status, bool duplicate, double seconds);

/* The engine's counters since sale_engine_new. Thread-safe. */
void sale_get_stats(sale_engine *e, sale_stats *out);

/* First sales (not duplicates) of the last five minutes, per second and by
 * most-sold SKU (salewin.h), as sale_execute counted them. Thread-safe. */
void sale_read_window(sale_engine *e, salewin_snap *out);

/* What a commit script call did. */
typedef enum {
    SALE_COMMIT_ERROR = -1,    /* Redis error, message in ERR */
    SALE_COMMIT_DONE = 0,      /* every RES filled */
    SALE_COMMIT_LOCK_LOST = 1, /* the lock is not held by TOKEN: nothing changed */
    SALE_COMMIT_BUSY = 2, /* (taking the lock in the same call) held by another: nothing changed */
} sale_commit_result;

/* Commit N sales of SKU with the lock held by TOKEN, in one script call.
 * Exposed for tests of the fencing. Returns SALE_COMMIT_DONE with
 * RES[0..N) filled, SALE_COMMIT_LOCK_LOST, or SALE_COMMIT_ERROR (message in
 * ERR; state unknown only if the connection broke mid-call, in which case
 * the script ran entirely or not at all). The script releases the lock
 * (compare-and-delete) after committing. */
sale_commit_result sale_commit(rds_client *c, const sale_opts *o, const char *sku,
                               const char *token, const sale_req *reqs, sale_res *res, size_t n,
                               char *err, size_t errlen);

/* Stock record helpers (O gives the prefix, partitions, streams). sale_stock_get:
 * 0 with *stock set, 1 when the SKU has no stock record, -1 on error.
 * sale_stock_set: as PUT /admin/stock with only a stock (event with actor
 * "admin"); 0 or -1. sale_stock_seed: set only when the SKU has no stock
 * record (event with source and actor "seed"); 1 when set, 0 when already
 * present, -1 on error. */
int sale_stock_get(rds_client *c, const sale_opts *o, const char *sku, long long *stock);
/* The stock of N SKUs in one pipelined round trip: RC[i] as sale_stock_get
 * returns for SKUS[i], STOCK[i] set when RC[i] is 0. 0, or -1 when Redis
 * failed (every RC[i] not answered is -1). */
int sale_stock_get_many(rds_client *c, const sale_opts *o, const char *const *skus, size_t n,
                        long long *stock, int *rc);
int sale_stock_set(rds_client *c, const sale_opts *o, const char *sku, long long stock);
int sale_stock_seed(rds_client *c, const sale_opts *o, const char *sku, long long stock);

/* A SKU's catalog record: its stock and the operator's catalog price. */
typedef struct sale_item {
    long long stock;
    double price;
    bool has_price;
} sale_item;

/* What PUT /admin/stock/{sku} asks for: {"stock": int >= 0, "price":
 * number 0..1e15 | null}, at least one of them; price null removes the
 * catalog price, an absent one leaves it as it is. */
typedef enum { SALE_PRICE_KEEP, SALE_PRICE_SET, SALE_PRICE_CLEAR } sale_price_op;
typedef struct sale_put {
    bool has_stock;
    long long stock;
    sale_price_op price_op;
    double price; /* SALE_PRICE_SET */
} sale_put;

/* Validate a PUT /admin/stock body (ROOT may be NULL: not JSON). 0 with P
 * filled, or -1 with a message naming what was wrong in ERR. */
int sale_put_parse(const cJSON *root, sale_put *p, char *err, size_t errlen);

/* Apply P to SKU atomically (one script: the stock and the price change
 * together or not at all, and a stock change is appended to the inventory
 * stream with its previous value and delta, actor "admin") and read back the
 * record into *NOW. 0 done; 1 when
 * P sets only the price and SKU has no stock record (nothing changed: a price
 * without stock would describe a SKU nerve does not sell); -1 on error. */
int sale_item_put(rds_client *c, const sale_opts *o, const char *sku, const sale_put *p,
                  sale_item *now);

/* Read SKU's stock and catalog price in one round trip: 0 with *IT filled,
 * 1 when the SKU has no stock record, -1 on error. A stored price that is not
 * a number in 0..SALE_PRICE_MAX reads as none, as the commit script sees it. */
int sale_item_get(rds_client *c, const sale_opts *o, const char *sku, sale_item *it);

#endif
