/* status.h -- the read side: GET /metrics, /readyz, /rules and /killswitch.
 *
 * Every view of the daemon's state is built here and only here, from each
 * module's own getters (sale_get_stats, policy_get_stats,
 * act_get_alert_stats, live_get_stats, eval_get_stats, evq_get_stats,
 * bus_get_stats, panic_get_stats, ks_get_stats, ks_list, rules_set_*). The
 * modules count what they own and know nothing of Prometheus or of the
 * HTTP API, so the sale path links none of the rest (tests/deps_graph.sh
 * checks that no include points up); this module sits above all of them and
 * below http, which only sends what it returns.
 *
 * Names are the contract: every metric name, label and JSON field here is
 * documented in README.md and asserted by the integration tests.
 *
 * Thread-safety: every function, on the calling thread's pooled Redis
 * client (rds_pool_client). Ownership: the sources are borrowed for the
 * call; results belong to the caller.
 */
#ifndef NERVE_STATUS_H
#define NERVE_STATUS_H

#include <stdbool.h>
#include <cjson/cJSON.h>

#include "nerve/actions.h"
#include "nerve/bus.h"
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

/* What to read. Any may be NULL: its part of a view is left out, or its
 * counters read as 0 where the metric has always been exported. */
typedef struct status_sources {
    rds_pool *pool; /* Redis reachability and the kill switch records */
    sale_engine *sale;
    policy *policy;
    act *act;
    live *live;
    eval *eval;
    evq *q;
    bus *bus;
    panic *panic;
    panic *resume; /* panic.resume_url's calls: nerve_resume_attempts_total */
    ks *ks;
    ledger_writer *ledger;   /* the ledger metrics and lag */
    int ledger_lag_ready_ms; /* /readyz: a warning past this lag (ledger.lag_ready_ms) */
    bool ledger_lag_unready; /* ... a reason to be unready instead (ledger.lag_unready) */
    declog *dlog;            /* the decision log's counters */
    const char *prefix;      /* redis.prefix: where GET /decisions reads */
} status_sources;

/* GET /metrics: the Prometheus text exposition (version 0.0.4). Returns a
 * malloc'd string the caller frees, NULL on OOM. Asks Redis once (the
 * engaged kill switch scopes; nerve_redis_up says whether it answered). */
char *status_metrics(const status_sources *s);

/* GET /readyz: {"redis", "rules_loaded", "rules_generation", "event_queue",
 * "evaluator", "bus_connected", "status", and "reason"/"reasons" when not
 * ready}. *READY is true when nothing is wrong (answer 200, else 503).
 * Returns the object (caller deletes), NULL on OOM. Pings Redis. */
cJSON *status_readyz(const status_sources *s, bool *ready);

/* GET /rules: the rule set in force with each rule's counters, and the last
 * reload's result. 0 with *OUT set (NULL on OOM; caller deletes), or -1 when
 * rules are not enabled (no live set: answer 404). */
int status_rules(const status_sources *s, cJSON **out);

/* "FILE:LINE: message" lines (TEXT may be NULL) as a JSON array of strings,
 * empty lines left out: /rules' last_reload.errors and the answer of a failed
 * POST /admin/reload. Caller deletes. */
cJSON *status_error_lines(const char *text);

/* GET /killswitch: {"engaged": [records]} read from Redis. NULL when Redis
 * did not answer (answer 503) or on OOM; else the caller deletes it. */
cJSON *status_killswitch(const status_sources *s);

/* When this process started, epoch seconds (process_start_time_seconds); 0
 * when /proc could not tell. */
double status_start_time(void);

/* GET /status.json (status_json.c): one object with everything the status
 * page shows, each part built by the function above that owns it --
 * "ready" (status_readyz, plus "ready": bool), "rules" (status_rules, null
 * when rules are not enabled), "killswitch" (status_killswitch with each
 * record's "age_seconds", null when Redis did not answer) -- and "sales":
 * the answers by result (nerve_sales_total), first sales per second over
 * the last five minutes (sale_read_window) and the most-sold SKUs with
 * their stock read from Redis in one pipelined round trip (null when
 * unknown). Plus "version", "instance", "now", "uptime_seconds" and "bus".
 * Three Redis round trips. NULL on OOM; else the caller deletes it. */
cJSON *status_json(const status_sources *s);

/* GET /decisions: {"decisions": [records newest first, each with "id"],
 * "count": N, "scanned": entries read} from PREFIXdecisions through F
 * (declog_query bounds the scan). NULL with why in ERR when Redis did not
 * answer (answer 503) or on OOM; else the caller deletes it. */
cJSON *status_decisions(const status_sources *s, const declog_filter *f, char *err, size_t errlen);

#endif
