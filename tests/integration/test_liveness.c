/* test_liveness.c -- a slow or stuck evaluator is visible (issue 9, item 3).
 *
 * Finding: a rule that never returned left the evaluator thread at 99 % CPU;
 * stock events queued behind it, no kill was engaged, and /readyz stayed
 * ready. Now:
 *   1. the queue knows how long its oldest item has waited (unit level, on
 *      the queue itself, with synthetic clocks: no timing involved);
 *   2. events queued behind evaluations that take longer than bus.stall_ms
 *      turn /readyz 503 with reason "evaluator stalled" and the numbers, and
 *      /metrics shows the queue depth, the oldest event's age, the busy
 *      evaluator and the stall; once the events drain /readyz is 200 again
 *      by itself and the gauges are back to 0;
 *   3. an evaluator idle for longer than bus.stall_ms is not "stalled" by the
 *      next event that takes less than bus.stall_ms.
 *
 * The slow rule burns CPU for the event's "ms" (os.clock), bounded by the rule
 * itself, with rules.eval_timeout_ms and rules.instruction_limit set high
 * enough that no limit cuts it.
 */
#include "harness.h"

#include "nerve/clock.h"
#include "nerve/queue.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHANNEL "slow_events"
#define STALL_MS 300
#define SLOW_EVENTS 5
#define SLOW_MS 800             /* each: well over STALL_MS */
#define QUICK_MS 100            /* well under STALL_MS */

static h_redis *redis;

static const char *const SLOW_RULE =
    "return {\n"
    "  name = \"slow\",\n"
    "  on = { \"" CHANNEL "\" },\n"
    "  evaluate = function(e)\n"
    "    local t = os.clock()\n"
    "    while os.clock() - t < e.ms / 1000 do end\n"
    "  end,\n"
    "}\n";

static h_daemon *start_daemon(void)
{
    static char rset[PATH_MAX + 32];
    if (rset[0] == '\0')
        H_RULES_DIR("liveness-rules", "slow.lua", SLOW_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = {
        rset, "bus.channels=[" CHANNEL "]", "bus.stall_ms=" H_STR(STALL_MS),
        "rules.eval_timeout_ms=5000", "rules.instruction_limit=1000000000",
    };
    h_daemon *d = h_daemon_startv(redis, true, sets, sizeof sets / sizeof sets[0]);
    assert_non_null(d);
    H_WAIT_SUBSCRIBERS(redis, CHANNEL, 1);
    return d;
}

static void publish_ms(int ms)
{
    char msg[64];
    snprintf(msg, sizeof msg, "{\"ms\":%d}", ms);
    assert_int_equal(h_publish(redis, CHANNEL, msg), 1);
}

/* A number at KEY of object O (any, not only integral), -1 when absent. */
static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static double metric(const h_daemon *d, const char *name)
{
    char *text = H_METRICS(d);
    double v = h_metric(text, name, NULL);
    free(text);
    return v;
}

/* --- 1. the queue's oldest age --------------------------------------------- */

static void test_queue_oldest_age(void **state)
{
    (void)state;
    evq *q = evq_new(4);
    assert_non_null(q);
    evq_stats st;
    evq_get_stats(q, &st);
    assert_int_equal(st.depth, 0);
    assert_true(st.oldest_enq_ns == 0);
    assert_true(evq_oldest_age_ns(&st, clock_now_ns()) == 0);

    uint64_t before = clock_now_ns();
    assert_int_equal(evq_push(q, "c", "{\"a\":1}", 7), 0);
    assert_int_equal(evq_push(q, "c", "{\"b\":2}", 7), 0);
    uint64_t after = clock_now_ns();
    evq_get_stats(q, &st);
    assert_int_equal(st.depth, 2);
    assert_true(st.oldest_enq_ns >= before && st.oldest_enq_ns <= after);
    /* The age is measured at the caller's clock: one second later, 1 s more. */
    uint64_t first = st.oldest_enq_ns;
    assert_true(evq_oldest_age_ns(&st, first + 1000000000u) == 1000000000u);
    assert_true(evq_oldest_age_ns(&st, first - 1) == 0);       /* never negative */

    /* FIFO: popping the head makes the second item the oldest. */
    evq_item it;
    assert_int_equal(evq_pop(q, &it, 0), EVQ_GOT);
    assert_true(it.enq_ns == first);
    assert_string_equal(it.data, "{\"a\":1}");
    evq_item_free(&it);
    evq_get_stats(q, &st);
    assert_int_equal(st.depth, 1);
    assert_true(st.oldest_enq_ns >= first && st.oldest_enq_ns <= after);
    uint64_t second = st.oldest_enq_ns;
    assert_int_equal(evq_pop(q, &it, 0), EVQ_GOT);
    assert_true(it.enq_ns == second);
    evq_item_free(&it);
    evq_get_stats(q, &st);
    assert_int_equal(st.depth, 0);
    assert_true(st.oldest_enq_ns == 0);
    assert_true(evq_oldest_age_ns(&st, second + 5000000000u) == 0);
    evq_free(q);
    h_pass();
}

/* --- 2. a stalled evaluator turns /readyz 503, and back --------------------- */

static void test_stall_visible_and_recovers(void **state)
{
    (void)state;
    h_daemon *d = start_daemon();
    h_resp r = { 0 };
    assert_int_equal(h_http(d, "GET", "/readyz", NULL, &r, NULL), 200);
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(r.json, "evaluator");
    assert_true(cJSON_IsObject(ev));
    assert_int_equal(h_jbool(ev, "stalled"), 0);
    assert_int_equal(h_jbool(ev, "busy"), 0);
    long long stall_ms = 0;
    assert_true(h_jll(ev, "stall_ms", &stall_ms));
    assert_int_equal(stall_ms, STALL_MS);
    h_resp_free(&r);
    assert_true(metric(d, "nerve_evaluator_stalled") == 0);
    assert_true(metric(d, "nerve_event_queue_oldest_age_seconds") == 0);

    double t0 = h_now();
    for (int i = 0; i < SLOW_EVENTS; i++)
        publish_ms(SLOW_MS);

    /* While they run: /readyz 503 "evaluator stalled" with events queued, and
     * the gauges say so. Polled alternately, as the windows come and go. */
    bool seen_503 = false, seen_depth = false, seen_busy = false, seen_stalled_gauge = false;
    char reason[512] = "";
    double first_503 = 0;
    double dl = h_deadline(SLOW_EVENTS * SLOW_MS * 3);
    while (!(seen_503 && seen_depth && seen_busy && seen_stalled_gauge) && h_before(dl)) {
        long st = h_http(d, "GET", "/readyz", NULL, &r, NULL);
        if (st == 503) {
            const char *why = h_jstr(r.json, "reason");
            assert_non_null(why);
            if (strncmp(why, "evaluator stalled", 17) != 0)
                fail_msg("/readyz 503 for another reason: %s", r.body);
            const cJSON *q = cJSON_GetObjectItemCaseSensitive(r.json, "event_queue");
            ev = cJSON_GetObjectItemCaseSensitive(r.json, "evaluator");
            assert_int_equal(h_jbool(ev, "stalled"), 1);
            if (!seen_503 && jnum(q, "depth") > 0) {
                assert_true(jnum(q, "oldest_age_seconds") > 0);
                assert_true(strstr(why, "events queued") != NULL);
                assert_true(strstr(why, "bus.stall_ms=" H_STR(STALL_MS)) != NULL);
                snprintf(reason, sizeof reason, "%s", why);
                first_503 = h_now() - t0;
                seen_503 = true;
            }
        } else {
            assert_int_equal(st, 200);
        }
        h_resp_free(&r);
        char *text = H_METRICS(d);
        if (h_metric(text, "nerve_event_queue_depth", NULL) > 0 &&
            h_metric(text, "nerve_event_queue_oldest_age_seconds", NULL) > 0)
            seen_depth = true;
        if (h_metric(text, "nerve_evaluator_busy_seconds", NULL) > 0)
            seen_busy = true;
        if (h_metric(text, "nerve_evaluator_stalled", NULL) == 1)
            seen_stalled_gauge = true;
        free(text);
        h_nap();
    }
    if (!seen_503)
        fail_msg("/readyz never answered 503 \"evaluator stalled\" with events queued");
    assert_true(seen_depth);
    assert_true(seen_busy);
    assert_true(seen_stalled_gauge);
    printf("# /readyz 503 %.2f s after publishing: %s\n", first_503, reason);

    /* Drained: 200 again by itself, gauges back to 0, every event evaluated. */
    dl = h_deadline(SLOW_EVENTS * SLOW_MS * 4 + 5000);
    while (h_rule_stat(d, "slow", "evaluations") < SLOW_EVENTS && h_before(dl))
        h_nap();
    assert_int_equal(h_rule_stat(d, "slow", "evaluations"), SLOW_EVENTS);
    assert_int_equal(h_rule_stat(d, "slow", "errors"), 0);
    dl = h_deadline(5000);
    while (h_http(d, "GET", "/readyz", NULL, &r, NULL) != 200 && h_before(dl)) {
        h_resp_free(&r);
        h_nap();
    }
    if (r.status != 200)
        fail_msg("/readyz did not recover after the events drained: %ld %s", r.status, r.body);
    printf("# /readyz 200 again %.2f s after publishing\n", h_now() - t0);
    h_resp_free(&r);
    char *text = H_METRICS(d);
    assert_true(h_metric(text, "nerve_event_queue_depth", NULL) == 0);
    assert_true(h_metric(text, "nerve_event_queue_oldest_age_seconds", NULL) == 0);
    assert_true(h_metric(text, "nerve_evaluator_busy_seconds", NULL) == 0);
    assert_true(h_metric(text, "nerve_evaluator_stalled", NULL) == 0);
    assert_true(h_metric(text, "nerve_evaluator_last_completed_age_seconds", NULL) >= 0);
    free(text);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 3. idle is not stalled -------------------------------------------------- */

static void test_idle_then_quick_event_not_stalled(void **state)
{
    (void)state;
    h_daemon *d = start_daemon();
    /* Idle longer than bus.stall_ms: nothing finished since the start. */
    double dl = h_deadline(10000);
    while (metric(d, "nerve_evaluator_last_completed_age_seconds") < 2.0 * STALL_MS / 1000 && h_before(dl))
        h_nap();
    assert_true(metric(d, "nerve_evaluator_last_completed_age_seconds") >= 2.0 * STALL_MS / 1000);

    /* An event shorter than bus.stall_ms: ready throughout. Counting "since
     * the last completion" alone would answer 503 while it runs. */
    publish_ms(QUICK_MS);
    h_resp r = { 0 };
    int polls = 0;
    dl = h_deadline(10000);
    while (h_rule_stat(d, "slow", "evaluations") < 1 && h_before(dl)) {
        long st = h_http(d, "GET", "/readyz", NULL, &r, NULL);
        if (st != 200)
            fail_msg("/readyz %ld during a %d ms evaluation after idling: %s", st, QUICK_MS, r.body);
        h_resp_free(&r);
        polls++;
    }
    assert_int_equal(h_rule_stat(d, "slow", "evaluations"), 1);
    printf("# /readyz polled %d times during the quick evaluation: always 200\n", polls);
    assert_true(metric(d, "nerve_evaluator_last_completed_age_seconds") < 2.0 * STALL_MS / 1000);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_queue_oldest_age),
        T(test_stall_visible_and_recovers),
        T(test_idle_then_quick_event_not_stalled),
    };
    h_group_use(&redis, NULL, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
