/* status.c -- the read side: Prometheus text and the JSON of /readyz, /rules
 * and /killswitch (see status.h).
 *
 * Why one module: rendering needs every other module, and counting needs
 * none. When one file did both, the sale path (which counts) linked the
 * evaluator, Lua and libcurl (which it renders), and the include arrows ran
 * upward. Here each module keeps its counters and this one only reads them.
 */
#include "nerve/status.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nerve/clock.h"
#include "nerve/hist.h"
#include "nerve/version.h"

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
        if (*s == '\\' || *s == '"')
            tmp[j++] = '\\', tmp[j++] = *s;
        else if (*s == '\n')
            tmp[j++] = '\\', tmp[j++] = 'n';
        else
            tmp[j++] = *s;
    }
    tmp[j] = 0;
    return tmp;
}

/* One histogram's series; LABELS ("rule=\"x\"", already escaped) go before
 * le, "" for none. */
static void hist_series(buf *b, const char *name, const char *labels, const hist_snap *h) {
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i <= HIST_BUCKETS; i++) {
        cum += h->counts[i];
        if (i < HIST_BUCKETS)
            out(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, hist_bounds[i],
                (unsigned long long)cum);
        else
            out(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    out(b, "%s_sum%s%s%s %.9f\n", name, open, labels, close, h->sum);
    out(b, "%s_count%s%s%s %llu\n", name, open, labels, close, (unsigned long long)cum);
}

static void hist_render(buf *b, const char *name, const char *help, const hist_snap *h) {
    out(b, "# HELP %s %s\n", name, help);
    out(b, "# TYPE %s histogram\n", name);
    hist_series(b, name, "", h);
}

/* ---- the process ------------------------------------------------------------------ */

/* When this process started, epoch seconds, from /proc (what Prometheus'
 * own clients export): its start in clock ticks since boot plus the boot
 * time. Read once; 0 when /proc is not there. */
static double start_time;
static pthread_once_t start_once = PTHREAD_ONCE_INIT;

static void read_start_time(void) {
    unsigned long long ticks = 0, btime = 0;
    char line[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        /* Field 22; the command (field 2) may hold spaces: count after its ')'. */
        char *p = fgets(line, sizeof line, f) ? strrchr(line, ')') : NULL;
        for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
        if (p) ticks = strtoull(p + 1, NULL, 10);
        fclose(f);
    }
    f = fopen("/proc/stat", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &btime) == 1) break;
    if (f) fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (btime && ticks && hz > 0) start_time = (double)btime + (double)ticks / (double)hz;
}

double status_start_time(void) {
    pthread_once(&start_once, read_start_time);
    return start_time;
}

static void render_process(buf *b) {
    pthread_once(&start_once, read_start_time);
    out(b,
        "# HELP nerve_build_info The nerve build serving: always 1, its version as a label.\n"
        "# TYPE nerve_build_info gauge\nnerve_build_info{version=\"%s\"} 1\n",
        NERVE_VERSION);
    out(b,
        "# HELP process_start_time_seconds Start time of the process since the epoch, seconds.\n"
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
        start_time);
}

/* ---- /metrics, by owner ---------------------------------------------------------- */

static void render_sale(buf *b, const status_sources *s) {
    sale_stats ss;
    memset(&ss, 0, sizeof ss);
    if (s->sale) sale_get_stats(s->sale, &ss);
    out(b,
        "# HELP nerve_sales_total Sale requests answered, by result.\n# TYPE nerve_sales_total counter\n");
    for (int i = 0; i < SALE_RESULT_COUNT; i++)
        out(b, "nerve_sales_total{result=\"%s\"} %llu\n", sale_result_name((sale_result)i),
            (unsigned long long)ss.results[i]);
    hist_render(b, "nerve_sale_duration_seconds", "Time to answer a sale, seconds.", &ss.duration);
    hist_render(b, "nerve_lock_wait_seconds", "Time a sale batch waited for its SKU lock, seconds.",
                &ss.lock_wait);
    out(b,
        "# HELP nerve_sale_pipeline_commands_total Commands sent on the Redis pipelines the sale "
        "commits share (sale.pipelines).\n# TYPE nerve_sale_pipeline_commands_total counter\n"
        "nerve_sale_pipeline_commands_total %llu\n"
        "# HELP nerve_sale_pipeline_round_trips_total Round trips of those pipelines: commands "
        "per round trip is how much the commits were batched.\n"
        "# TYPE nerve_sale_pipeline_round_trips_total counter\n"
        "nerve_sale_pipeline_round_trips_total %llu\n",
        (unsigned long long)ss.pipeline_commands, (unsigned long long)ss.pipeline_flushes);
    out(b,
        "# HELP nerve_sale_replication_short_total Sales committed on the Redis primary that "
        "fewer replicas than sale.wait_replicas acknowledged in time (answered 503).\n"
        "# TYPE nerve_sale_replication_short_total counter\n"
        "nerve_sale_replication_short_total %llu\n",
        (unsigned long long)ss.replication_short);
}

static void render_eval(buf *b, eval *ev) {
    char e1[512];
    eval_stats es;
    eval_get_stats(ev, &es);
    out(b,
        "# HELP nerve_events_total Bus events evaluated, by channel.\n# TYPE nerve_events_total counter\n");
    for (size_t i = 0; i < es.n_channels; i++)
        out(b, "nerve_events_total{channel=\"%s\"} %llu\n", esc(es.channels[i].name, e1, sizeof e1),
            (unsigned long long)es.channels[i].events);
    out(b,
        "# HELP nerve_events_invalid_total Bus events that were not a JSON object.\n"
        "# TYPE nerve_events_invalid_total counter\nnerve_events_invalid_total %llu\n"
        "# HELP nerve_events_deferred_total Stream events left pending for another try: a "
        "decision failed (Redis) or no rules were built.\n"
        "# TYPE nerve_events_deferred_total counter\nnerve_events_deferred_total %llu\n",
        (unsigned long long)es.bad_events, (unsigned long long)es.deferred);
    /* Liveness (bus.stall_ms): alert on stalled, or on busy_seconds near
     * rules.eval_timeout_ms; last_completed_age alone also grows when idle. */
    eval_liveness lv;
    eval_get_liveness(ev, &lv);
    out(b,
        "# HELP nerve_evaluator_busy_seconds How long the event in evaluation has been running, 0 when idle.\n"
        "# TYPE nerve_evaluator_busy_seconds gauge\nnerve_evaluator_busy_seconds %.3f\n",
        (double)lv.busy_ns / 1e9);
    out(b,
        "# HELP nerve_evaluator_last_completed_age_seconds Seconds since the evaluator last finished an event "
        "(since start when none).\n# TYPE nerve_evaluator_last_completed_age_seconds gauge\n"
        "nerve_evaluator_last_completed_age_seconds %.3f\n",
        (double)lv.since_done_ns / 1e9);
    out(b,
        "# HELP nerve_evaluator_stalled 1 while events wait and none finished for bus.stall_ms.\n"
        "# TYPE nerve_evaluator_stalled gauge\nnerve_evaluator_stalled %d\n",
        lv.stalled);
}

static void render_bus(buf *b, bus *bu) {
    bus_stats bs;
    bus_get_stats(bu, &bs);
    out(b,
        "# HELP nerve_bus_messages_total Messages received from the Redis bus.\n"
        "# TYPE nerve_bus_messages_total counter\nnerve_bus_messages_total %llu\n",
        (unsigned long long)bs.messages);
    out(b,
        "# HELP nerve_events_dropped_total Bus messages dropped before evaluation, by reason.\n"
        "# TYPE nerve_events_dropped_total counter\n"
        "nerve_events_dropped_total{reason=\"oversized\"} %llu\n"
        "nerve_events_dropped_total{reason=\"queue_full\"} %llu\n",
        (unsigned long long)bs.oversized, (unsigned long long)bs.queue_full);
    out(b,
        "# HELP nerve_bus_reconnects_total Times the bus subscriber reconnected.\n"
        "# TYPE nerve_bus_reconnects_total counter\nnerve_bus_reconnects_total %llu\n",
        (unsigned long long)bs.reconnects);
    out(b,
        "# HELP nerve_bus_connected 1 while the bus subscriber is subscribed.\n"
        "# TYPE nerve_bus_connected gauge\nnerve_bus_connected %d\n",
        bs.connected ? 1 : 0);
    out(b,
        "# HELP nerve_bus_pubsub_own_ignored_total Pub/Sub messages of nerve's own (carrying "
        "\"partition\") not evaluated: they are read from their stream.\n"
        "# TYPE nerve_bus_pubsub_own_ignored_total counter\nnerve_bus_pubsub_own_ignored_total %llu\n",
        (unsigned long long)bs.own_ignored);
    if (!bs.streams) return;
    const sg_stats *g = &bs.sg;
    out(b,
        "# HELP nerve_stream_reads_total Read commands of the stream reader (XREADGROUP, XAUTOCLAIM).\n"
        "# TYPE nerve_stream_reads_total counter\nnerve_stream_reads_total %llu\n"
        "# HELP nerve_stream_entries_total Stream entries handed to the rules.\n"
        "# TYPE nerve_stream_entries_total counter\nnerve_stream_entries_total %llu\n"
        "# HELP nerve_stream_claimed_total Entries claimed from a consumer idle past bus.claim_idle_ms.\n"
        "# TYPE nerve_stream_claimed_total counter\nnerve_stream_claimed_total %llu\n"
        "# HELP nerve_stream_acked_total Entries acknowledged to the consumer group.\n"
        "# TYPE nerve_stream_acked_total counter\nnerve_stream_acked_total %llu\n"
        "# HELP nerve_stream_ack_errors_total Acknowledgements that failed (the entries stay pending).\n"
        "# TYPE nerve_stream_ack_errors_total counter\nnerve_stream_ack_errors_total %llu\n",
        (unsigned long long)g->reads, (unsigned long long)g->messages,
        (unsigned long long)g->claimed, (unsigned long long)g->acked,
        (unsigned long long)bs.ack_errors);
    out(b,
        "# HELP nerve_stream_dropped_total Stream entries acknowledged without evaluation, by reason.\n"
        "# TYPE nerve_stream_dropped_total counter\n"
        "nerve_stream_dropped_total{reason=\"no_event\"} %llu\n"
        "nerve_stream_dropped_total{reason=\"oversized\"} %llu\n"
        "nerve_stream_dropped_total{reason=\"deleted\"} %llu\n",
        (unsigned long long)g->skipped, (unsigned long long)g->oversized,
        (unsigned long long)g->deleted);
    out(b,
        "# HELP nerve_stream_pending Entries this instance read and has not acknowledged yet.\n"
        "# TYPE nerve_stream_pending gauge\nnerve_stream_pending %llu\n"
        "# HELP nerve_stream_reconnects_total Times the stream reader reconnected.\n"
        "# TYPE nerve_stream_reconnects_total counter\nnerve_stream_reconnects_total %llu\n"
        "# HELP nerve_stream_connected 1 while the stream reader is connected.\n"
        "# TYPE nerve_stream_connected gauge\nnerve_stream_connected %d\n"
        "# HELP nerve_stream_trimmed_unread_total Times stream entries were found trimmed "
        "(bus.stream_maxlen) before the rules read them: they were never evaluated.\n"
        "# TYPE nerve_stream_trimmed_unread_total counter\nnerve_stream_trimmed_unread_total %llu\n",
        (unsigned long long)bs.in_flight, (unsigned long long)g->reconnects, g->connected,
        (unsigned long long)g->gaps);
}

static void render_queue(buf *b, evq *q) {
    evq_stats qs;
    evq_get_stats(q, &qs);
    out(b,
        "# HELP nerve_event_queue_depth Events waiting for the rules.\n# TYPE nerve_event_queue_depth gauge\n"
        "nerve_event_queue_depth %zu\n",
        qs.depth);
    out(b,
        "# HELP nerve_event_queue_oldest_age_seconds How long the oldest queued event has waited, 0 when empty.\n"
        "# TYPE nerve_event_queue_oldest_age_seconds gauge\nnerve_event_queue_oldest_age_seconds %.3f\n",
        (double)evq_oldest_age_ns(&qs, clock_now_ns()) / 1e9);
    out(b,
        "# HELP nerve_event_queue_dropped_total Events dropped because the queue was full.\n"
        "# TYPE nerve_event_queue_dropped_total counter\nnerve_event_queue_dropped_total %llu\n",
        (unsigned long long)qs.dropped);
}

static void render_rules(buf *b, live *l) {
    char e1[512];
    uint64_t gen = 0;
    rules_set *set = l ? live_get(l, &gen) : NULL;
    size_t nr = set ? rules_set_count(set) : 0;
    static const char *const rule_metrics[][3] = {
        { "nerve_rule_evaluations_total", "counter",
          "Rule evaluations, by rule (kept across reloads by rule name)." },
        { "nerve_rule_errors_total", "counter",
          "Rule errors (runtime, limits, invalid decisions), by rule." },
        { "nerve_rule_duration_seconds", "histogram", "Time of each evaluate, by rule, seconds." },
        { "nerve_decisions_total", "counter", "Decisions, by rule and action." },
    };
    for (int m = 0; m < 4; m++) {
        out(b, "# HELP %s %s\n# TYPE %s %s\n", rule_metrics[m][0], rule_metrics[m][2],
            rule_metrics[m][0], rule_metrics[m][1]);
        for (size_t i = 0; i < nr; i++) {
            rules_info in;
            rules_stats st;
            if (rules_set_info(set, i, &in) || rules_set_stats(set, i, &st)) continue;
            esc(in.name, e1, sizeof e1);
            if (m == 0)
                out(b, "nerve_rule_evaluations_total{rule=\"%s\"} %llu\n", e1,
                    (unsigned long long)st.evaluations);
            if (m == 1)
                out(b, "nerve_rule_errors_total{rule=\"%s\"} %llu\n", e1,
                    (unsigned long long)st.errors);
            if (m == 2) {
                char lab[sizeof e1 + 16];
                snprintf(lab, sizeof lab, "rule=\"%s\"", e1);
                hist_series(b, "nerve_rule_duration_seconds", lab, &st.duration);
            }
            if (m == 3)
                for (int a = 0; a < RULES_ACTION_COUNT; a++)
                    out(b, "nerve_decisions_total{rule=\"%s\",action=\"%s\"} %llu\n", e1,
                        rules_action_name((rules_action)a), (unsigned long long)st.decisions[a]);
        }
    }
    out(b,
        "# HELP nerve_rules_generation Generation of the rule set in force.\n# TYPE nerve_rules_generation gauge\n"
        "nerve_rules_generation %llu\n",
        (unsigned long long)gen);
    out(b,
        "# HELP nerve_rules_loaded Rules in the set in force.\n# TYPE nerve_rules_loaded gauge\n"
        "nerve_rules_loaded %zu\n",
        nr);
    rules_set_unref(set);
    live_stats ls = { 0, 0 };
    if (l) live_get_stats(l, &ls);
    out(b,
        "# HELP nerve_reloads_total Reload attempts, by result.\n# TYPE nerve_reloads_total counter\n"
        "nerve_reloads_total{result=\"ok\"} %llu\nnerve_reloads_total{result=\"failed\"} %llu\n",
        (unsigned long long)ls.reloads_ok, (unsigned long long)ls.reloads_failed);
}

static void render_actions(buf *b, const status_sources *s) {
    policy_stats ps = { 0, 0 };
    if (s->policy) policy_get_stats(s->policy, &ps);
    out(b,
        "# HELP nerve_sale_rule_failures_total Sales whose sale_request rules failed (error, limit or "
        "deadline), by outcome (rules.sale_on_error).\n# TYPE nerve_sale_rule_failures_total counter\n"
        "nerve_sale_rule_failures_total{outcome=\"rejected\"} %llu\n"
        "nerve_sale_rule_failures_total{outcome=\"allowed\"} %llu\n",
        (unsigned long long)ps.rule_failures_rejected,
        (unsigned long long)ps.rule_failures_allowed);
    act_alert_stats as;
    memset(&as, 0, sizeof as);
    if (s->act) act_get_alert_stats(s->act, &as);
    out(b,
        "# HELP nerve_alerts_suppressed_total Alerts this instance kept quiet inside their throttle "
        "window (per rule, scope and level), by level.\n# TYPE nerve_alerts_suppressed_total counter\n");
    for (int i = 0; i < ACT_LEVEL_COUNT; i++)
        out(b, "nerve_alerts_suppressed_total{level=\"%s\"} %llu\n", act_level_name((act_level)i),
            (unsigned long long)as.suppressed[i]);
    out(b,
        "# HELP nerve_alerts_duplicate_total Alerts not published again because an earlier "
        "delivery of the same stream event already handled them.\n"
        "# TYPE nerve_alerts_duplicate_total counter\nnerve_alerts_duplicate_total %llu\n",
        (unsigned long long)as.duplicates);
}

static void render_killswitch(buf *b, const status_sources *s, rds_client *c) {
    char e2[512];
    if (s->ks) {
        ks_stats kst;
        ks_get_stats(s->ks, &kst);
        out(b,
            "# HELP nerve_control_messages_total Control-channel messages, by result: ok (the named "
            "record re-read), invalid (ignored), error (re-read failed).\n"
            "# TYPE nerve_control_messages_total counter\n"
            "nerve_control_messages_total{result=\"ok\"} %llu\n"
            "nerve_control_messages_total{result=\"invalid\"} %llu\n"
            "nerve_control_messages_total{result=\"error\"} %llu\n",
            (unsigned long long)kst.control_ok, (unsigned long long)kst.control_invalid,
            (unsigned long long)kst.control_error);
        out(b,
            "# HELP nerve_kill_switch_halting Scopes (global, sku:...) this instance halts sales for.\n"
            "# TYPE nerve_kill_switch_halting gauge\nnerve_kill_switch_halting %zu\n",
            kst.halting);
    }
    int redis_up = 0;
    out(b, "# HELP nerve_kill_switch_engaged Kill switch scopes engaged (1), fleet-wide.\n"
           "# TYPE nerve_kill_switch_engaged gauge\n");
    if (c && s->ks) {
        cJSON *arr = ks_list(s->ks, c);
        redis_up = arr != NULL;
        const cJSON *rec;
        int shown = 0;
        cJSON_ArrayForEach(rec, arr) {
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(rec, "scope");
            if (!cJSON_IsString(sc) || shown++ >= 1000) continue;
            out(b, "nerve_kill_switch_engaged{scope=\"%s\"} 1\n",
                esc(sc->valuestring, e2, sizeof e2));
        }
        cJSON_Delete(arr);
    }
    out(b,
        "# HELP nerve_redis_up 1 when Redis answered this scrape.\n# TYPE nerve_redis_up gauge\n"
        "nerve_redis_up %d\n",
        redis_up);
    if (c && rds_is_cluster(c)) {
        rds_cluster_stats cs;
        rds_cluster_get_stats(&cs);
        out(b,
            "# HELP nerve_redis_cluster_redirects_total MOVED and ASK redirects followed "
            "(redis.mode cluster).\n# TYPE nerve_redis_cluster_redirects_total counter\n"
            "nerve_redis_cluster_redirects_total{kind=\"moved\"} %llu\n"
            "nerve_redis_cluster_redirects_total{kind=\"ask\"} %llu\n"
            "# HELP nerve_redis_cluster_map_refreshes_total Slot maps fetched (CLUSTER SLOTS): "
            "installed, or no node answered.\n"
            "# TYPE nerve_redis_cluster_map_refreshes_total counter\n"
            "nerve_redis_cluster_map_refreshes_total{result=\"ok\"} %llu\n"
            "nerve_redis_cluster_map_refreshes_total{result=\"error\"} %llu\n",
            cs.moved, cs.ask, cs.refreshes, cs.refresh_errors);
    }
}

static void render_declog(buf *b, declog *l) {
    declog_stats ds;
    declog_get_stats(l, &ds);
    out(b,
        "# HELP nerve_decision_log_written_total Decision log records (decisions and rule errors) "
        "appended to the decisions stream.\n# TYPE nerve_decision_log_written_total counter\n"
        "nerve_decision_log_written_total %llu\n"
        "# HELP nerve_decision_log_dropped_total Decision log records not written: the queue was "
        "full (decisions.queue_size), out of memory, Redis refused them or was gone at stop.\n"
        "# TYPE nerve_decision_log_dropped_total counter\nnerve_decision_log_dropped_total %llu\n"
        "# HELP nerve_decision_log_queued Decision log records waiting to be written.\n"
        "# TYPE nerve_decision_log_queued gauge\nnerve_decision_log_queued %zu\n",
        (unsigned long long)ds.written, (unsigned long long)ds.dropped, ds.queued);
}

static void render_ledger(buf *b, ledger_writer *w) {
    ledger_writer_stats ls;
    ledger_writer_get_stats(w, &ls);
    out(b,
        "# HELP nerve_ledger_lag_seconds Age of the oldest stream entry the ledger writer read and "
        "has not committed, 0 when caught up.\n# TYPE nerve_ledger_lag_seconds gauge\n"
        "nerve_ledger_lag_seconds %.3f\n",
        (double)ls.lag_ms / 1e3);
    out(b, "# HELP nerve_ledger_rows_total Rows the ledger writer inserted, by table.\n"
           "# TYPE nerve_ledger_rows_total counter\n");
    for (int t = 0; t < LEDGER_TABLES; t++)
        out(b, "nerve_ledger_rows_total{table=\"%s\"} %llu\n", ledger_table_name((ledger_table)t),
            (unsigned long long)ls.rows[t]);
    out(b,
        "# HELP nerve_ledger_entries_total Stream entries the ledger writer committed that made no "
        "new row, by reason.\n# TYPE nerve_ledger_entries_total counter\n"
        "nerve_ledger_entries_total{result=\"duplicate\"} %llu\n"
        "nerve_ledger_entries_total{result=\"ignored\"} %llu\n"
        "nerve_ledger_entries_total{result=\"invalid\"} %llu\n",
        (unsigned long long)ls.duplicates, (unsigned long long)ls.ignored,
        (unsigned long long)ls.invalid);
    out(b,
        "# HELP nerve_ledger_errors_total Failed ledger writes and stream reads (each retried).\n"
        "# TYPE nerve_ledger_errors_total counter\nnerve_ledger_errors_total %llu\n"
        "# HELP nerve_ledger_up 1 when the ledger writer's last database operation succeeded.\n"
        "# TYPE nerve_ledger_up gauge\nnerve_ledger_up %d\n"
        "# HELP nerve_ledger_missed_total Stream entries lost to the ledger: trims found before it "
        "read them (each trim point once) and pending entries trimmed (bus.stream_maxlen).\n"
        "# TYPE nerve_ledger_missed_total counter\nnerve_ledger_missed_total %llu\n",
        (unsigned long long)ls.errors, ls.db_up, (unsigned long long)ls.missed);
}

char *status_metrics(const status_sources *s) {
    buf b = { malloc(16384), 0, 16384, 0 };
    if (!b.p) return NULL;
    b.p[0] = 0;
    render_process(&b);
    render_sale(&b, s);
    if (s->eval) render_eval(&b, s->eval);
    if (s->bus) render_bus(&b, s->bus);
    if (s->q) render_queue(&b, s->q);
    render_rules(&b, s->live);
    if (s->panic) {
        panic_stats ps;
        panic_get_stats(s->panic, &ps);
        out(&b,
            "# HELP nerve_panic_attempts_total Emergency stop webhook attempts, by result.\n"
            "# TYPE nerve_panic_attempts_total counter\n"
            "nerve_panic_attempts_total{result=\"ok\"} %llu\nnerve_panic_attempts_total{result=\"failed\"} %llu\n",
            (unsigned long long)ps.attempts_ok, (unsigned long long)ps.attempts_failed);
    }
    {
        /* Always exported (0 without panic.resume_url), so that an alert on
         * it needs no "absent" case. */
        panic_stats rs;
        panic_get_stats(s->resume, &rs);
        out(&b,
            "# HELP nerve_resume_attempts_total Resume calls (panic.resume_url) after a kill "
            "switch reset, attempts by result.\n"
            "# TYPE nerve_resume_attempts_total counter\n"
            "nerve_resume_attempts_total{result=\"ok\"} %llu\n"
            "nerve_resume_attempts_total{result=\"failed\"} %llu\n"
            "# HELP nerve_resume_calls_total Resume calls after a kill switch reset, by outcome.\n"
            "# TYPE nerve_resume_calls_total counter\n"
            "nerve_resume_calls_total{result=\"resumed\"} %llu\n"
            "nerve_resume_calls_total{result=\"failed\"} %llu\n"
            "nerve_resume_calls_total{result=\"dry_run\"} %llu\n",
            (unsigned long long)rs.attempts_ok, (unsigned long long)rs.attempts_failed,
            (unsigned long long)rs.jobs_stopped, (unsigned long long)rs.jobs_failed,
            (unsigned long long)rs.jobs_dry_run);
    }
    render_actions(&b, s);
    render_declog(&b, s->dlog);
    if (s->ledger) render_ledger(&b, s->ledger);
    render_killswitch(&b, s, s->pool ? rds_pool_client(s->pool) : NULL);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- /readyz ---------------------------------------------------------------------- */

cJSON *status_readyz(const status_sources *s, bool *ready) {
    rds_client *c = s->pool ? rds_pool_client(s->pool) : NULL;
    redisReply *r = c ? rds_command(c, "PING") : NULL;
    int redis_ok = r && r->type == REDIS_REPLY_STATUS;
    cJSON *reasons = cJSON_CreateArray();
    cJSON *o = cJSON_CreateObject();
    if (!reasons || !o) {
        freeReplyObject(r);
        cJSON_Delete(reasons);
        cJSON_Delete(o);
        return NULL;
    }
    char reason[400];
    if (!redis_ok) {
        snprintf(reason, sizeof reason, "redis: %s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str
                 : c                               ? rds_errstr(c)
                                                   : "out of memory");
        cJSON_AddItemToArray(reasons, cJSON_CreateString(reason));
    }
    freeReplyObject(r);
    cJSON_AddBoolToObject(o, "redis", redis_ok);
    if (c && rds_is_cluster(c)) {
        /* A cluster answers PING on a node while slots are uncovered or a
         * primary is down (cluster_state:fail): sales of those slots fail. */
        char cerr[300];
        int cl_ok = rds_cluster_check(c, cerr, sizeof cerr) == 0;
        cJSON_AddBoolToObject(o, "redis_cluster_ok", cl_ok);
        if (!cl_ok) {
            snprintf(reason, sizeof reason, "redis: %s", cerr);
            cJSON_AddItemToArray(reasons, cJSON_CreateString(reason));
        }
    }
    if (s->live) {
        uint64_t gen;
        rules_set *set = live_get(s->live, &gen);
        cJSON_AddBoolToObject(o, "rules_loaded", set != NULL);
        cJSON_AddNumberToObject(o, "rules_generation", (double)gen);
        if (!set) cJSON_AddItemToArray(reasons, cJSON_CreateString("no rules loaded"));
        rules_set_unref(set);
    }
    if (s->q) {
        evq_stats qs;
        evq_get_stats(s->q, &qs);
        uint64_t now = clock_now_ns();
        cJSON *q = cJSON_AddObjectToObject(o, "event_queue");
        cJSON_AddNumberToObject(q, "depth", (double)qs.depth);
        cJSON_AddNumberToObject(q, "capacity", (double)qs.capacity);
        cJSON_AddNumberToObject(q, "dropped", (double)qs.dropped);
        cJSON_AddNumberToObject(q, "oldest_age_seconds",
                                (double)(evq_oldest_age_ns(&qs, now) / 1000000) / 1e3);
        /* Overflowing = dropped an event within the last 10 s. */
        int overflowing = qs.last_drop_ns && now - qs.last_drop_ns < 10000000000ull;
        cJSON_AddBoolToObject(q, "overflowing", overflowing);
        if (overflowing) {
            snprintf(reason, sizeof reason, "event queue overflowing: %llu events dropped",
                     (unsigned long long)qs.dropped);
            cJSON_AddItemToArray(reasons, cJSON_CreateString(reason));
        }
    }
    if (s->eval) {
        /* Events waiting on an evaluator that finishes none: kills are not
         * being decided, so this instance must not look ready. */
        eval_liveness lv;
        eval_get_liveness(s->eval, &lv);
        cJSON *ev = cJSON_AddObjectToObject(o, "evaluator");
        cJSON_AddBoolToObject(ev, "busy", lv.busy);
        cJSON_AddNumberToObject(ev, "busy_seconds", (double)(lv.busy_ns / 1000000) / 1e3);
        cJSON_AddNumberToObject(ev, "last_completed_age_seconds",
                                (double)(lv.since_done_ns / 1000000) / 1e3);
        cJSON_AddNumberToObject(ev, "stall_ms", lv.stall_ms);
        cJSON_AddBoolToObject(ev, "stalled", lv.stalled);
        if (lv.stalled) {
            snprintf(
                reason, sizeof reason,
                "evaluator stalled: %zu events queued (oldest %.1f s), %s, no event finished for %.1f s "
                "(bus.stall_ms=%d)",
                lv.queued, (double)lv.oldest_age_ns / 1e9,
                lv.busy ? "one in evaluation" : "none in evaluation", (double)lv.waiting_ns / 1e9,
                lv.stall_ms);
            cJSON_AddItemToArray(reasons, cJSON_CreateString(reason));
        }
    }
    if (s->bus) {
        bus_stats bs;
        bus_get_stats(s->bus, &bs);
        cJSON_AddBoolToObject(o, "bus_connected", bs.connected);
    }
    cJSON *warnings = cJSON_CreateArray();
    if (s->ledger) {
        /* The ledger behind: sales go on (Redis is the system of record),
         * and this instance says so. As a warning by default, not a reason
         * to be unready: every instance of a fleet shares the ledger
         * database, so a load balancer would drain the whole fleet while
         * every sale still works (ledger.lag_unready makes it a reason). */
        ledger_writer_stats ls;
        ledger_writer_get_stats(s->ledger, &ls);
        cJSON *lj = cJSON_AddObjectToObject(o, "ledger");
        cJSON_AddNumberToObject(lj, "lag_seconds", (double)ls.lag_ms / 1e3);
        cJSON_AddBoolToObject(lj, "up", ls.db_up);
        cJSON_AddNumberToObject(lj, "lag_ready_ms", s->ledger_lag_ready_ms);
        if (s->ledger_lag_ready_ms > 0 && ls.lag_ms > (uint64_t)s->ledger_lag_ready_ms) {
            snprintf(reason, sizeof reason,
                     "ledger lag %.0fs: entries wait in Redis for the ledger database "
                     "(ledger.lag_ready_ms=%d)",
                     (double)ls.lag_ms / 1e3, s->ledger_lag_ready_ms);
            cJSON_AddItemToArray(s->ledger_lag_unready ? reasons : warnings,
                                 cJSON_CreateString(reason));
        }
    }
    if (cJSON_GetArraySize(warnings) > 0)
        cJSON_AddItemToObject(o, "warnings", warnings);
    else
        cJSON_Delete(warnings);
    int ok = cJSON_GetArraySize(reasons) == 0;
    cJSON_AddStringToObject(o, "status", ok ? "ready" : "not_ready");
    if (!ok) {
        const cJSON *first = cJSON_GetArrayItem(reasons, 0);
        cJSON_AddStringToObject(o, "reason",
                                cJSON_IsString(first) ? first->valuestring : "out of memory");
        cJSON_AddItemToObject(o, "reasons", reasons);
    } else {
        cJSON_Delete(reasons);
    }
    *ready = ok;
    return o;
}

/* ---- /rules ----------------------------------------------------------------------- */

cJSON *status_error_lines(const char *text) {
    cJSON *arr = cJSON_CreateArray();
    while (text && *text) {
        const char *nl = strchr(text, '\n');
        size_t n = nl ? (size_t)(nl - text) : strlen(text);
        if (n) {
            char *line = strndup(text, n);
            if (line) cJSON_AddItemToArray(arr, cJSON_CreateString(line));
            free(line);
        }
        text += n + (nl ? 1 : 0);
    }
    return arr;
}

static cJSON *rule_obj(rules_set *set, size_t i) {
    rules_info in;
    rules_stats st;
    if (rules_set_info(set, i, &in) || rules_set_stats(set, i, &st)) return NULL;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "name", in.name);
    cJSON_AddStringToObject(r, "file", in.file);
    if (in.description[0]) cJSON_AddStringToObject(r, "description", in.description);
    cJSON *ch = cJSON_AddArrayToObject(r, "channels");
    for (size_t j = 0; j < in.n_channels; j++)
        cJSON_AddItemToArray(ch, cJSON_CreateString(in.channels[j]));
    cJSON_AddStringToObject(r, "sha256", in.sha256);
    cJSON_AddNumberToObject(r, "fixtures", in.n_fixtures);
    cJSON_AddNumberToObject(r, "evaluations", (double)st.evaluations);
    cJSON_AddNumberToObject(r, "errors", (double)st.errors);
    cJSON *d = cJSON_AddObjectToObject(r, "decisions");
    for (int a = 0; a < RULES_ACTION_COUNT; a++)
        cJSON_AddNumberToObject(d, rules_action_name((rules_action)a), (double)st.decisions[a]);
    cJSON_AddNumberToObject(r, "duration_seconds", (double)st.duration_ns / 1e9);
    return r;
}

int status_rules(const status_sources *s, cJSON **out) {
    *out = NULL;
    if (!s->live) return -1;
    cJSON *o = cJSON_CreateObject();
    if (!o) return 0;
    uint64_t gen;
    rules_set *set = live_get(s->live, &gen);
    cJSON_AddNumberToObject(o, "generation", (double)gen);
    cJSON *arr = cJSON_AddArrayToObject(o, "rules");
    if (set) {
        cJSON_AddStringToObject(o, "sha256", rules_set_sha256(set));
        cJSON_AddNumberToObject(o, "loaded_at", (double)rules_set_loaded_at(set));
        for (size_t i = 0; i < rules_set_count(set); i++) {
            cJSON *r = rule_obj(set, i);
            if (r) cJSON_AddItemToArray(arr, r);
        }
    } else {
        cJSON_AddNullToObject(o, "sha256");
    }
    rules_set_unref(set);
    live_reload lr;
    live_last_reload(s->live, &lr);
    cJSON *last = cJSON_AddObjectToObject(o, "last_reload");
    /* seq: how many attempts so far; `nerve reload` waits for it to move. */
    cJSON_AddNumberToObject(last, "seq", (double)lr.seq);
    if (lr.seq) {
        cJSON_AddStringToObject(last, "result", lr.ok ? "ok" : "failed");
        cJSON_AddNumberToObject(last, "at", (double)lr.at);
        cJSON_AddNumberToObject(last, "generation", (double)lr.generation);
        /* Monotonic µs (this host's CLOCK_MONOTONIC): exact in a double up
         * to 2^53 µs, 285 years of uptime. */
        cJSON_AddNumberToObject(last, "started_mono_us", (double)lr.started_us);
        if (lr.ok) {
            cJSON_AddNumberToObject(last, "rules", (double)lr.rules);
            cJSON_AddStringToObject(last, "sha256", lr.sha256);
        }
        cJSON_AddItemToObject(last, "errors", status_error_lines(lr.errors));
    } else {
        cJSON_AddStringToObject(last, "result", "none");
    }
    free(lr.errors);
    *out = o;
    return 0;
}

/* ---- /killswitch ------------------------------------------------------------------ */

cJSON *status_killswitch(const status_sources *s) {
    rds_client *c = s->pool ? rds_pool_client(s->pool) : NULL;
    cJSON *arr = c && s->ks ? ks_list(s->ks, c) : NULL;
    if (!arr) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        cJSON_Delete(arr);
        return NULL;
    }
    cJSON_AddItemToObject(o, "engaged", arr);
    return o;
}

cJSON *status_decisions(const status_sources *s, const declog_filter *f, char *err, size_t errlen) {
    rds_client *c = s->pool ? rds_pool_client(s->pool) : NULL;
    if (!c || !s->prefix) {
        snprintf(err, errlen, "redis unavailable");
        return NULL;
    }
    size_t scanned = 0;
    cJSON *arr = declog_query(c, s->prefix, f, &scanned, err, errlen);
    if (!arr) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        cJSON_Delete(arr);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int n = cJSON_GetArraySize(arr);
    cJSON_AddItemToObject(o, "decisions", arr);
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "scanned", (double)scanned);
    return o;
}
