/* http.h -- the HTTP API on CivetWeb (SPEC §6).
 *
 * Routes requests to the sale engine and the read-only/admin endpoints,
 * validates and bounds every input, and maps results to status codes with a
 * JSON error body {"error": CODE, "message": text, ...}. Each CivetWeb worker
 * thread uses its own Redis client from the pool.
 *
 * Ownership: http_start borrows everything in http_deps (they must outlive
 * the server); http_stop stops accepting, waits for in-flight requests to
 * complete, and frees the server.
 */
#ifndef NERVE_HTTP_H
#define NERVE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "nerve/actions.h"
#include "nerve/bus.h"
#include "nerve/config.h"
#include "nerve/declog.h"
#include "nerve/evaluator.h"
#include "nerve/killswitch.h"
#include "nerve/ledger.h"
#include "nerve/live.h"
#include "nerve/panic.h"
#include "nerve/policy.h"
#include "nerve/queue.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

/* Reload config params and rules (POST /admin/reload). Returns 0 with the
 * new generation, or -1 with *errors (malloc'd, `FILE:LINE: message` lines). */
typedef int (*http_reload_fn)(void *ud, uint64_t *generation, char **errors);

typedef struct http_deps {
    const cfg *cfg;
    rds_pool *pool;
    sale_engine *sale;
    live *live; /* may be NULL in tests of the sale path alone */
    ks *ks;
    act *act;
    policy *policy; /* read by GET /metrics only; may be NULL */
    evq *q;
    bus *bus;
    eval *eval;
    panic *panic;
    panic *resume;         /* panic.resume_url's calls (metrics); may be NULL */
    ledger_writer *ledger; /* read by /metrics and /readyz; may be NULL */
    declog *dlog;          /* the decision log's counters in /metrics; may be NULL */
    http_reload_fn reload;
    void *reload_ud;
} http_deps;

typedef struct http_server http_server;

/* Start listening on cfg->listen with cfg->threads workers. NULL with a
 * message in ERR when the address cannot be bound. */
http_server *http_start(const http_deps *d, char *err, size_t errlen);

/* Stop and free; NULL is fine. */
void http_stop(http_server *s);

#endif
