/* test_status.c -- the read side (engine/status.c) keeps its contract.
 *
 * GET /metrics, /readyz, /rules and /killswitch moved out of metrics.c and
 * http.c into one module that reads every other module through its getters
 * (issue 10). Dashboards, alerts and README.md name these metrics and
 * fields, so this file pins them: every metric family with its type, in
 * order; the fixed label sets; the exact JSON keys of each view; and that
 * the counters now kept by their owners (sale, live, policy, actions) move
 * with the test's own traffic.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

static h_redis *redis;
static h_daemon *daemon_;

/* Every family, with its TYPE, in exposition order (README.md "Metrics"). */
static const char *const families[] = {
    "nerve_build_info gauge",
    "process_start_time_seconds gauge",
    "nerve_sales_total counter",
    "nerve_sale_duration_seconds histogram",
    "nerve_lock_wait_seconds histogram",
    "nerve_sale_pipeline_commands_total counter",
    "nerve_sale_pipeline_round_trips_total counter",
    "nerve_sale_replication_short_total counter",
    "nerve_events_total counter",
    "nerve_events_invalid_total counter",
    "nerve_events_deferred_total counter",
    "nerve_evaluator_busy_seconds gauge",
    "nerve_evaluator_last_completed_age_seconds gauge",
    "nerve_evaluator_stalled gauge",
    "nerve_bus_messages_total counter",
    "nerve_events_dropped_total counter",
    "nerve_bus_reconnects_total counter",
    "nerve_bus_connected gauge",
    "nerve_bus_pubsub_own_ignored_total counter",
    "nerve_stream_reads_total counter",
    "nerve_stream_entries_total counter",
    "nerve_stream_claimed_total counter",
    "nerve_stream_acked_total counter",
    "nerve_stream_ack_errors_total counter",
    "nerve_stream_dropped_total counter",
    "nerve_stream_pending gauge",
    "nerve_stream_reconnects_total counter",
    "nerve_stream_connected gauge",
    "nerve_stream_trimmed_unread_total counter",
    "nerve_event_queue_depth gauge",
    "nerve_event_queue_oldest_age_seconds gauge",
    "nerve_event_queue_dropped_total counter",
    "nerve_rule_evaluations_total counter",
    "nerve_rule_errors_total counter",
    "nerve_rule_duration_seconds histogram",
    "nerve_decisions_total counter",
    "nerve_rules_generation gauge",
    "nerve_rules_loaded gauge",
    "nerve_reloads_total counter",
    "nerve_panic_attempts_total counter",
    "nerve_resume_attempts_total counter",
    "nerve_resume_calls_total counter",
    "nerve_sale_rule_failures_total counter",
    "nerve_alerts_suppressed_total counter",
    "nerve_alerts_duplicate_total counter",
    "nerve_decision_log_written_total counter",
    "nerve_decision_log_dropped_total counter",
    "nerve_decision_log_queued gauge",
    "nerve_ledger_lag_seconds gauge",
    "nerve_ledger_rows_total counter",
    "nerve_ledger_entries_total counter",
    "nerve_ledger_errors_total counter",
    "nerve_ledger_up gauge",
    "nerve_ledger_missed_total counter",
    "nerve_control_messages_total counter",
    "nerve_kill_switch_halting gauge",
    "nerve_kill_switch_engaged gauge",
    "nerve_redis_up gauge",
};

/* Series whose labels are fixed (not per rule, channel or scope). */
static const char *const fixed_series[] = {
    "nerve_sales_total{result=\"ok\"}",
    "nerve_sales_total{result=\"duplicate\"}",
    "nerve_sales_total{result=\"out_of_stock\"}",
    "nerve_sales_total{result=\"rejected\"}",
    "nerve_sales_total{result=\"halted\"}",
    "nerve_sales_total{result=\"unavailable\"}",
    "nerve_sales_total{result=\"bad_request\"}",
    "nerve_sale_duration_seconds_bucket{le=\"0.0001\"}",
    "nerve_sale_duration_seconds_bucket{le=\"2.5\"}",
    "nerve_sale_duration_seconds_bucket{le=\"+Inf\"}",
    "nerve_sale_duration_seconds_sum",
    "nerve_sale_duration_seconds_count",
    "nerve_lock_wait_seconds_bucket{le=\"0.001\"}",
    "nerve_lock_wait_seconds_bucket{le=\"+Inf\"}",
    "nerve_lock_wait_seconds_sum",
    "nerve_lock_wait_seconds_count",
    "nerve_events_dropped_total{reason=\"oversized\"}",
    "nerve_events_dropped_total{reason=\"queue_full\"}",
    "nerve_stream_dropped_total{reason=\"no_event\"}",
    "nerve_stream_dropped_total{reason=\"oversized\"}",
    "nerve_stream_dropped_total{reason=\"deleted\"}",
    "nerve_reloads_total{result=\"ok\"}",
    "nerve_reloads_total{result=\"failed\"}",
    "nerve_panic_attempts_total{result=\"ok\"}",
    "nerve_panic_attempts_total{result=\"failed\"}",
    "nerve_sale_rule_failures_total{outcome=\"rejected\"}",
    "nerve_sale_rule_failures_total{outcome=\"allowed\"}",
    "nerve_alerts_suppressed_total{level=\"info\"}",
    "nerve_alerts_suppressed_total{level=\"warning\"}",
    "nerve_alerts_suppressed_total{level=\"critical\"}",
    "nerve_alerts_suppressed_total{level=\"fatal\"}",
    "nerve_alerts_suppressed_total{level=\"other\"}",
    "nerve_ledger_rows_total{table=\"sales\"}",
    "nerve_ledger_rows_total{table=\"stock_changes\"}",
    "nerve_ledger_rows_total{table=\"kills\"}",
    "nerve_ledger_rows_total{table=\"alerts\"}",
    "nerve_ledger_entries_total{result=\"duplicate\"}",
    "nerve_ledger_entries_total{result=\"ignored\"}",
    "nerve_ledger_entries_total{result=\"invalid\"}",
    "nerve_control_messages_total{result=\"ok\"}",
    "nerve_control_messages_total{result=\"invalid\"}",
    "nerve_control_messages_total{result=\"error\"}",
};

/* 1 when TEXT has a line that starts with SERIES followed by a space. */
static int has_series(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return 1;
    return 0;
}

static void test_metric_families(void **state)
{
    (void)state;
    char *text = H_METRICS(daemon_);
    /* The "# TYPE" lines, in order, are exactly the list. */
    size_t i = 0, nf = sizeof families / sizeof *families;
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, "# TYPE ", 7) != 0)
            continue;
        const char *e = strchr(p, '\n');
        int len = e ? (int)(e - p - 7) : (int)strlen(p + 7);
        if (i >= nf)
            fail_msg("unexpected family after the last one: %.*s", len, p + 7);
        if ((int)strlen(families[i]) != len || strncmp(p + 7, families[i], (size_t)len) != 0)
            fail_msg("family %zu: want \"%s\", got \"%.*s\"", i, families[i], len, p + 7);
        i++;
    }
    if (i != nf)
        fail_msg("%zu families, want %zu (first missing: %s)", i, nf, families[i]);
    for (size_t k = 0; k < sizeof fixed_series / sizeof *fixed_series; k++)
        if (!has_series(text, fixed_series[k]))
            fail_msg("no series %s in /metrics", fixed_series[k]);
    free(text);
    h_pass();
}

/* Counters kept by their owners move with this test's traffic: sales by
 * result (sale), the lock wait per batch (sale), reloads (live). */
static void test_counters_move(void **state)
{
    (void)state;
    char *before = H_METRICS(daemon_);
    H_SET_STOCK(daemon_, "st-1", 3);
    h_resp r;
    assert_int_equal(h_sale(daemon_, "/sale", "st-1", 1, "st-o1", &r), 200);
    h_resp_free(&r);
    assert_int_equal(h_sale(daemon_, "/sale", "st-1", 1, "st-o1", &r), 200);     /* duplicate */
    h_resp_free(&r);
    assert_int_equal(h_sale(daemon_, "/sale", "st-1", 9, NULL, &r), 409);
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "POST", "/sale", "{\"sku\":", &r, NULL), 400);
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "POST", "/admin/reload", NULL, &r, AUTH, NULL), 200);
    h_resp_free(&r);
    char *after = H_METRICS(daemon_);

    static const struct {
        const char *name, *label;
        double delta;
    } want[] = {
        { "nerve_sales_total", "result=\"ok\"", 1 },
        { "nerve_sales_total", "result=\"duplicate\"", 1 },
        { "nerve_sales_total", "result=\"out_of_stock\"", 1 },
        { "nerve_sales_total", "result=\"bad_request\"", 1 },
        { "nerve_sales_total", "result=\"unavailable\"", 0 },
        { "nerve_sale_duration_seconds_count", NULL, 4 },
        { "nerve_lock_wait_seconds_count", NULL, 3 },    /* three batches reached the lock */
        { "nerve_reloads_total", "result=\"ok\"", 1 },
        { "nerve_reloads_total", "result=\"failed\"", 0 },
        { "nerve_rules_generation", NULL, 1 },
    };
    /* Three commits through the shared pipelines, one after the other
     * (plus the commit script's SCRIPT LOAD when these are the daemon's
     * first): a round trip each. */
    double c0 = h_metric(before, "nerve_sale_pipeline_commands_total", NULL),
           c1 = h_metric(after, "nerve_sale_pipeline_commands_total", NULL),
           t0 = h_metric(before, "nerve_sale_pipeline_round_trips_total", NULL),
           t1 = h_metric(after, "nerve_sale_pipeline_round_trips_total", NULL);
    if (c0 < 0 || t0 < 0 || c1 - c0 < 3 || c1 - c0 > 4 || t1 - t0 < 3 || t1 - t0 > c1 - c0)
        fail_msg("pipeline commands %g -> %g, round trips %g -> %g: want +3 or +4 commands in as "
                 "many round trips",
                 c0, c1, t0, t1);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        double a = h_metric(before, want[i].name, want[i].label);
        double b = h_metric(after, want[i].name, want[i].label);
        if (a < 0 || b < 0 || b - a != want[i].delta)
            fail_msg("%s{%s}: %g -> %g, want +%g", want[i].name, want[i].label ? want[i].label : "", a, b,
                     want[i].delta);
    }
    assert_true(h_metric(after, "nerve_redis_up", NULL) == 1);
    assert_true(h_metric(after, "nerve_rules_loaded", NULL) >= 1);
    free(before);
    free(after);
    h_pass();
}

/* nerve_build_info carries the version `nerve --version` prints;
 * process_start_time_seconds is this daemon's start (before this test, not
 * long before), the same on every scrape. */
static void test_build_info(void **state)
{
    (void)state;
    h_run run;
    const char *const args[] = { "--version", NULL };
    assert_int_equal(h_run_nerve(&run, 10000, NULL, args), 0);
    char version[64] = "", series[128];
    if (sscanf(run.out, "nerve %63s", version) != 1)
        fail_msg("nerve --version printed \"%s\"", run.out);
    h_run_free(&run);
    snprintf(series, sizeof series, "nerve_build_info{version=\"%s\"}", version);
    char *a = H_METRICS(daemon_);
    if (!has_series(a, series))
        fail_msg("no series %s in /metrics", series);
    assert_true(h_metric(a, "nerve_build_info", NULL) == 1);
    double start = h_metric(a, "process_start_time_seconds", NULL);
    double now = (double)time(NULL);
    if (!(start > now - 600 && start <= now + 1))
        fail_msg("process_start_time_seconds %.2f, now %.0f: not this daemon's start", start, now);
    char *b = H_METRICS(daemon_);
    assert_true(h_metric(b, "process_start_time_seconds", NULL) == start);
    free(a);
    free(b);
    h_pass();
}

/* The JSON views keep their fields. */
static void test_json_views(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_http(daemon_, "GET", "/readyz", NULL, &r, NULL), 200);
    H_ASSERT_JSON(&r);
    assert_true(h_jkeys(r.json, "redis", "rules_loaded", "rules_generation", "event_queue", "evaluator",
                        "bus_connected", "ledger", "status", NULL));
    assert_string_equal(h_jstr(r.json, "status"), "ready");
    assert_true(h_jkeys(cJSON_GetObjectItem(r.json, "event_queue"), "depth", "capacity", "dropped",
                        "oldest_age_seconds", "overflowing", NULL));
    assert_true(h_jkeys(cJSON_GetObjectItem(r.json, "evaluator"), "busy", "busy_seconds",
                        "last_completed_age_seconds", "stall_ms", "stalled", NULL));
    assert_true(h_jkeys(cJSON_GetObjectItem(r.json, "ledger"), "lag_seconds", "up", "lag_ready_ms",
                        NULL));
    h_resp_free(&r);

    assert_int_equal(h_http(daemon_, "GET", "/rules", NULL, &r, NULL), 200);
    H_ASSERT_JSON(&r);
    assert_true(h_jkeys(r.json, "generation", "rules", "sha256", "loaded_at", "last_reload", NULL));
    const cJSON *rule = cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "rules"), 0);
    assert_non_null(rule);
    assert_true(h_jkeys(rule, "name", "file", "description", "channels", "sha256", "fixtures", "evaluations",
                        "errors", "decisions", "duration_seconds", NULL));
    assert_true(h_jkeys(cJSON_GetObjectItem(rule, "decisions"), "alert", "kill", "reject", NULL));
    h_resp_free(&r);

    assert_int_equal(h_http(daemon_, "GET", "/killswitch", NULL, &r, NULL), 200);
    H_ASSERT_JSON(&r);
    assert_true(h_jkeys(r.json, "engaged", NULL));
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(r.json, "engaged")));
    h_resp_free(&r);
    h_pass();
}

/* Redis gone: /readyz says why (503), /killswitch answers 503, /metrics
 * still answers with nerve_redis_up 0. */
static void test_views_without_redis(void **state)
{
    (void)state;
    assert_int_equal(h_redis_pause(redis), 0);
    h_resp r;
    assert_int_equal(h_http(daemon_, "GET", "/readyz", NULL, &r, NULL), 503);
    H_ASSERT_JSON(&r);
    assert_string_equal(h_jstr(r.json, "status"), "not_ready");
    assert_int_equal(h_jbool(r.json, "redis"), 0);
    const char *reason = h_jstr(r.json, "reason");
    assert_non_null(reason);
    assert_true(strncmp(reason, "redis: ", 7) == 0);
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(r.json, "reasons")));
    h_resp_free(&r);
    assert_int_equal(h_http(daemon_, "GET", "/killswitch", NULL, &r, NULL), 503);
    H_ASSERT_ERROR(&r, 503, "unavailable");
    h_resp_free(&r);
    char *text = H_METRICS(daemon_);
    assert_true(h_metric(text, "nerve_redis_up", NULL) == 0);
    free(text);
    assert_int_equal(h_redis_resume(redis), 0);
    double dl = h_deadline(5000);
    long st = 0;
    while (h_before(dl)) {
        st = h_http(daemon_, "GET", "/readyz", NULL, &r, NULL);
        h_resp_free(&r);
        if (st == 200)
            break;
        h_nap();
    }
    assert_int_equal(st, 200);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_metric_families),
        T(test_counters_move),
        T(test_build_info),
        T(test_json_views),
        T(test_views_without_redis),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
