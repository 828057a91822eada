/* test_killswitch.c -- rule decisions end to end (SPEC §7, §8): a kill
 * decision engages the fleet-wide kill switch once, runs the emergency stop
 * against a real (mock) webhook with backoff and jitter, records the outcome,
 * and halts sales only when it says so; alerts are throttled; the bus
 * survives a Redis restart; a runaway rule never takes the daemon down.
 *
 * Everything runs against a real redis-server and the real daemon. Rules are
 * this file's own, written into the temp dir, so that tuning of the shipped
 * rules never changes what is tested. The test's own hiredis connection
 * subscribes to system_alerts to see what the daemon publishes.
 *
 * The daemons here are started by start_nerve() below, over
 * h_daemon_start_env(): the harness strips NERVE_PANIC_TOKEN from the
 * child's environment unless asked to set it, and the emergency stop must be
 * seen to send `Authorization: Bearer $NERVE_PANIC_TOKEN`.
 */
#include "harness.h"

#include "nerve/keys.h"
#include "nerve/killswitch.h"
#include "nerve/rds.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PANIC_TOKEN "e2e-panic-token"
#define ALERTS "system_alerts"
#define CHANNELS "bus.channels=[inventory_events,sales_events,financial_events,test_events,loop_events]"

static h_redis *redis;
static mock_server *hook;       /* the group's mock webhook */
static char hook_set[160];      /* "panic.webhook_url=<hook>" */

/* --- small helpers -------------------------------------------------------- */

/* Poll until rule NAME's FIELD reaches WANT; fails the test after MS. */
static void wait_rule_stat(const h_daemon *d, const char *name, const char *field,
                           long long want, int ms)
{
    double dl = h_deadline(ms);
    long long v = -1;
    while (h_before(dl)) {
        v = h_rule_stat(d, name, field);
        if (v >= want)
            break;
        h_nap();
    }
    if (v != want)
        fail_msg("GET /rules: rule %s %s: expected %lld, got %lld", name, field, want, v);
}

/* Every entry of the inventory_events streams (partitions and ingest): the
 * events a daemon of a fresh redis evaluates there, each once. */
static long long inventory_entries(void)
{
    char **keys = NULL;
    size_t n = 0;
    if (keys_streams_of(H_PREFIX, H_PARTITIONS, "inventory_events", &keys, &n) != 0)
        fail_msg("keys_streams_of failed");
    long long sum = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *rep = h_redis_cmd(redis, "XLEN %s", keys[i]);
        if (rep && rep->type == REDIS_REPLY_INTEGER)
            sum += rep->integer;
        if (rep)
            freeReplyObject(rep);
    }
    keys_streams_free(keys, n);
    return sum;
}

/* POST /sale {"sku","qty":1[,"unit_price"]} (PRICE < 0: none). */
static long sell(const h_daemon *d, const char *sku, double price, h_resp *r)
{
    char body[256];
    if (price < 0)
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1}", sku);
    else
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1,\"unit_price\":%g}", sku, price);
    return h_http(d, "POST", "/sale", body, r, NULL);
}

static void expect_sale_ok(const h_daemon *d, const char *sku, double price, long long remaining)
{
    h_resp r;
    sell(d, sku, price, &r);
    long long left = -1;
    if (r.status != 200 || !h_jll(r.json, "stock_remaining", &left) || left != remaining)
        fail_msg("sale of %s: expected 200 with stock_remaining %lld, got %ld %s %s", sku,
                 remaining, r.status, r.body, r.err);
    h_resp_free(&r);
}


/* --- daemons with NERVE_PANIC_TOKEN ---------------------------------------- */

/* Start `nerve serve` against R with the overrides SETS (NULL-terminated),
 * both tokens in its environment; wait for /healthz. Fails the test when it
 * does not come up. Stopped by the test, or by the teardown when it failed. */
static h_daemon *start_nerve_on(const h_redis *r, const char *const *sets)
{
    static const char *const env[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN,
                                       "NERVE_PANIC_TOKEN=" PANIC_TOKEN, NULL };
    size_t n = 0;
    while (sets[n])
        n++;
    h_daemon *d = h_daemon_start_env(r, env, sets, n);
    if (d == NULL)
        fail_msg("could not start %s (see above)", h_nerve_bin());
    return d;
}

static h_daemon *start_nerve(const char *const *sets)
{
    return start_nerve_on(redis, sets);
}

static int setup(void **state)
{
    h_hook_reset(hook);
    return h_test_setup(state);
}

static int teardown(void **state)
{
    int rc = h_test_teardown(state);    /* stops the daemons a failed test left */
    /* A delayed answer in flight must not outlive the test's daemons. */
    mock_set_script(hook, NULL, 0, 200);
    mock_set_delay_ms(hook, 0);
    return rc;
}

/* --- rules ------------------------------------------------------------------ */

static const char *const INVENTORY_RULE =
    "return {\n"
    "  name = \"e2e_inventory\",\n"
    "  on = { \"inventory_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    local crit = ctx.params.inventory.critical_threshold\n"
    "    if event.type == \"stock_changed\" and type(event.stock_remaining) == \"number\"\n"
    "       and event.stock_remaining <= crit then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku, halt_sales = false,\n"
    "               reason = string.format(\"stock of %s is %d\", event.sku,\n"
    "                                      math.floor(event.stock_remaining)) }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const MIN_PRICE_RULE =
    "return {\n"
    "  name = \"e2e_min_price\",\n"
    "  on = { \"sales_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.type == \"sale\" and type(event.unit_price) == \"number\"\n"
    "       and event.unit_price < 1 then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku, halt_sales = true,\n"
    "               reason = \"unit price under 1: pricing error\" }\n"
    "    end\n"
    "  end,\n"
    "}\n";

/* {"kill": SCOPE[, "halt": true]} on test_events engages SCOPE. */
static const char *const KILLER_RULE =
    "return {\n"
    "  name = \"e2e_killer\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if type(event.kill) == \"string\" then\n"
    "      return { action = \"kill\", scope = event.kill, halt_sales = event.halt == true,\n"
    "               reason = \"test event asked to kill \" .. event.kill }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const ALERT_EVERY_RULE =
    "return {\n"
    "  name = \"e2e_alert_every\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"warning\", scope = \"throttle:t5\",\n"
    "             reason = \"event \" .. tostring(event.n) }\n"
    "  end,\n"
    "}\n";

/* --- 1. inventory under the critical threshold ------------------------------ */

static void test_inventory_kill_once(void **state)
{
    (void)state;
    const char *sku = "ks-inv-1", *scope = "sku:ks-inv-1";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-inventory", "inventory.lua", INVENTORY_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, hook_set, CHANNELS, "rules.params.inventory.critical_threshold=5",
                           "panic.max_attempts=3", "panic.backoff_initial_ms=50", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "inventory_events", 1);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);
    H_SET_STOCK(d, sku, 8);

    /* 8 -> 5: the third sale reaches the threshold. */
    for (long long left = 7; left >= 5; left--)
        expect_sale_ok(d, sku, -1, left);
    cJSON *rec = H_WAIT_KILL(redis, scope, NULL, 5000);
    cJSON_Delete(rec);
    H_SUB_WAIT(alerts, "kill_switch", scope, 1, 5000);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);

    /* The last units still sell (halt_sales=false), then 409. */
    for (long long left = 4; left >= 0; left--)
        expect_sale_ok(d, sku, -1, left);
    h_resp r;
    sell(d, sku, -1, &r);
    H_ASSERT_ERROR(&r, 409, "out_of_stock");
    h_resp_free(&r);

    /* Every stock_changed (the admin set, the seeds, 7..0) evaluated, each
     * once (the streams' entries); six of them said kill; still one
     * engagement, one alert, one webhook call. */
    wait_rule_stat(d, "e2e_inventory", "evaluations", inventory_entries(), 5000);
    rec = H_WAIT_KILL(redis, scope, "stopped", 5000);
    H_SUB_PUMP(alerts, 300);
    assert_int_equal(h_sub_count(alerts, "kill_switch", scope), 1);
    assert_int_equal(mock_requests(hook), 1);

    const cJSON *a = h_sub_find(alerts, "kill_switch", scope, 0, NULL);
    assert_string_equal(h_jstr(a, "level"), "critical");
    assert_string_equal(h_jstr(a, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(a, "reason"), "stock of ks-inv-1 is 5");

    /* The webhook: one POST {"scope","reason","rule","ts"} with the token. */
    const mock_req *q = mock_request(hook, 0);
    assert_non_null(q);
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->path, "/hook");
    assert_non_null(q->authorization);
    assert_string_equal(q->authorization, "Bearer " PANIC_TOKEN);
    assert_non_null(q->content_type);
    assert_true(strncmp(q->content_type, "application/json", 16) == 0);
    cJSON *body = cJSON_Parse(q->body);
    if (!h_jkeys(body, "scope", "reason", "rule", "ts", NULL))
        fail_msg("webhook body: expected exactly scope, reason, rule, ts; got %s", q->body);
    assert_string_equal(h_jstr(body, "scope"), scope);
    assert_string_equal(h_jstr(body, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(body, "reason"), "stock of ks-inv-1 is 5");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(body, "ts");
    assert_true(cJSON_IsNumber(ts));
    double now = (double)time(NULL);
    if (ts->valuedouble < now - 60 || ts->valuedouble > now + 5)
        fail_msg("webhook ts %f is not the time of the kill (now %f)", ts->valuedouble, now);
    cJSON_Delete(body);

    /* The record. */
    assert_string_equal(h_jstr(rec, "scope"), scope);
    assert_string_equal(h_jstr(rec, "rule"), "e2e_inventory");
    assert_string_equal(h_jstr(rec, "reason"), "stock of ks-inv-1 is 5");
    assert_int_equal(h_jbool(rec, "halt_sales"), 0);
    const char *inst = h_jstr(rec, "instance");
    assert_true(inst && *inst);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rec, "ts")));
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 1);
    cJSON_Delete(rec);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 2. a pricing error halts the SKU's sales -------------------------------- */

static void test_min_price_halts_sales(void **state)
{
    (void)state;
    const char *sku = "ks-price-1", *other = "ks-price-2", *scope = "sku:ks-price-1";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-price", "price.lua", MIN_PRICE_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "panic.dry_run=true", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "sales_events", 1);
    H_SET_STOCK(d, sku, 10);
    H_SET_STOCK(d, other, 10);

    expect_sale_ok(d, sku, 2.5, 9);         /* a sane price: nothing happens */
    expect_sale_ok(d, sku, 0.5, 8);         /* the sale itself goes through */
    cJSON *rec = H_WAIT_KILL(redis, scope, NULL, 5000);
    assert_int_equal(h_jbool(rec, "halt_sales"), 1);
    assert_string_equal(h_jstr(rec, "rule"), "e2e_min_price");
    cJSON_Delete(rec);

    h_resp r;
    sell(d, sku, -1, &r);
    H_ASSERT_ERROR(&r, 423, "sales_halted");
    const char *sc = h_jstr(r.json, "scope");
    if (sc == NULL || strcmp(sc, scope) != 0)
        fail_msg("423 body: expected \"scope\":\"%s\", got %s", scope, r.body);
    h_resp_free(&r);
    expect_sale_ok(d, other, -1, 9);        /* another SKU still sells */
    assert_int_equal(H_GET_STOCK(d, sku), 8);

    /* dry run: recorded as such, never a webhook */
    rec = H_WAIT_KILL(redis, scope, "dry_run", 5000);
    cJSON_Delete(rec);

    /* Reset needs the token. */
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r, NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    H_ASSERT_JSON(&r);
    h_resp_free(&r);
    cJSON *gone = h_kill_record(redis, scope);
    assert_null(gone);

    /* The SKU sells again (poll: other instances learn it over the bus). */
    double dl = h_deadline(5000);
    long st = 0;
    while (h_before(dl)) {
        st = sell(d, sku, -1, &r);
        if (st != 423)
            break;
        h_resp_free(&r);
        h_nap();
    }
    if (st != 200)
        fail_msg("after DELETE /admin/killswitch/%s: expected 200, got %ld %s", scope, st, r.body);
    h_resp_free(&r);
    assert_int_equal(H_GET_STOCK(d, sku), 7);

    h_http(d, "DELETE", "/admin/killswitch/sku:ks-price-1", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    H_ASSERT_ERROR(&r, 404, "not_found");
    h_resp_free(&r);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 3. emergency stop: retries, final failure, a hanging webhook ------------ */

/* The gaps between the arrivals of requests 0..N-1 are each within
 * [0, cap_k + TOL] for backoff initial 50 ms, multiplier 2, max 400. */
static void expect_backoff_gaps(size_t n)
{
    const double tol_ms = 150;
    for (size_t k = 1; k < n; k++) {
        const mock_req *a = mock_request(hook, k - 1), *b = mock_request(hook, k);
        assert_non_null(a);
        assert_non_null(b);
        double gap = (double)(b->t_ns - a->t_ns) / 1e6;
        double cap = 50.0 * (double)(1 << (k - 1));
        if (cap > 400)
            cap = 400;
        if (gap < 0 || gap > cap + tol_ms)
            fail_msg("gap between webhook attempts %zu and %zu: %.1f ms, expected within "
                     "[0, %.0f] + %.0f ms", k, k + 1, gap, cap, tol_ms);
    }
}

static void test_emergency_stop_retries(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-killer", "killer.lua", KILLER_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, hook_set, CHANNELS, "panic.max_attempts=3",
                           "panic.backoff_initial_ms=50", "panic.backoff_max_ms=400",
                           "panic.backoff_multiplier=2", "panic.jitter=true",
                           "panic.timeout_ms=5000", "server.shutdown_grace_ms=2000", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);

    /* 500, 500, 200: three attempts, stopped. */
    mock_set_script(hook, (const int[]){ 500, 500 }, 2, 200);
    assert_true(h_publish(redis, "test_events", "{\"kill\":\"retry:a\"}") >= 1);
    cJSON *rec = H_WAIT_KILL(redis, "retry:a", "stopped", 5000);
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 3);
    cJSON_Delete(rec);
    assert_int_equal(mock_requests(hook), 3);
    assert_int_equal(mock_request(hook, 0)->status, 500);
    assert_int_equal(mock_request(hook, 1)->status, 500);
    assert_int_equal(mock_request(hook, 2)->status, 200);
    expect_backoff_gaps(3);
    for (size_t i = 0; i < 3; i++) {
        cJSON *b = cJSON_Parse(mock_request(hook, i)->body);
        assert_string_equal(h_jstr(b, "scope"), "retry:a");
        cJSON_Delete(b);
    }

    /* Always 500: max_attempts requests, stop_failed, one fatal alert. */
    mock_reset(hook);
    mock_set_script(hook, NULL, 0, 500);
    assert_true(h_publish(redis, "test_events", "{\"kill\":\"retry:b\"}") >= 1);
    rec = H_WAIT_KILL(redis, "retry:b", "stop_failed", 5000);
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 3);
    cJSON_Delete(rec);
    assert_int_equal(mock_requests(hook), 3);
    expect_backoff_gaps(3);
    H_SUB_WAIT(alerts, "critical_failure", "retry:b", 1, 3000);
    H_SUB_PUMP(alerts, 300);
    assert_int_equal(h_sub_count(alerts, "critical_failure", "retry:b"), 1);
    assert_string_equal(h_jstr(h_sub_find(alerts, "critical_failure", "retry:b", 0, NULL), "level"),
                        "fatal");
    assert_int_equal(h_sub_count(alerts, "critical_failure", "retry:a"), 0);
    assert_int_equal(h_sub_count(alerts, "kill_switch", "retry:a"), 1);
    assert_int_equal(h_sub_count(alerts, "kill_switch", "retry:b"), 1);
    assert_int_equal(mock_requests(hook), 3);

    /* A webhook that hangs 3 s (timeout 5 s) delays no other engagement. */
    mock_reset(hook);
    mock_set_steps(hook, (const mock_step[]){ { 200, 3000 } }, 1, (mock_step){ 200, 0 });
    assert_true(h_publish(redis, "test_events", "{\"kill\":\"slow:a\"}") >= 1);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);
    double t0 = h_now();
    assert_true(h_publish(redis, "test_events", "{\"kill\":\"slow:b\"}") >= 1);
    rec = H_WAIT_KILL(redis, "slow:b", NULL, 5000);
    double took = h_now() - t0;
    cJSON_Delete(rec);
    if (took >= 1.0)
        fail_msg("slow:b engaged %.2f s after its event while the webhook hung: expected < 1 s", took);
    H_SUB_WAIT(alerts, "kill_switch", "slow:b", 1, 1000);
    rec = h_kill_record(redis, "slow:a");
    assert_non_null(rec);
    assert_string_equal(h_jstr(rec, "state"), "stopping");  /* still in the hanging call */
    cJSON_Delete(rec);
    cJSON_Delete(H_WAIT_KILL(redis, "slow:a", "stopped", 8000));
    cJSON_Delete(H_WAIT_KILL(redis, "slow:b", "stopped", 8000));
    assert_int_equal(mock_requests(hook), 2);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 4. engaging by hand ---------------------------------------------------- */

static void test_admin_engage(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-killer", "killer.lua", KILLER_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, hook_set, CHANNELS, NULL };
    h_daemon *d = start_nerve(sets);
    const char *body = "{\"scope\":\"campaign:e2e-4\",\"reason\":\"operator says stop\"}";
    h_resp r;

    h_http(d, "POST", "/admin/killswitch", body, &r, NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer nope", NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    assert_null(h_kill_record(redis, "campaign:e2e-4"));
    assert_int_equal(mock_requests(hook), 0);

    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    H_ASSERT_JSON(&r);
    assert_string_equal(h_jstr(r.json, "scope"), "campaign:e2e-4");
    if (h_jbool(r.json, "already_engaged") != 0)
        fail_msg("first engagement: expected \"already_engaged\": false, got %s", r.body);
    h_resp_free(&r);

    h_http(d, "GET", "/killswitch", NULL, &r, NULL);
    assert_int_equal(r.status, 200);
    const cJSON *found = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "engaged")) {
        const char *s = h_jstr(it, "scope");
        if (s && strcmp(s, "campaign:e2e-4") == 0)
            found = it;
    }
    if (found == NULL)
        fail_msg("GET /killswitch does not list campaign:e2e-4: %s", r.body);
    assert_string_equal(h_jstr(found, "reason"), "operator says stop");
    h_resp_free(&r);

    h_http(d, "POST", "/admin/killswitch", body, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    assert_int_equal(r.status, 200);
    if (h_jbool(r.json, "already_engaged") != 1)
        fail_msg("second engagement: expected \"already_engaged\": true, got %s", r.body);
    h_resp_free(&r);

    cJSON_Delete(H_WAIT_KILL(redis, "campaign:e2e-4", "stopped", 5000));
    assert_int_equal(mock_requests(hook), 1);
    cJSON *b = cJSON_Parse(mock_request(hook, 0)->body);
    assert_string_equal(h_jstr(b, "scope"), "campaign:e2e-4");
    assert_string_equal(h_jstr(b, "reason"), "operator says stop");
    cJSON_Delete(b);
    assert_string_equal(mock_request(hook, 0)->authorization, "Bearer " PANIC_TOKEN);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 5. alert throttling ------------------------------------------------------ */

static void test_alert_throttling(void **state)
{
    (void)state;
    const int window_s = 2;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-throttle", "every.lua", ALERT_EVERY_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "alerts.throttle_s=2", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);

    for (int i = 1; i <= 10; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"n\":%d}", i);
        assert_true(h_publish(redis, "test_events", ev) >= 1);
    }
    wait_rule_stat(d, "e2e_alert_every", "evaluations", 10, 5000);
    H_SUB_WAIT(alerts, "rule_alert", "throttle:t5", 1, 2000);
    H_SUB_PUMP(alerts, 100);
    double t_first = 0;
    const cJSON *a = h_sub_find(alerts, "rule_alert", "throttle:t5", 0, &t_first);
    if (h_now() - t_first >= window_s)
        fail_msg("the 10 events took longer than the %d s window: cannot judge throttling", window_s);
    assert_int_equal(h_sub_count(alerts, "rule_alert", "throttle:t5"), 1);
    assert_string_equal(h_jstr(a, "reason"), "event 1");
    assert_string_equal(h_jstr(a, "level"), "warning");
    assert_string_equal(h_jstr(a, "rule"), "e2e_alert_every");
    long long sup = 0;
    if (cJSON_HasObjectItem(a, "suppressed") && (!h_jll(a, "suppressed", &sup) || sup != 0))
        fail_msg("first alert: expected no or zero \"suppressed\", got %s",
                 cJSON_PrintUnformatted(a));

    /* Past the window (a time contract, not synchronisation): still one. */
    while (h_now() < t_first + window_s + 0.3)
        H_SUB_PUMP(alerts, 50);
    assert_int_equal(h_sub_count(alerts, "rule_alert", "throttle:t5"), 1);

    assert_true(h_publish(redis, "test_events", "{\"n\":11}") >= 1);
    H_SUB_WAIT(alerts, "rule_alert", "throttle:t5", 2, 3000);
    a = h_sub_find(alerts, "rule_alert", "throttle:t5", 1, NULL);
    assert_string_equal(h_jstr(a, "reason"), "event 11");
    if (!h_jll(a, "suppressed", &sup) || sup != 9) {
        char *txt = cJSON_PrintUnformatted(a);
        fail_msg("alert after the window: expected \"suppressed\": 9, got %s", txt);
    }
    H_SUB_PUMP(alerts, 100);
    assert_int_equal(h_sub_count(alerts, "rule_alert", "throttle:t5"), 2);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 6. the bus survives a Redis restart ------------------------------------ */

static void test_bus_redis_restart(void **state)
{
    (void)state;
    h_redis *r6 = h_redis_start(false);     /* the test's own: restarted below */
    assert_non_null(r6);
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-killer", "killer.lua", KILLER_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "panic.dry_run=true", "redis.reconnect_max_ms=500", NULL };
    h_daemon *d = start_nerve_on(r6, sets);
    H_WAIT_SUBSCRIBERS(r6, "test_events", 1);
    pid_t pid = d->pid;

    redisReply *rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"x\":1}");
    assert_non_null(rep);
    freeReplyObject(rep);
    wait_rule_stat(d, "e2e_killer", "evaluations", 1, 5000);

    assert_int_equal(h_redis_restart(r6), 0);

    /* Publish until an event reaches a subscriber: the daemon's bus is back.
     * Events published before that reach nobody and are not counted. */
    double dl = h_deadline(15000);
    long long got = 0;
    while (h_before(dl)) {
        rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"x\":2}");
        got = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : 0;
        if (rep)
            freeReplyObject(rep);
        if (got >= 1)
            break;
        h_nap();
    }
    if (got < 1)
        fail_msg("the daemon did not resubscribe to test_events within 15 s of the redis restart");
    wait_rule_stat(d, "e2e_killer", "evaluations", 2, 5000);

    /* And decisions act on the new server: the first kill decided after the
     * restart engages (judged after the sales check, so that a failure here
     * still says whether sales came back). */
    rep = h_redis_cmd(r6, "PUBLISH test_events %s", "{\"kill\":\"bus:after-restart\"}");
    assert_non_null(rep);
    freeReplyObject(rep);
    bool engaged = false;
    dl = h_deadline(5000);
    while (!engaged && h_before(dl)) {
        cJSON *rec = h_kill_record(r6, "bus:after-restart");
        engaged = rec != NULL;
        cJSON_Delete(rec);
        if (!engaged)
            h_nap();
    }

    /* Sales recover by themselves (503 allowed while reconnecting). */
    dl = h_deadline(10000);
    long st = 0;
    h_resp r;
    while (h_before(dl)) {
        st = h_http(d, "PUT", "/admin/stock/ks-bus-1", "{\"stock\":3}", &r,
                    "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        h_resp_free(&r);
        if (st == 200)
            break;
        if (st != 503)
            fail_msg("PUT /admin/stock after the restart: %ld", st);
        h_nap();
    }
    assert_int_equal(st, 200);
    dl = h_deadline(10000);
    while (h_before(dl)) {
        st = sell(d, "ks-bus-1", -1, &r);
        h_resp_free(&r);
        if (st != 503)
            break;
        h_nap();
    }
    if (st != 200)
        fail_msg("a sale after the redis restart: expected 200 (after 503s), got %ld", st);
    if (!engaged)
        fail_msg("the kill decided after the redis restart (the daemon's bus already back and "
                 "evaluating) never engaged: no record bus:after-restart within 5 s");

    assert_int_equal(d->pid, pid);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 7. a runaway rule never takes the daemon down --------------------------- */

static const char *const GOOD_RULE =
    "return {\n"
    "  name = \"e2e_good\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"info\", scope = \"good:\" .. event.id,\n"
    "             reason = \"still here\" }\n"
    "  end,\n"
    "}\n";

static const char *const LOOP_RULE =
    "return {\n"
    "  name = \"e2e_loop\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    while true do end\n"
    "  end,\n"
    "}\n";

static const char *const PCALL_LOOP_RULE =
    "return {\n"
    "  name = \"e2e_pcall_loop\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    pcall(function() while true do end end)\n"
    "    return { action = \"alert\", level = \"critical\", scope = \"swallowed:\" .. event.id,\n"
    "             reason = \"pcall swallowed the instruction limit\" }\n"
    "  end,\n"
    "}\n";

static const char *const MEMORY_RULE =
    "return {\n"
    "  name = \"e2e_memory\",\n"
    "  on = { \"loop_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    local s = string.rep(\"x\", 1 << 30)\n"
    "    return { action = \"alert\", level = \"critical\", scope = \"swallowed:\" .. event.id,\n"
    "             reason = \"allocated \" .. #s }\n"
    "  end,\n"
    "}\n";

static void test_sandbox_survival(void **state)
{
    (void)state;
    char dir[PATH_MAX], rset[PATH_MAX + 16];
    H_RULES_DIR("ks-sandbox", "good.lua", GOOD_RULE, dir, sizeof dir, rset, sizeof rset);
    H_WRITE_FILE(dir, "loop.lua", LOOP_RULE);
    H_WRITE_FILE(dir, "pcall_loop.lua", PCALL_LOOP_RULE);
    H_WRITE_FILE(dir, "memory.lua", MEMORY_RULE);
    const char *sets[] = { rset, CHANNELS, "rules.instruction_limit=200000",
                           "alerts.throttle_s=60", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "loop_events", 1);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);

    for (int i = 1; i <= 3; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"id\":\"e%d\"}", i);
        assert_true(h_publish(redis, "loop_events", ev) >= 1);
    }
    H_SUB_WAIT(alerts, "rule_alert", "good:e1", 1, 10000);
    H_SUB_WAIT(alerts, "rule_alert", "good:e2", 1, 10000);
    H_SUB_WAIT(alerts, "rule_alert", "good:e3", 1, 10000);
    wait_rule_stat(d, "e2e_loop", "errors", 3, 10000);
    wait_rule_stat(d, "e2e_pcall_loop", "errors", 3, 10000);
    wait_rule_stat(d, "e2e_memory", "errors", 3, 10000);
    assert_int_equal(h_rule_stat(d, "e2e_good", "evaluations"), 3);
    assert_int_equal(h_rule_stat(d, "e2e_good", "errors"), 0);
    H_SUB_PUMP(alerts, 100);
    for (int i = 1; i <= 3; i++) {
        char scope[32];
        snprintf(scope, sizeof scope, "swallowed:e%d", i);
        if (h_sub_count(alerts, "rule_alert", scope) != 0)
            fail_msg("a rule over its limits still decided (%s)", scope);
    }

    /* Still serving. */
    h_resp r;
    assert_int_equal(h_http(d, "GET", "/healthz", NULL, &r, NULL), 200);
    h_resp_free(&r);
    H_SET_STOCK(d, "ks-sandbox-1", 2);
    expect_sale_ok(d, "ks-sandbox-1", -1, 1);
    assert_int_equal(h_daemon_alive(d), 1);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 8. one scope grammar: what can be engaged can be listed and reset ------- */

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

/* POST /admin/killswitch {"scope":SCOPE,...}: the status. */
static long admin_engage(const h_daemon *d, const char *scope, bool halt, h_resp *r)
{
    char body[512];
    snprintf(body, sizeof body, "{\"scope\":\"%s\",\"reason\":\"test\",\"halt_sales\":%s}", scope,
             halt ? "true" : "false");
    return h_http(d, "POST", "/admin/killswitch", body, r, AUTH, NULL);
}

/* Is SCOPE listed by GET /killswitch? */
static bool listed(const h_daemon *d, const char *scope)
{
    h_resp r;
    if (h_http(d, "GET", "/killswitch", NULL, &r, NULL) != 200)
        fail_msg("GET /killswitch: %ld %s", r.status, r.body);
    bool found = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "engaged")) {
        const char *sc = h_jstr(it, "scope");
        found |= sc && strcmp(sc, scope) == 0;
    }
    h_resp_free(&r);
    return found;
}

static void test_scope_grammar_admin(void **state)
{
    (void)state;
    const char *scope = "campaign:spring/sale@x";
    const char *sets[] = { CHANNELS, "panic.dry_run=true", NULL };
    h_daemon *d = start_nerve(sets);
    h_resp r;

    /* Every byte class of the grammar, engaged, listed, labelled, reset raw. */
    assert_int_equal(admin_engage(d, scope, false, &r), 200);
    h_resp_free(&r);
    cJSON *rec = h_kill_record(redis, scope);
    assert_non_null(rec);
    cJSON_Delete(rec);
    if (!listed(d, scope))
        fail_msg("GET /killswitch does not list %s", scope);
    char *m = H_METRICS(d);
    if (h_metric(m, "nerve_kill_switch_engaged", "scope=\"campaign:spring/sale@x\"") != 1)
        fail_msg("/metrics has no nerve_kill_switch_engaged{scope=\"%s\"} 1", scope);
    free(m);
    h_http(d, "DELETE", "/admin/killswitch/campaign:spring/sale@x", NULL, &r, AUTH, NULL);
    if (r.status != 200)
        fail_msg("DELETE /admin/killswitch/campaign:spring/sale@x: expected 200, got %ld %s",
                 r.status, r.body);
    assert_string_equal(h_jstr(r.json, "scope"), scope);
    h_resp_free(&r);
    assert_null(h_kill_record(redis, scope));
    assert_false(listed(d, scope));

    /* The same scope, percent-encoded in the path. */
    assert_int_equal(admin_engage(d, scope, false, &r), 200);
    h_resp_free(&r);
    h_http(d, "DELETE", "/admin/killswitch/campaign:spring%2Fsale%40x", NULL, &r, AUTH, NULL);
    if (r.status != 200)
        fail_msg("DELETE /admin/killswitch/campaign:spring%%2Fsale%%40x: expected 200, got %ld %s",
                 r.status, r.body);
    assert_string_equal(h_jstr(r.json, "scope"), scope);
    h_resp_free(&r);
    assert_null(h_kill_record(redis, scope));

    /* A scope holding an encoded byte (what a rule's campaign "a b" becomes)
     * is reached with its '%' encoded once more. */
    assert_int_equal(admin_engage(d, "campaign:a%20b", false, &r), 200);
    h_resp_free(&r);
    assert_true(listed(d, "campaign:a%20b"));
    h_http(d, "DELETE", "/admin/killswitch/campaign:a%2520b", NULL, &r, AUTH, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_false(listed(d, "campaign:a%20b"));

    /* The grammar's bounds: 200 bytes engage, 201 do not; the message says
     * what a scope is. */
    char longest[256];
    memset(longest, 'a', 200);
    memcpy(longest, "campaign:", 9);
    longest[200] = 0;
    assert_int_equal(admin_engage(d, longest, false, &r), 200);
    h_resp_free(&r);
    char path[300];
    snprintf(path, sizeof path, "/admin/killswitch/%s", longest);
    assert_int_equal(h_http(d, "DELETE", path, NULL, &r, AUTH, NULL), 200);
    h_resp_free(&r);
    strcat(longest, "a");
    admin_engage(d, longest, false, &r);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    if (strstr(h_jstr(r.json, "message"), "A-Z a-z 0-9 . _ : - / @ +") == NULL)
        fail_msg("400 for a 201-byte scope: the message does not state the grammar: %s", r.body);
    h_resp_free(&r);
    admin_engage(d, "campaign:a b", false, &r);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    h_resp_free(&r);

    /* One spelling per scope: an escape of a plain byte ('R' as %52) would
     * engage a scope no sale of RACE3 (compared byte for byte) matches, so
     * it, lower-case hex and an escaped '/' are refused, in a body and in a
     * path. */
    H_SET_STOCK(d, "RACE3", 100);
    static const char *const second[] = { "sku:%52ACE3", "campaign:a%2f", "campaign:a%2F" };
    for (size_t i = 0; i < sizeof second / sizeof second[0]; i++) {
        admin_engage(d, second[i], true, &r);
        H_ASSERT_ERROR(&r, 400, "bad_request");
        if (strstr(h_jstr(r.json, "message"), "A-Z a-z 0-9 . _ : - / @ +") == NULL ||
            strstr(h_jstr(r.json, "message"), "upper-case hex") == NULL)
            fail_msg("400 for %s: the message does not state the grammar: %s", second[i], r.body);
        h_resp_free(&r);
    }
    assert_null(h_kill_record(redis, "sku:%52ACE3"));
    h_http(d, "DELETE", "/admin/killswitch/sku:%2552ACE3", NULL, &r, AUTH, NULL);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    h_resp_free(&r);
    assert_int_equal(sell(d, "RACE3", -1, &r), 200);
    h_resp_free(&r);
    h_http(d, "DELETE", "/admin/killswitch/campaign:a%20b", NULL, &r, AUTH, NULL);
    H_ASSERT_ERROR(&r, 400, "bad_request");
    if (strstr(h_jstr(r.json, "message"), "A-Z a-z 0-9 . _ : - / @ +") == NULL)
        fail_msg("400 for DELETE of an invalid scope: the message does not state the grammar: %s",
                 r.body);
    h_resp_free(&r);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 9. control messages carry no authority ----------------------------------- */

/* nerve_control_messages_total{result=RESULT} of D (0 when absent). */
static double control_count(const h_daemon *d, const char *result)
{
    char label[64];
    snprintf(label, sizeof label, "result=\"%s\"", result);
    char *m = H_METRICS(d);
    double v = h_metric(m, "nerve_control_messages_total", label);
    free(m);
    return v < 0 ? 0 : v;
}

/* Poll until D has handled N more control messages of RESULT than BASE. */
static void wait_control(const h_daemon *d, const char *result, double base, int n)
{
    double dl = h_deadline(5000), v = base;
    while (h_before(dl) && (v = control_count(d, result)) < base + n)
        h_nap();
    if (v < base + n)
        fail_msg("control messages result=%s: expected %.0f, got %.0f", result, base + n, v);
}

static void test_control_forgery(void **state)
{
    (void)state;
    const char *ctl = H_PREFIX "control";
    const char *sets[] = { CHANNELS, "panic.dry_run=true", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, ctl, 1);
    H_SET_STOCK(d, "ks-ctl-1", 100);
    H_SET_STOCK(d, "ks-ctl-2", 100);
    H_SET_STOCK(d, "ks-ctl-3", 100);
    h_resp r;

    double ok = control_count(d, "ok");
    assert_int_equal(admin_engage(d, "sku:ks-ctl-1", true, &r), 200);
    h_resp_free(&r);
    wait_control(d, "ok", ok, 1);           /* its own announcement */
    assert_int_equal(sell(d, "ks-ctl-1", -1, &r), 423);
    h_resp_free(&r);

    /* A forged reset: the record still halts, so the SKU stays halted. */
    ok = control_count(d, "ok");
    assert_true(h_publish(redis, ctl, "{\"op\":\"reset\",\"scope\":\"sku:ks-ctl-1\"}") >= 1);
    wait_control(d, "ok", ok, 1);
    sell(d, "ks-ctl-1", -1, &r);
    if (r.status != 423)
        fail_msg("after a forged reset: expected 423 for ks-ctl-1, got %ld %s", r.status, r.body);
    h_resp_free(&r);

    /* Forged engagements (global, a SKU): no record, nothing halts, nothing
     * is listed. */
    ok = control_count(d, "ok");
    assert_true(h_publish(redis, ctl,
                          "{\"op\":\"engage\",\"scope\":\"global\",\"halt_sales\":true}") >= 1);
    assert_true(h_publish(redis, ctl,
                          "{\"op\":\"engage\",\"scope\":\"sku:ks-ctl-2\",\"halt_sales\":true,"
                          "\"instance\":\"forged:1\"}") >= 1);
    wait_control(d, "ok", ok, 2);
    sell(d, "ks-ctl-2", -1, &r);
    if (r.status != 200)
        fail_msg("after forged engagements of global and sku:ks-ctl-2: expected 200, got %ld %s",
                 r.status, r.body);
    h_resp_free(&r);
    assert_int_equal(sell(d, "ks-ctl-3", -1, &r), 200);
    h_resp_free(&r);
    assert_false(listed(d, "global"));
    assert_false(listed(d, "sku:ks-ctl-2"));

    /* Garbage is ignored and counted. */
    double bad = control_count(d, "invalid");
    assert_true(h_publish(redis, ctl, "not json") >= 1);
    assert_true(h_publish(redis, ctl, "{\"op\":\"engage\",\"scope\":\"bad scope\"}") >= 1);
    assert_true(h_publish(redis, ctl, "{\"op\":\"explode\",\"scope\":\"global\"}") >= 1);
    assert_true(h_publish(redis, ctl, "[1,2,3]") >= 1);
    wait_control(d, "invalid", bad, 4);
    assert_int_equal(sell(d, "ks-ctl-3", -1, &r), 200);
    h_resp_free(&r);

    /* A genuine reset (the record gone) releases at once. */
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-ctl-1", NULL, &r, AUTH, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(sell(d, "ks-ctl-1", -1, &r), 200);
    h_resp_free(&r);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 10. alerts are throttled per level ---------------------------------------- */

/* {"level": L, "n": N} on test_events: an alert of level L about one scope. */
static const char *const ALERT_LEVEL_RULE =
    "return {\n"
    "  name = \"e2e_alert_level\",\n"
    "  on = { \"test_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = event.level, scope = \"levels:one\",\n"
    "             reason = event.level .. \" \" .. tostring(event.n) }\n"
    "  end,\n"
    "}\n";

static void test_alert_levels(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("ks-levels", "levels.lua", ALERT_LEVEL_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, CHANNELS, "alerts.throttle_s=60", NULL };
    h_daemon *d = start_nerve(sets);
    H_WAIT_SUBSCRIBERS(redis, "test_events", 1);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);

    /* warning, then critical (and another warning, critical) inside the window. */
    assert_true(h_publish(redis, "test_events", "{\"level\":\"warning\",\"n\":1}") >= 1);
    assert_true(h_publish(redis, "test_events", "{\"level\":\"critical\",\"n\":2}") >= 1);
    assert_true(h_publish(redis, "test_events", "{\"level\":\"warning\",\"n\":3}") >= 1);
    assert_true(h_publish(redis, "test_events", "{\"level\":\"critical\",\"n\":4}") >= 1);
    assert_true(h_publish(redis, "test_events", "{\"level\":\"info\",\"n\":5}") >= 1);
    wait_rule_stat(d, "e2e_alert_level", "evaluations", 5, 5000);
    H_SUB_WAIT(alerts, "rule_alert", "levels:one", 3, 3000);
    H_SUB_PUMP(alerts, 200);
    if (h_sub_count(alerts, "rule_alert", "levels:one") != 3) {
        h_sub_print(alerts, "rule_alert", "levels:one");
        fail_msg("expected 3 alerts (one per level) in the window, got %d",
                 h_sub_count(alerts, "rule_alert", "levels:one"));
    }
    const char *want[] = { "warning 1", "critical 2", "info 5" };
    for (int i = 0; i < 3; i++)
        assert_string_equal(h_jstr(h_sub_find(alerts, "rule_alert", "levels:one", i, NULL), "reason"),
                            want[i]);
    assert_string_equal(h_jstr(h_sub_find(alerts, "rule_alert", "levels:one", 1, NULL), "level"),
                        "critical");

    /* One warning and one critical kept quiet, counted by level. */
    double w = -1, c = -1, i = -1, dl = h_deadline(3000);
    while (h_before(dl)) {
        char *m = H_METRICS(d);
        w = h_metric(m, "nerve_alerts_suppressed_total", "level=\"warning\"");
        c = h_metric(m, "nerve_alerts_suppressed_total", "level=\"critical\"");
        i = h_metric(m, "nerve_alerts_suppressed_total", "level=\"info\"");
        free(m);
        if (w >= 1 && c >= 1)
            break;
        h_nap();
    }
    if (w != 1 || c != 1 || i != 0)
        fail_msg("nerve_alerts_suppressed_total: expected warning 1, critical 1, info 0; got %g %g %g",
                 w, c, i);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 10. a listing never drops a re-engaged halt from the index -------------- */

#define PAD_RECORDS 30000

/* A token-less client reading GET /killswitch in a loop until told to stop:
 * each read walks every record (PAD_RECORDS of them, ~0.2 s). */
typedef struct reader {
    const h_daemon *d;
    atomic_bool stop;
    atomic_int reads;
} reader;

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p, (void)ud;
    return size * n;
}

static void *read_loop(void *ud)
{
    reader *rd = ud;
    char url[128];
    snprintf(url, sizeof url, "%s/killswitch", rd->d->base);
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    while (!atomic_load(&rd->stop)) {
        curl_easy_perform(h);
        atomic_fetch_add(&rd->reads, 1);
    }
    curl_easy_cleanup(h);
    return NULL;
}

/* PAD_RECORDS records "campaign:pad<i>" (no halt) and their index members,
 * made (ADD) or removed in one script. */
static void pad_records(bool add)
{
    redisReply *r = h_redis_cmd(redis,
        "EVAL %s 2 " H_PREFIX "kills " H_PREFIX "kill: %d",
        add ? "for i = 1, tonumber(ARGV[1]) do\n"
              "  local s = 'campaign:pad' .. i\n"
              "  redis.call('SET', KEYS[2] .. s, cjson.encode({scope = s, halt_sales = false,"
              " state = 'dry_run', reason = 'pad', rule = 'admin'}))\n"
              "  redis.call('SADD', KEYS[1], s)\n"
              "end\n"
              "return 1\n"
            : "for i = 1, tonumber(ARGV[1]) do\n"
              "  local s = 'campaign:pad' .. i\n"
              "  redis.call('DEL', KEYS[2] .. s)\n"
              "  redis.call('SREM', KEYS[1], s)\n"
              "end\n"
              "return 1\n",
        PAD_RECORDS);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER)
        fail_msg("padding the kill index: %s", r && r->type == REDIS_REPLY_ERROR ? r->str : "?");
    freeReplyObject(r);
}

static long long redis_int(const char *fmt, const char *arg)
{
    redisReply *r = h_redis_cmd(redis, fmt, arg);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static void test_listing_race_keeps_halt(void **state)
{
    (void)state;
    const char *sku = "RACE2", *scope = "sku:RACE2";
    const char *sets[] = { CHANNELS, "panic.dry_run=true", NULL };
    h_daemon *d = start_nerve(sets);
    H_SET_STOCK(d, sku, 1000000);
    pad_records(true);

    /* The old listing SREMmed, after its whole read, every member whose GET
     * had answered nil: a reset and a re-engage landing inside one read lost
     * the re-engaged scope from the index, and the next refresh (every 2 s,
     * from the index) released its halt fleet-wide. Reset and re-engage
     * while a client lists, with varying gaps, for a few seconds. */
    reader rd = { .d = d };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, read_loop, &rd), 0);
    h_resp r;
    int iterations = 0, lost_at = -1, engaged = 0;
    double end = h_deadline(5000);
    while (h_before(end) && lost_at < 0) {
        h_http(d, "DELETE", "/admin/killswitch/sku:RACE2", NULL, &r, AUTH, NULL);
        h_resp_free(&r);
        struct timespec gap = { 0, 20000000L * (iterations % 5) };
        nanosleep(&gap, NULL);  /* spreads the reset-to-engage gap over a read */
        engaged += admin_engage(d, scope, true, &r) == 200;
        h_resp_free(&r);
        /* Wait until a read that began after the engagement has finished. */
        int base = atomic_load(&rd.reads);
        double dl = h_deadline(5000);
        while (h_before(dl) && atomic_load(&rd.reads) < base + 2)
            h_nap();
        if (redis_int("EXISTS " H_PREFIX "kill:%s", scope) == 1 &&
            redis_int("SISMEMBER " H_PREFIX "kills %s", scope) != 1)
            lost_at = iterations;
        iterations++;
    }
    atomic_store(&rd.stop, true);
    pthread_join(th, NULL);
    printf("    %d reset/engage iterations, %d listings\n", iterations, atomic_load(&rd.reads));
    pad_records(false);
    if (lost_at >= 0)
        fail_msg("iteration %d: the record of %s exists but the index lost it", lost_at, scope);
    assert_int_equal(engaged, iterations);

    /* Engaged, indexed, listed; and still halted past two refreshes. */
    cJSON *rec = h_kill_record(redis, scope);
    assert_non_null(rec);
    assert_int_equal(h_jbool(rec, "halt_sales"), 1);
    cJSON_Delete(rec);
    assert_int_equal(redis_int("SISMEMBER " H_PREFIX "kills %s", scope), 1);
    if (!listed(d, scope))
        fail_msg("GET /killswitch does not list %s", scope);
    double dl = h_deadline(4500);
    while (h_before(dl)) {
        sell(d, sku, -1, &r);
        if (r.status != 423)
            fail_msg("sale of %s while %s is engaged: expected 423, got %ld %s", sku, scope,
                     r.status, r.body);
        h_resp_free(&r);
        h_nap();
    }
    h_http(d, "DELETE", "/admin/killswitch/sku:RACE2", NULL, &r, AUTH, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);

    /* A member whose record is really gone (deleted by hand) still leaves
     * the index at the next listing. */
    freeReplyObject(h_redis_cmd(redis, "SADD " H_PREFIX "kills campaign:ghost"));
    assert_false(listed(d, "campaign:ghost"));
    assert_int_equal(redis_int("SISMEMBER " H_PREFIX "kills %s", "campaign:ghost"), 0);

    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* --- 11. a control re-read never releases an engagement in flight ------------ */

typedef struct engager {
    ks *k;
    rds_client *c;
    ks_change rc;
    char err[256];
} engager;

static void *engage_thread(void *ud)
{
    engager *e = ud;
    e->rc = ks_engage(e->k, e->c, "sku:ENG1", "test", "admin", true, "dry_run", 0, e->err,
                      sizeof e->err);
    return NULL;
}

/* ks_engage halts in the cache before its SET reaches Redis. A control
 * message's re-read whose GET landed in between (the record not there yet)
 * used to release that halt, and nothing but the next refresh or a later
 * message put it back; a refresh in between released it too. Redis is paused for writes (CLIENT PAUSE WRITE) so
 * that the engagement's script waits while the re-read's GET is served. */
static void test_engage_outruns_reread(void **state)
{
    (void)state;
    char url[128], err[256];
    rds_opts o = { .connect_timeout_ms = 2000, .command_timeout_ms = 10000 };
    assert_int_equal(rds_parse_url(h_redis_url(redis, url, sizeof url), &o, err, sizeof err), 0);
    rds_client *c1 = rds_client_new(&o), *c2 = rds_client_new(&o);
    ks *k = ks_new(H_PREFIX, "eng-test-control", "t");
    assert_non_null(c1);
    assert_non_null(c2);
    assert_non_null(k);
    char sc[KS_SCOPE_MAX + 1];
    const char *reset = "{\"op\":\"reset\",\"scope\":\"sku:ENG1\"}";

    /* Load the scripts while Redis takes writes. */
    engager e = { .k = k, .c = c1 };
    engage_thread(&e);
    assert_int_equal(e.rc, KS_CHANGED);
    assert_int_equal(ks_reset(k, c1, "sku:ENG1"), KS_CHANGED);
    assert_int_equal(ks_halted(k, "ENG1", sc), 0);

    redisReply *r = h_redis_cmd(redis, "CLIENT PAUSE 5000 WRITE");
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, engage_thread, &e), 0);
    double dl = h_deadline(5000);
    while (h_before(dl) && !ks_halted(k, "ENG1", sc))
        h_nap();
    int before = ks_halted(k, "ENG1", sc);
    ks_on_control(k, c2, reset, strlen(reset));    /* GET: nil, the SET still waits */
    int during = ks_halted(k, "ENG1", sc);
    assert_int_equal(ks_refresh(k, c2), 0);    /* reads the index: no record yet either */
    int refreshed = ks_halted(k, "ENG1", sc);
    freeReplyObject(h_redis_cmd(redis, "CLIENT UNPAUSE"));
    pthread_join(th, NULL);
    int after = ks_halted(k, "ENG1", sc);
    cJSON *rec = h_kill_record(redis, "sku:ENG1");
    assert_non_null(rec);
    cJSON_Delete(rec);
    ks_reset(k, c1, "sku:ENG1");
    ks_free(k);
    rds_client_free(c1);
    rds_client_free(c2);
    assert_int_equal(e.rc, KS_CHANGED);
    if (before != 1 || during != 1 || refreshed != 1 || after != 1)
        fail_msg("halted before the SET %d, after a re-read during it %d, after a refresh during "
                 "it %d, once engaged %d: expected 1 1 1 1", before, during, refreshed, after);
    h_pass();
}

/* --- main ----------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

/* An instance engaged a kill and died before its emergency stop finished:
 * the record says "stopping" for ever, and since engagement is idempotent a
 * redelivered event never runs the stop again. A running instance resumes it
 * once it is stale (twice the longest a stop can take), exactly once
 * fleet-wide, and the record ends "stopped"; a fresh "stopping" record, or
 * one already stopped, is left alone. */
static void test_stalled_stop_resumed(void **state)
{
    (void)state;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    double now = (double)t.tv_sec;
    char rec[512];
    snprintf(rec, sizeof rec,
             "{\"scope\":\"sku:stalled\",\"reason\":\"stock of stalled is 0\",\"rule\":\"inv\","
             "\"ts\":%.3f,\"instance\":\"dead-host:1\",\"state\":\"stopping\","
             "\"halt_sales\":false,\"attempts\":0}", now - 600);
    freeReplyObject(h_redis_cmd(redis, "SET " H_PREFIX "kill:sku:stalled %s", rec));
    snprintf(rec, sizeof rec,
             "{\"scope\":\"sku:fresh\",\"reason\":\"r\",\"rule\":\"inv\",\"ts\":%.3f,"
             "\"instance\":\"busy-host:1\",\"state\":\"stopping\",\"halt_sales\":false,"
             "\"attempts\":0}", now + 600);
    freeReplyObject(h_redis_cmd(redis, "SET " H_PREFIX "kill:sku:fresh %s", rec));
    snprintf(rec, sizeof rec,
             "{\"scope\":\"sku:done\",\"reason\":\"r\",\"rule\":\"inv\",\"ts\":%.3f,"
             "\"instance\":\"dead-host:1\",\"state\":\"stopped\",\"halt_sales\":false,"
             "\"attempts\":1}", now - 600);
    freeReplyObject(h_redis_cmd(redis, "SET " H_PREFIX "kill:sku:done %s", rec));
    freeReplyObject(h_redis_cmd(redis, "SADD " H_PREFIX "kills sku:stalled sku:fresh sku:done"));
    const char *sets[] = { hook_set, "panic.max_attempts=1", "panic.timeout_ms=200",
                           "panic.backoff_max_ms=100", NULL };
    /* Two instances: one of them resumes it. */
    h_daemon *d1 = start_nerve(sets), *d2 = start_nerve(sets);
    cJSON *done = H_WAIT_KILL(redis, "sku:stalled", "stopped", 10000);
    cJSON_Delete(done);
    assert_int_equal(mock_wait_requests(hook, 1, 1000), 0);
    /* A second resume would come within a check or two (every 2 s): none. */
    double dl = h_deadline(3000);
    while (h_before(dl))
        h_nap();
    assert_int_equal(mock_requests(hook), 1);
    cJSON *b = cJSON_Parse(mock_request(hook, 0)->body);
    assert_non_null(b);
    assert_string_equal(h_jstr(b, "scope"), "sku:stalled");
    cJSON_Delete(b);
    cJSON *fresh = h_kill_record(redis, "sku:fresh");
    assert_string_equal(h_jstr(fresh, "state"), "stopping");
    cJSON_Delete(fresh);
    assert_int_equal(h_daemon_stop(d1), 0);
    assert_int_equal(h_daemon_stop(d2), 0);
    for (const char *const *sc = (const char *const[]){ "sku:stalled", "sku:fresh", "sku:done",
                                                          NULL };
         *sc; sc++) {
        freeReplyObject(h_redis_cmd(redis, "DEL " H_PREFIX "kill:%s", *sc));
        freeReplyObject(h_redis_cmd(redis, "SREM " H_PREFIX "kills %s", *sc));
    }
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_inventory_kill_once),
        T(test_min_price_halts_sales),
        T(test_emergency_stop_retries),
        T(test_admin_engage),
        T(test_alert_throttling),
        T(test_bus_redis_restart),
        T(test_sandbox_survival),
        T(test_scope_grammar_admin),
        T(test_control_forgery),
        T(test_alert_levels),
        T(test_listing_race_keeps_halt),
        T(test_engage_outruns_reread),
        T(test_stalled_stop_resumed),
    };
    h_group_use(&redis, NULL, NULL);
    h_group_hook(&hook, hook_set, sizeof hook_set);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
