/* metrics.h -- process-wide counters and histograms, and the Prometheus text
 * exposition of GET /metrics.
 *
 * Hot-path recording (metrics_sale, metrics_lock_wait, metrics_reload) is a
 * few relaxed atomic adds on process-wide counters: no lock, no allocation.
 * Everything else (events, rules, panic, kill switch, generation) is read
 * from its owning module when /metrics is scraped.
 *
 * Thread-safety: every function.
 */
#ifndef NERVE_METRICS_H
#define NERVE_METRICS_H

#include <stddef.h>

#include "nerve/sale.h"

/* Forward declarations only: recording is used low in the data flow (sale),
 * so this header must not pull in the modules above it. */
struct live;
struct eval;
struct evq;
struct panic;
struct ks;
struct bus;
struct rds_client;

/* Count one answered sale (STATUS, DUPLICATE) that took SECONDS end to end. */
void metrics_sale(sale_status status, int duplicate, double seconds);
/* Time a sale batch waited for its SKU lock. */
void metrics_lock_wait(double seconds);
/* One reload attempt. */
void metrics_reload(int ok);
/* One alert this instance kept quiet inside its throttle window, by LEVEL
 * ("info", "warning", "critical", "fatal"; anything else counts as "other"). */
void metrics_alert_suppressed(const char *level);

/* A sale_request rule failed; REJECTED: the sale was refused (sale_on_error
 * reject), else let through (allow). */
void metrics_sale_rule_failure(int rejected);

typedef struct metrics_sources {
    struct live *live;
    struct eval *eval;
    struct evq *q;
    struct panic *panic;
    struct ks *ks;
    struct bus *bus;
    struct rds_client *redis;          /* the scraping thread's client, for nerve_redis_up and kill scopes */
} metrics_sources;

/* Render the exposition text. Returns a malloc'd string (caller frees), NULL on OOM. */
char *metrics_render(const metrics_sources *s);

#endif
