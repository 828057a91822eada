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
#include "nerve/config.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

typedef struct http_deps {
    const cfg *cfg;
    rds_pool *pool;
    sale_engine *sale;
} http_deps;

typedef struct http_server http_server;

/* Start listening on cfg->listen with cfg->threads workers. NULL with a
 * message in ERR when the address cannot be bound. */
http_server *http_start(const http_deps *d, char *err, size_t errlen);

/* Stop and free; NULL is fine. */
void http_stop(http_server *s);

#endif
