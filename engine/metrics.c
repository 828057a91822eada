/* metrics.c -- counters, histograms and Prometheus exposition (see metrics.h). */
#include "nerve/metrics.h"

#include "nerve/bus.h"
#include "nerve/evaluator.h"
#include "nerve/killswitch.h"
#include "nerve/live.h"
#include "nerve/panic.h"
#include "nerve/queue.h"
#include "nerve/rds.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- primitives ----------------------------------------------------------------- */

#define NBUCKETS 14
static const double bucket_bounds[NBUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
};

typedef struct hist {
    _Atomic uint64_t counts[NBUCKETS + 1];  /* last: +Inf */
    _Atomic uint64_t sum_ns;
} hist;

static void hist_observe(hist *h, double seconds) {
    size_t i = 0;
    while (i < NBUCKETS && seconds > bucket_bounds[i]) i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    if (seconds < 0) seconds = 0;
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(seconds * 1e9), memory_order_relaxed);
}

enum { R_OK, R_DUPLICATE, R_OUT_OF_STOCK, R_REJECTED, R_HALTED, R_UNAVAILABLE, R_BAD_REQUEST, R_N };
static const char *const result_names[R_N] = {
    "ok", "duplicate", "out_of_stock", "rejected", "halted", "unavailable", "bad_request",
};

static _Atomic uint64_t sales_total[R_N];
static hist sale_duration, lock_wait;
static _Atomic uint64_t reloads_ok, reloads_failed;

void metrics_sale(sale_status status, int duplicate, double seconds) {
    int r;
    switch (status) {
    case SALE_OK: r = duplicate ? R_DUPLICATE : R_OK; break;
    case SALE_OUT_OF_STOCK: r = R_OUT_OF_STOCK; break;
    case SALE_REJECTED: r = R_REJECTED; break;
    case SALE_HALTED: r = R_HALTED; break;
    case SALE_BAD_REQUEST: r = R_BAD_REQUEST; break;
    default: r = R_UNAVAILABLE; break;
    }
    atomic_fetch_add_explicit(&sales_total[r], 1, memory_order_relaxed);
    hist_observe(&sale_duration, seconds);
}

void metrics_lock_wait(double seconds) { hist_observe(&lock_wait, seconds); }

void metrics_reload(int ok) { atomic_fetch_add(ok ? &reloads_ok : &reloads_failed, 1); }

static const char *const alert_levels[] = { "info", "warning", "critical", "fatal", "other" };
#define N_ALERT_LEVELS (sizeof alert_levels / sizeof *alert_levels)
static _Atomic uint64_t alerts_suppressed[N_ALERT_LEVELS];

void metrics_alert_suppressed(const char *level) {
    size_t i = 0;
    while (i + 1 < N_ALERT_LEVELS && strcmp(level ? level : "", alert_levels[i]) != 0) i++;
    atomic_fetch_add_explicit(&alerts_suppressed[i], 1, memory_order_relaxed);
}

static _Atomic uint64_t sale_rule_failures[2];     /* [0] allowed, [1] rejected */

void metrics_sale_rule_failure(int rejected) {
    atomic_fetch_add_explicit(&sale_rule_failures[rejected ? 1 : 0], 1, memory_order_relaxed);
}

/* ---- text buffer ------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t n, cap;
    int oom;
} buf;

static void out(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->n) {
            b->n += (size_t)n;
            return;
        }
        size_t nc = (b->cap + (size_t)n + 1) * 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np, b->cap = nc;
    }
}

/* A label value with \, " and newline escaped (Prometheus text format). */
static const char *esc(const char *s, char *tmp, size_t cap) {
    size_t j = 0;
    for (; *s && j + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') tmp[j++] = '\\', tmp[j++] = *s;
        else if (*s == '\n') tmp[j++] = '\\', tmp[j++] = 'n';
        else tmp[j++] = *s;
    }
    tmp[j] = 0;
    return tmp;
}

static void hist_render(buf *b, const char *name, const char *help, const char *labels, hist *h,
                        int header) {
    if (header) {
        out(b, "# HELP %s %s\n", name, help);
        out(b, "# TYPE %s histogram\n", name);
    }
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        if (i < NBUCKETS)
            out(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bucket_bounds[i], (unsigned long long)cum);
        else
            out(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    }
    out(b, "%s_sum%s%s%s %.9f\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (double)atomic_load(&h->sum_ns) / 1e9);
    out(b, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (unsigned long long)cum);
}

char *metrics_render(const metrics_sources *s) {
    buf b = { malloc(16384), 0, 16384, 0 };
    if (!b.p) return NULL;
    b.p[0] = 0;
    char e1[512], e2[512];

    out(&b, "# HELP nerve_sales_total Sale requests answered, by result.\n# TYPE nerve_sales_total counter\n");
    for (int i = 0; i < R_N; i++)
        out(&b, "nerve_sales_total{result=\"%s\"} %llu\n", result_names[i],
            (unsigned long long)atomic_load(&sales_total[i]));
    hist_render(&b, "nerve_sale_duration_seconds", "Time to answer a sale, seconds.", "", &sale_duration, 1);
    hist_render(&b, "nerve_lock_wait_seconds", "Time a sale batch waited for its SKU lock, seconds.", "",
                &lock_wait, 1);

    if (s->eval) {
        eval_stats es;
        eval_get_stats(s->eval, &es);
        out(&b, "# HELP nerve_events_total Bus events evaluated, by channel.\n# TYPE nerve_events_total counter\n");
        for (size_t i = 0; i < es.n_channels; i++)
            out(&b, "nerve_events_total{channel=\"%s\"} %llu\n", esc(es.channels[i].name, e1, sizeof e1),
                (unsigned long long)es.channels[i].events);
        out(&b, "# HELP nerve_events_invalid_total Bus events that were not a JSON object.\n"
                "# TYPE nerve_events_invalid_total counter\nnerve_events_invalid_total %llu\n",
            (unsigned long long)es.bad_events);
        /* Liveness (bus.stall_ms): alert on stalled, or on busy_seconds near
         * rules.eval_timeout_ms; last_completed_age alone also grows when idle. */
        eval_liveness lv;
        eval_get_liveness(s->eval, &lv);
        out(&b, "# HELP nerve_evaluator_busy_seconds How long the event in evaluation has been running, 0 when idle.\n"
                "# TYPE nerve_evaluator_busy_seconds gauge\nnerve_evaluator_busy_seconds %.3f\n",
            (double)lv.busy_ns / 1e9);
        out(&b, "# HELP nerve_evaluator_last_completed_age_seconds Seconds since the evaluator last finished an event "
                "(since start when none).\n# TYPE nerve_evaluator_last_completed_age_seconds gauge\n"
                "nerve_evaluator_last_completed_age_seconds %.3f\n", (double)lv.since_done_ns / 1e9);
        out(&b, "# HELP nerve_evaluator_stalled 1 while events wait and none finished for bus.stall_ms.\n"
                "# TYPE nerve_evaluator_stalled gauge\nnerve_evaluator_stalled %d\n", lv.stalled);
    }
    if (s->bus) {
        bus_stats bs;
        bus_get_stats(s->bus, &bs);
        out(&b, "# HELP nerve_bus_messages_total Messages received from the Redis bus.\n"
                "# TYPE nerve_bus_messages_total counter\nnerve_bus_messages_total %llu\n",
            (unsigned long long)bs.messages);
        out(&b, "# HELP nerve_events_dropped_total Bus messages dropped before evaluation, by reason.\n"
                "# TYPE nerve_events_dropped_total counter\n"
                "nerve_events_dropped_total{reason=\"oversized\"} %llu\n"
                "nerve_events_dropped_total{reason=\"queue_full\"} %llu\n",
            (unsigned long long)bs.oversized, (unsigned long long)bs.queue_full);
        out(&b, "# HELP nerve_bus_reconnects_total Times the bus subscriber reconnected.\n"
                "# TYPE nerve_bus_reconnects_total counter\nnerve_bus_reconnects_total %llu\n",
            (unsigned long long)bs.reconnects);
        out(&b, "# HELP nerve_bus_connected 1 while the bus subscriber is subscribed.\n"
                "# TYPE nerve_bus_connected gauge\nnerve_bus_connected %d\n", bs.connected ? 1 : 0);
    }
    if (s->q) {
        evq_stats qs;
        evq_get_stats(s->q, &qs);
        out(&b, "# HELP nerve_event_queue_depth Events waiting for the rules.\n# TYPE nerve_event_queue_depth gauge\n"
                "nerve_event_queue_depth %zu\n", qs.depth);
        out(&b, "# HELP nerve_event_queue_oldest_age_seconds How long the oldest queued event has waited, 0 when empty.\n"
                "# TYPE nerve_event_queue_oldest_age_seconds gauge\nnerve_event_queue_oldest_age_seconds %.3f\n",
            (double)evq_oldest_age_ns(&qs, evq_now_ns()) / 1e9);
        out(&b, "# HELP nerve_event_queue_dropped_total Events dropped because the queue was full.\n"
                "# TYPE nerve_event_queue_dropped_total counter\nnerve_event_queue_dropped_total %llu\n",
            (unsigned long long)qs.dropped);
    }

    uint64_t gen = 0;
    rules_set *set = s->live ? live_get(s->live, &gen) : NULL;
    size_t nr = set ? rules_set_count(set) : 0;
    static const char *const rule_metrics[][3] = {
        { "nerve_rule_evaluations_total", "counter", "Rule evaluations, by rule (current rule set)." },
        { "nerve_rule_errors_total", "counter", "Rule errors (runtime, limits, invalid decisions), by rule." },
        { "nerve_rule_duration_seconds", "summary", "Time spent in evaluate, by rule, seconds." },
        { "nerve_decisions_total", "counter", "Decisions, by rule and action." },
    };
    for (int m = 0; m < 4; m++) {
        out(&b, "# HELP %s %s\n# TYPE %s %s\n", rule_metrics[m][0], rule_metrics[m][2], rule_metrics[m][0],
            rule_metrics[m][1]);
        for (size_t i = 0; i < nr; i++) {
            rules_info in;
            rules_stats st;
            if (rules_set_info(set, i, &in) || rules_set_stats(set, i, &st)) continue;
            esc(in.name, e1, sizeof e1);
            if (m == 0) out(&b, "nerve_rule_evaluations_total{rule=\"%s\"} %llu\n", e1, (unsigned long long)st.evaluations);
            if (m == 1) out(&b, "nerve_rule_errors_total{rule=\"%s\"} %llu\n", e1, (unsigned long long)st.errors);
            if (m == 2) {
                out(&b, "nerve_rule_duration_seconds_sum{rule=\"%s\"} %.9f\n", e1, (double)st.duration_ns / 1e9);
                out(&b, "nerve_rule_duration_seconds_count{rule=\"%s\"} %llu\n", e1, (unsigned long long)st.evaluations);
            }
            if (m == 3)
                for (int a = 0; a < RULES_ACTION_COUNT; a++)
                    out(&b, "nerve_decisions_total{rule=\"%s\",action=\"%s\"} %llu\n", e1,
                        rules_action_name((rules_action)a), (unsigned long long)st.decisions[a]);
        }
    }
    out(&b, "# HELP nerve_rules_generation Generation of the rule set in force.\n# TYPE nerve_rules_generation gauge\n"
            "nerve_rules_generation %llu\n", (unsigned long long)gen);
    out(&b, "# HELP nerve_rules_loaded Rules in the set in force.\n# TYPE nerve_rules_loaded gauge\n"
            "nerve_rules_loaded %zu\n", nr);
    rules_set_unref(set);
    out(&b, "# HELP nerve_reloads_total Reload attempts, by result.\n# TYPE nerve_reloads_total counter\n"
            "nerve_reloads_total{result=\"ok\"} %llu\nnerve_reloads_total{result=\"failed\"} %llu\n",
        (unsigned long long)atomic_load(&reloads_ok), (unsigned long long)atomic_load(&reloads_failed));

    if (s->panic) {
        panic_stats ps;
        panic_get_stats(s->panic, &ps);
        out(&b, "# HELP nerve_panic_attempts_total Emergency stop webhook attempts, by result.\n"
                "# TYPE nerve_panic_attempts_total counter\n"
                "nerve_panic_attempts_total{result=\"ok\"} %llu\nnerve_panic_attempts_total{result=\"failed\"} %llu\n",
            ps.attempts_ok, ps.attempts_failed);
    }

    out(&b, "# HELP nerve_sale_rule_failures_total Sales whose sale_request rules failed (error, limit or "
            "deadline), by outcome (rules.sale_on_error).\n# TYPE nerve_sale_rule_failures_total counter\n"
            "nerve_sale_rule_failures_total{outcome=\"rejected\"} %llu\n"
            "nerve_sale_rule_failures_total{outcome=\"allowed\"} %llu\n",
        (unsigned long long)atomic_load(&sale_rule_failures[1]),
        (unsigned long long)atomic_load(&sale_rule_failures[0]));
    out(&b, "# HELP nerve_alerts_suppressed_total Alerts this instance kept quiet inside their throttle "
            "window (per rule, scope and level), by level.\n# TYPE nerve_alerts_suppressed_total counter\n");
    for (size_t i = 0; i < N_ALERT_LEVELS; i++)
        out(&b, "nerve_alerts_suppressed_total{level=\"%s\"} %llu\n", alert_levels[i],
            (unsigned long long)atomic_load(&alerts_suppressed[i]));
    if (s->ks) {
        ks_stats kst;
        ks_get_stats(s->ks, &kst);
        out(&b, "# HELP nerve_control_messages_total Control-channel messages, by result: ok (the named "
                "record re-read), invalid (ignored), error (re-read failed).\n"
                "# TYPE nerve_control_messages_total counter\n"
                "nerve_control_messages_total{result=\"ok\"} %llu\n"
                "nerve_control_messages_total{result=\"invalid\"} %llu\n"
                "nerve_control_messages_total{result=\"error\"} %llu\n",
            kst.control_ok, kst.control_invalid, kst.control_error);
        out(&b, "# HELP nerve_kill_switch_halting Scopes (global, sku:...) this instance halts sales for.\n"
                "# TYPE nerve_kill_switch_halting gauge\nnerve_kill_switch_halting %zu\n", kst.halting);
    }

    int redis_up = 0;
    out(&b, "# HELP nerve_kill_switch_engaged Kill switch scopes engaged (1), fleet-wide.\n"
            "# TYPE nerve_kill_switch_engaged gauge\n");
    if (s->redis && s->ks) {
        cJSON *arr = ks_list(s->ks, s->redis);
        redis_up = arr != NULL;
        const cJSON *rec;
        int shown = 0;
        cJSON_ArrayForEach(rec, arr) {
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(rec, "scope");
            if (!cJSON_IsString(sc) || shown++ >= 1000) continue;
            out(&b, "nerve_kill_switch_engaged{scope=\"%s\"} 1\n", esc(sc->valuestring, e2, sizeof e2));
        }
        cJSON_Delete(arr);
    }
    out(&b, "# HELP nerve_redis_up 1 when Redis answered this scrape.\n# TYPE nerve_redis_up gauge\n"
            "nerve_redis_up %d\n", redis_up);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
