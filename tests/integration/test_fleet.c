/* test_fleet.c -- three nerve instances sharing one Redis: the way nerve
 * scales out (SPEC §1, §5, §8, §9).
 *
 * What a fleet must guarantee, each checked against Redis' own records:
 *   1. `nerve stress` spread over the three instances sells exactly the
 *      stock: no oversell, the report agrees with the stock key, the order
 *      records and each instance's own sales counter;
 *   2. a kill decided by the three (they share the stock_changed events
 *      through the consumer group, each evaluated by one of them) engages
 *      the kill switch once: one record, one kill_switch alert, one call of
 *      the emergency-stop webhook fleet-wide;
 *   3. alert throttling is fleet-wide: three instances evaluating the same
 *      events publish one alert per rule and scope in the window;
 *   4. an instance that dies holding a SKU's lock blocks that SKU for at
 *      most the lock TTL, and a kill -9 under load loses nothing and sells
 *      nothing twice (unanswered sales are resent with their order_id);
 *   5. a halting kill engaged or reset on one instance reaches the others
 *      at once (control channel), and one whose announcement was lost
 *      within the periodic refresh;
 *   6. fencing: an instance stalled past its lock's TTL while another sold
 *      cannot commit when it wakes up;
 *   7. halts hold at any count: with 10,000 halting records in Redis every
 *      one answers 423 on every instance, and a new halt holds on the
 *      instance that engaged it before the admin call returns and on the
 *      other within 50 ms.
 *
 * To make an instance hold a lock at a chosen moment, the test holds the
 * lock itself with a foreign token, asks the instance to sell, and pauses
 * Redis (SIGSTOP) once the instance's retry `SET lock NX PX` sits unread in
 * Redis' socket (seen in /proc/net/tcp); the instance is then killed or
 * stopped before Redis resumes and runs that SET for it.
 *
 * The rules are this file's own, written into the temp dir, so that tuning
 * of the shipped rules never changes what is tested. Daemons are started by
 * the harness (owned by the test: the teardown stops whatever a failed test
 * left running, resumes a paused Redis and joins loads).
 */
#include "harness.h"
#include "nerve/keys.h"

#include <dirent.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FLEET 3
#define ALERTS "system_alerts"
#define STRESS_TIMEOUT_MS 45000
#define LOCK_TTL_MS 3000
#define LOCK_WAIT_MS 2000

static h_redis *redis;
static mock_server *hook;       /* the group's mock webhook */
static char hook_set[160];      /* "panic.webhook_url=<hook>" */
static h_daemon *fleet[FLEET];

/* --- redis, daemons --------------------------------------------------------- */

/* Start the three instances against the shared redis with the same
 * overrides SETS (NULL-terminated). */
static void fleet_start(const char *const *sets)
{
    size_t n = 0;
    while (sets[n])
        n++;
    for (int i = 0; i < FLEET; i++) {
        fleet[i] = h_daemon_startv(redis, true, sets, n);
        if (fleet[i] == NULL)
            fail_msg("instance %d of the fleet did not start", i + 1);
    }
}

/* SIGTERM every instance still running; each must exit 0. */
static void fleet_stop(void)
{
    for (int i = 0; i < FLEET; i++) {
        if (fleet[i] == NULL)
            continue;
        h_daemon *d = fleet[i];
        fleet[i] = NULL;
        int rc = h_daemon_stop(d);
        if (rc != 0)
            fail_msg("instance %d: exit status %d after SIGTERM, expected 0", i + 1, rc);
    }
}

static long long redis_ll(redisReply *rep)
{
    long long v = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    if (rep)
        freeReplyObject(rep);
    return v;
}

/* KEYS PATTERN counted (a test-sized keyspace). */
static long long count_keys(const char *pattern)
{
    redisReply *rep = h_redis_cmd(redis, "KEYS %s", pattern);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        fail_msg("KEYS %s failed", pattern);
    long long n = (long long)rep->elements;
    freeReplyObject(rep);
    return n;
}

static long long order_keys(const char *sku)
{
    char pat[RDS_KEY_MAX];
    h_order_key(pat, sku, "*");
    return count_keys(pat);
}

/* Rule NAME's entry in D's GET /rules (caller deletes the returned root via
 * *ROOT), NULL when not listed. */
static const cJSON *rule_entry(const h_daemon *d, const char *name, cJSON **root)
{
    h_resp r;
    h_http(d, "GET", "/rules", NULL, &r, NULL);
    *root = r.json;
    r.json = NULL;
    h_resp_free(&r);
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(*root, "rules")) {
        const char *n = h_jstr(it, "name");
        if (n && strcmp(n, name) == 0)
            return it;
    }
    return NULL;
}

/* The count of decisions of ACTION by rule NAME on D; -1 when not listed. */
static long long rule_decisions(const h_daemon *d, const char *name, const char *action)
{
    cJSON *root;
    const cJSON *e = rule_entry(d, name, &root);
    long long v = -1;
    if (e)
        e = cJSON_GetObjectItemCaseSensitive(e, "decisions");
    if (e && !h_jll(e, action, &v))
        v = -1;
    cJSON_Delete(root);
    return v;
}

/* Poll until every instance has evaluated WANT events with rule NAME. */
/* Every entry of the inventory_events streams (partitions and ingest) in
 * the group's redis, summed: what the fleet must have evaluated between its
 * instances once the streams were dropped before it started. */
static long long inventory_entries(void)
{
    char **keys = NULL;
    size_t n = 0;
    if (keys_streams_of(H_PREFIX, H_PARTITIONS, "inventory_events", &keys, &n) != 0)
        fail_msg("keys_streams_of failed");
    long long sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += redis_ll(h_redis_cmd(redis, "XLEN %s", keys[i]));
    keys_streams_free(keys, n);
    return sum;
}

/* The stock_changed entries of SKU in the inventory streams whose
 * stock_remaining is at most MAX: one per commit (a batch of sales shares
 * one), so the count of stock events a rule sees depends on how the sales
 * were batched; the stream is the truth to compare with. */
static long long stock_events_at_most(const char *sku, long long max)
{
    char key[RDS_KEY_MAX];
    keys_stream(key, H_PREFIX, keys_partition(sku, H_PARTITIONS), "inventory_events");
    redisReply *rep = h_redis_cmd(redis, "XRANGE %s - +", key);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        fail_msg("XRANGE %s failed", key);
    long long n = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *f = rep->element[i]->element[1];
        cJSON *o = f->elements == 2 ? cJSON_Parse(f->element[1]->str) : NULL;
        long long left = -1;
        if (o && strcmp(h_jstr(o, "sku") ? h_jstr(o, "sku") : "", sku) == 0 &&
            h_jll(o, "stock_remaining", &left) && left <= max)
            n++;
        cJSON_Delete(o);
    }
    freeReplyObject(rep);
    return n;
}

/* DEL every event stream, so that a test's fleet evaluates its own events
 * only (its group starts at the first entry: the previous tests' would be
 * read too). */
static void drop_streams(void)
{
    redisReply *rep = h_redis_cmd(redis, "KEYS %s*stream:*", H_PREFIX);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        fail_msg("KEYS failed");
    for (size_t i = 0; i < rep->elements; i++)
        redis_ll(h_redis_cmd(redis, "DEL %s", rep->element[i]->str));
    freeReplyObject(rep);
}

/* Poll until rule NAME has WANT evaluations on every instance (Pub/Sub
 * input: each instance evaluates each message); fails after MS. */
static void wait_each_evaluations(const char *name, long long want, int ms)
{
    double dl = h_deadline(ms);
    for (int i = 0; i < FLEET; i++) {
        long long v = -1;
        while (h_before(dl) && (v = h_rule_stat(fleet[i], name, "evaluations")) < want)
            h_nap();
        if (v != want)
            fail_msg("instance %d: rule %s evaluations: expected %lld within %d ms, got %lld",
                     i + 1, name, want, ms, v);
    }
}

/* Poll until rule NAME's evaluations, summed over the fleet, reach every
 * entry of the inventory streams (each evaluated by one instance); fails
 * after MS, or when the sum goes past it (an event evaluated twice). */
static void wait_evaluations(const char *name, int ms)
{
    double dl = h_deadline(ms);
    long long want = -1, sum = -1;
    do {
        want = inventory_entries();
        sum = 0;
        for (int i = 0; i < FLEET; i++)
            sum += h_rule_stat(fleet[i], name, "evaluations");
        if (sum >= want)
            break;
        h_nap();
    } while (h_before(dl));
    if (sum != want)
        fail_msg("rule %s evaluations across the fleet: expected %lld (the stream entries) "
                 "within %d ms, got %lld", name, want, ms, sum);
}

/* --- running `nerve stress` ------------------------------------------------ */

/* Run `nerve stress ARGS...` (NULL-terminated) with the admin token in its
 * environment; fails when it does not finish within STRESS_TIMEOUT_MS. */
static void stress_run(h_run *r, const char *const *args)
{
    static const char *const env[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN, NULL };
    const char *argv[64];
    int argc = 0;
    argv[argc++] = "stress";
    for (size_t i = 0; args[i] && argc < 63; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    h_run_nerve(r, STRESS_TIMEOUT_MS, env, argv);
    if (r->timed_out)
        fail_msg("nerve stress did not finish within %d ms; stderr:\n%s", STRESS_TIMEOUT_MS,
                 r->err);
}

static long long jnum(const h_run *r, const cJSON *o, const char *key)
{
    long long v;
    if (!h_jll(o, key, &v))
        fail_msg("stress report has no integer \"%s\": %s", key, r->out);
    return v;
}

/* --- rules ------------------------------------------------------------------ */

static const char *const QUIET_RULE =
    "return {\n"
    "  name = \"fleet_quiet\",\n"
    "  on = { \"fleet_quiet\" },\n"
    "  evaluate = function(event, ctx) end,\n"
    "}\n";

static const char *const INVENTORY_RULE =
    "return {\n"
    "  name = \"fleet_inventory\",\n"
    "  on = { \"inventory_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    if event.type == \"stock_changed\" and type(event.stock_remaining) == \"number\"\n"
    "       and event.stock_remaining <= 5 then\n"
    "      return { action = \"kill\", scope = \"sku:\" .. event.sku,\n"
    "               reason = string.format(\"stock of %s is %d\", event.sku,\n"
    "                                      math.floor(event.stock_remaining)) }\n"
    "    end\n"
    "  end,\n"
    "}\n";

static const char *const ALERT_EVERY_RULE =
    "return {\n"
    "  name = \"fleet_alert_every\",\n"
    "  on = { \"fleet_events\" },\n"
    "  evaluate = function(event, ctx)\n"
    "    return { action = \"alert\", level = \"warning\", scope = \"fleet:t3\",\n"
    "             reason = \"event \" .. tostring(event.n) }\n"
    "  end,\n"
    "}\n";

/* --- 1. nerve stress across the fleet ----------------------------------------- */

static void test_stress_across_fleet(void **state)
{
    (void)state;
    const char *sku = "fleet-stress";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-quiet", "quiet.lua", QUIET_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "bus.channels=[fleet_quiet]", NULL };
    fleet_start(sets);

    const char *args[] = { "--url", fleet[0]->base, "--url", fleet[1]->base, "--url",
                           fleet[2]->base, "--sku", sku, "--stock", "3000", "--clients", "48",
                           "--requests", "9000", "--json", "--quiet", NULL };
    h_run r;
    stress_run(&r, args);
    if (r.status != 0 || r.json == NULL)
        fail_msg("nerve stress exited %d, expected 0\nstdout:\n%s\nstderr:\n%s", r.status, r.out,
                 r.err);
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(r.json, "invariants"), *c;
    if (cJSON_GetArraySize(inv) != 5)
        fail_msg("stress report without its 5 invariants: %s", r.out);
    cJSON_ArrayForEach(c, inv) {
        const char *name = h_jstr(c, "name"), *res = h_jstr(c, "result");
        bool skip = name && strcmp(name, "kill_switch") == 0;
        if (!res || strcmp(res, skip ? "skipped" : "PASS") != 0)
            fail_msg("invariant %s: %s (%s)", name ? name : "?", res ? res : "?",
                     h_jstr(c, "detail") ? h_jstr(c, "detail") : "");
    }
    assert_int_equal(h_jbool(r.json, "pass"), 1);
    long long ok = jnum(&r, r.json, "ok");
    printf("fleet stress: %lld requests in %.2f s, ok %lld, out_of_stock %lld, unavailable %lld\n",
           jnum(&r, r.json, "requests"),
           cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r.json, "duration_s")), ok,
           jnum(&r, r.json, "out_of_stock"), jnum(&r, r.json, "unavailable"));
    assert_int_equal(jnum(&r, r.json, "requests"), 9000);
    assert_int_equal(jnum(&r, r.json, "qty"), 1);
    assert_int_equal(jnum(&r, r.json, "errors"), 0);
    assert_int_equal(jnum(&r, r.json, "duplicates"), 0);
    assert_int_equal(jnum(&r, r.json, "initial_stock"), 3000);
    assert_int_equal(jnum(&r, r.json, "sold"), 3000);
    assert_int_equal(jnum(&r, r.json, "final_stock"), 0);
    assert_true(ok <= 3000);

    /* Every instance served a share, and the shares add up. */
    const cJSON *urls = cJSON_GetObjectItemCaseSensitive(r.json, "urls"), *u;
    assert_int_equal(cJSON_GetArraySize(urls), FLEET);
    long long total = 0;
    cJSON_ArrayForEach(u, urls) {
        long long n = jnum(&r, u, "requests");
        if (n <= 0)
            fail_msg("instance %s served no request: %s", h_jstr(u, "url"), r.out);
        total += n;
    }
    assert_int_equal(total, 9000);

    /* Redis' records: the stock key and one order record per unit sold. */
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(order_keys(sku), 3000);
    for (int i = 0; i < FLEET; i++)
        assert_int_equal(H_GET_STOCK(fleet[i], sku), 0);

    /* The instances' own counters: each sold some, together exactly the
     * stock (a replayed sale answers "duplicate", never "ok" twice). */
    long long sold_by_instances = 0;
    for (int i = 0; i < FLEET; i++) {
        char *m = H_METRICS(fleet[i]);
        long long n = (long long)h_metric(m, "nerve_sales_total", "result=\"ok\"");
        free(m);
        printf("fleet stress: instance %d sold %lld\n", i + 1, n);
        if (n <= 0)
            fail_msg("instance %d sold nothing (nerve_sales_total{result=\"ok\"} = %lld)",
                     i + 1, n);
        sold_by_instances += n;
    }
    assert_int_equal(sold_by_instances, 3000);
    h_run_free(&r);

    /* One order_id racing through the three instances at once sells once:
     * one fresh 200, every other answer the same sale, "duplicate": true. */
    const char *race = "fleet-race";
    H_SET_STOCK(fleet[0], race, 100);
    h_load loads[FLEET];
    for (int i = 0; i < FLEET; i++) {
        loads[i] = (h_load){ .d = fleet[i], .path = "/sale", .sku = race, .qty = 3,
                             .order_id = "race-1", .clients = 8, .requests = 8, .together = true,
                             .timeout_ms = 10000 };
        assert_int_equal(h_load_start(&loads[i]), 0);
    }
    int fresh = 0, dups = 0;
    for (int i = 0; i < FLEET; i++) {
        assert_int_equal(h_load_wait(&loads[i]), 0);
        for (int k = 0; k < loads[i].requests; k++) {
            const h_sale_rec *rec = &loads[i].recs[k];
            long long left = -1, qty = -1;
            if (rec->status != 200 || !h_jll(rec->json, "stock_remaining", &left) ||
                !h_jll(rec->json, "qty", &qty) || left != 97 || qty != 3)
                fail_msg("order race-1 through instance %d: expected 200 with qty 3 and "
                         "stock_remaining 97, got %ld %s", i + 1, rec->status, rec->body);
            if (h_jbool(rec->json, "duplicate") == 1)
                dups++;
            else
                fresh++;
        }
        h_load_free(&loads[i]);
    }
    if (fresh != 1)
        fail_msg("order race-1 sent 24 times through 3 instances at once: expected 1 fresh sale "
                 "and 23 duplicates, got %d fresh and %d duplicates", fresh, dups);
    assert_int_equal(H_REDIS_STOCK(redis, race), 97);
    assert_int_equal(order_keys(race), 1);
    fleet_stop();
    h_pass();
}

/* --- 2. the kill switch engages once fleet-wide ------------------------------- */

static void test_kill_once_fleet_wide(void **state)
{
    (void)state;
    const char *sku = "fleet-kill", *scope = "sku:fleet-kill";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-inventory", "inventory.lua", INVENTORY_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, hook_set, "bus.channels=[inventory_events]",
                           "panic.max_attempts=3", "panic.backoff_initial_ms=50", NULL };
    drop_streams();
    fleet_start(sets);
    H_WAIT_SUBSCRIBERS(redis, "inventory_events", FLEET);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);
    H_SET_STOCK(fleet[0], sku, 24);

    /* 30 sales for 24 units, ten through each instance, all at once. */
    h_load loads[FLEET];
    char prefix[FLEET][32];
    for (int i = 0; i < FLEET; i++) {
        snprintf(prefix[i], sizeof prefix[i], "fk-%d", i);
        loads[i] = (h_load){ .d = fleet[i], .path = "/sale", .sku = sku, .qty = 1,
                             .order_prefix = prefix[i], .clients = 5, .requests = 10,
                             .together = true, .timeout_ms = 10000 };
        assert_int_equal(h_load_start(&loads[i]), 0);
    }
    int ok = 0, oos = 0;
    for (int i = 0; i < FLEET; i++) {
        assert_int_equal(h_load_wait(&loads[i]), 0);
        printf("fleet kill: instance %d: %d sold, %d out of stock\n", i + 1,
               loads[i].by_status[200], loads[i].by_status[409]);
        if (loads[i].by_status[200] + loads[i].by_status[409] != 10)
            fail_msg("instance %d: expected only 200 and 409 answers, got %d + %d of 10 "
                     "(503: %d, transport errors: %d)", i + 1, loads[i].by_status[200],
                     loads[i].by_status[409], loads[i].by_status[503], loads[i].transport_errors);
        if (loads[i].by_status[200] < 4)
            fail_msg("instance %d sold %d units: expected at least 4 (24 units, 10 "
                     "requests per instance)", i + 1, loads[i].by_status[200]);
        ok += loads[i].by_status[200];
        oos += loads[i].by_status[409];
        h_load_free(&loads[i]);
    }
    assert_int_equal(ok, 24);
    assert_int_equal(oos, 6);

    /* Stock under the threshold: the stock events at or under 5, each
     * evaluated by one instance -- one engagement. */
    cJSON_Delete(H_WAIT_KILL(redis, scope, NULL, 5000));
    H_SUB_WAIT(alerts, "kill_switch", scope, 1, 5000);
    assert_int_equal(mock_wait_requests(hook, 1, 5000), 0);
    cJSON *rec = H_WAIT_KILL(redis, scope, "stopped", 5000);
    wait_evaluations("fleet_inventory", 5000);

    /* More events under the threshold, through every instance. */
    H_SET_STOCK(fleet[1], sku, 4);
    for (int i = 0; i < 4; i++) {
        h_resp r;
        h_sale(fleet[i % FLEET], "/sale", sku, 1, NULL, &r);
        long long left = -1;
        if (r.status != 200 || !h_jll(r.json, "stock_remaining", &left) || left != 3 - i)
            fail_msg("sale %d through instance %d: expected 200 with stock_remaining %d, got "
                     "%ld %s %s", i + 1, i % FLEET + 1, 3 - i, r.status, r.body, r.err);
        h_resp_free(&r);
    }
    wait_evaluations("fleet_inventory", 5000);
    /* Each stock event under the threshold evaluated by one instance: one
     * kill decision fleet-wide per such entry (the concurrent sales' commits
     * down to 0, the admin set to 4, then 3..0 one commit each). */
    long long kills = 0, want = stock_events_at_most(sku, 5);
    for (int i = 0; i < FLEET; i++)
        kills += rule_decisions(fleet[i], "fleet_inventory", "kill");
    if (want < 6 || kills != want)
        fail_msg("expected one kill decision fleet-wide per stock event at or under 5 (%lld "
                 "in the stream, at least 6: the admin set and 4 sales), got %lld", want, kills);

    /* Settle, then count: one record, one alert, one webhook call. */
    H_SUB_PUMP(alerts, 500);
    if (h_sub_count(alerts, "kill_switch", scope) != 1) {
        h_sub_print(alerts, "kill_switch", scope);
        fail_msg("expected exactly 1 kill_switch alert for %s on " ALERTS " (%lld kill decisions "
                 "over 3 instances), got %d", scope, kills, h_sub_count(alerts, "kill_switch", scope));
    }
    if (mock_requests(hook) != 1) {
        for (size_t i = 0; i < mock_requests(hook); i++)
            printf("  webhook call %zu: %s\n", i + 1, mock_request(hook, i)->body);
        fail_msg("expected exactly 1 emergency-stop webhook call fleet-wide, got %zu",
                 mock_requests(hook));
    }
    cJSON *body = cJSON_Parse(mock_request(hook, 0)->body);
    assert_non_null(body);
    assert_string_equal(h_jstr(body, "scope"), scope);
    assert_string_equal(h_jstr(body, "rule"), "fleet_inventory");
    /* Whichever instance decided first (the events are shared out, so not
     * necessarily the one of stock 5): its reason is the record's. */
    const char *why = h_jstr(body, "reason");
    assert_non_null(why);
    assert_true(strncmp(why, "stock of fleet-kill is ", 23) == 0);
    assert_string_equal(why, h_jstr(rec, "reason"));
    cJSON_Delete(body);
    assert_int_equal(count_keys(H_PREFIX "kill:sku:fleet-kill*"), 1);
    assert_int_equal(redis_ll(h_redis_cmd(redis, "SISMEMBER " H_PREFIX "kills %s", scope)), 1);

    /* The winner wrote the record and published the alert; it is one of
     * the three. */
    const char *inst = h_jstr(rec, "instance");
    assert_non_null(inst);
    const cJSON *a = h_sub_find(alerts, "kill_switch", scope, 0, NULL);
    assert_string_equal(h_jstr(a, "instance"), inst);
    assert_string_equal(h_jstr(a, "level"), "critical");
    /* host:pid:random */
    const char *colon = strchr(inst, ':');
    long pid = colon ? strtol(colon + 1, NULL, 10) : -1;
    bool ours = false;
    for (int i = 0; i < FLEET; i++)
        ours |= pid == (long)fleet[i]->pid;
    if (!ours)
        fail_msg("the kill record names instance %s, none of the fleet's pids", inst);
    long long attempts = -1;
    assert_true(h_jll(rec, "attempts", &attempts));
    assert_int_equal(attempts, 1);
    cJSON_Delete(rec);

    /* Every instance lists it. */
    for (int i = 0; i < FLEET; i++) {
        h_resp r;
        assert_int_equal(h_http(fleet[i], "GET", "/killswitch", NULL, &r, NULL), 200);
        int seen = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r.json, "engaged")) {
            const char *s = h_jstr(it, "scope");
            seen += s && strcmp(s, scope) == 0;
        }
        if (seen != 1)
            fail_msg("instance %d: GET /killswitch lists %s %d times: %s", i + 1, scope, seen,
                     r.body);
        h_resp_free(&r);
    }
    fleet_stop();
    h_pass();
}

/* --- 3. alert throttling is fleet-wide ----------------------------------------- */

static void test_throttle_fleet_wide(void **state)
{
    (void)state;
    const char *scope = "fleet:t3";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-alerts", "every.lua", ALERT_EVERY_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "bus.channels=[fleet_events]", "alerts.throttle_s=60", NULL };
    fleet_start(sets);
    H_WAIT_SUBSCRIBERS(redis, "fleet_events", FLEET);
    h_sub *alerts = H_SUB_OPEN(redis, ALERTS);

    for (int i = 1; i <= 10; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"n\":%d}", i);
        long long got = redis_ll(h_redis_cmd(redis, "PUBLISH fleet_events %s", ev));
        if (got != FLEET)
            fail_msg("PUBLISH fleet_events reached %lld subscribers, expected %d", got, FLEET);
    }
    wait_each_evaluations("fleet_alert_every", 10, 5000);
    H_SUB_PUMP(alerts, 500);
    int n = h_sub_count(alerts, "rule_alert", scope);
    if (n != 1) {
        h_sub_print(alerts, "rule_alert", scope);
        fail_msg("10 events x 3 instances, alerts.throttle_s=60: expected exactly 1 rule_alert "
                 "for fleet_alert_every/%s on " ALERTS ", got %d", scope, n);
    }
    const cJSON *a = h_sub_find(alerts, "rule_alert", scope, 0, NULL);
    assert_string_equal(h_jstr(a, "rule"), "fleet_alert_every");
    assert_string_equal(h_jstr(a, "level"), "warning");
    long long sup = 0;
    if (cJSON_HasObjectItem(a, "suppressed") && (!h_jll(a, "suppressed", &sup) || sup != 0))
        fail_msg("the first alert: expected no or zero \"suppressed\", got %lld", sup);

    /* The other 29 evaluations were counted as suppressed, fleet-wide. */
    long long counted = -1;
    int rc = h_redis_get_ll(redis,
                            H_PREFIX "throttle:{fleet_alert_every|fleet:t3|warning}:suppressed",
                            &counted);
    if (rc != 0 || counted != 29)
        fail_msg("suppressed counter in Redis: expected 29 (30 evaluations, 1 published), got "
                 "%lld (rc %d)", counted, rc);
    long long ttl = redis_ll(h_redis_cmd(redis, "TTL " H_PREFIX
                                         "throttle:{fleet_alert_every|fleet:t3|warning}"));
    if (ttl <= 0 || ttl > 60)
        fail_msg("throttle marker TTL: expected 1..60 s, got %lld", ttl);
    fleet_stop();
    h_pass();
}

/* --- 4. an instance dies holding a lock; kill -9 under load ---------------- */

/* The books of one SKU: what the clients were told. */
typedef struct book {
    long long sold;             /* units known sold: 200s + replays that found them sold */
    long long answered_ok;      /* 200 answers to the first request */
    long long replayed, replay_had_sold, replay_sold_now, replay_not_sold;
} book;

/* POST /sale {SKU, 1, OID} to D until it is answered with anything but 503
 * (the lock of a dead holder may still be there). */
static long sale_settled(const h_daemon *d, const char *sku, const char *oid, h_resp *r)
{
    double dl = h_deadline(LOCK_TTL_MS + 5000);
    for (;;) {
        long st = h_sale(d, "/sale", sku, 1, oid, r);
        if (st != 503 || !h_before(dl))
            return st;
        h_resp_free(r);
    }
}

/* Resend OID (first answered STATUS: 0 or 503) to SURVIVOR and book what it
 * says: 200 (duplicate: it had sold; fresh: it sells now) or 409. */
static void replay(const h_daemon *survivor, const char *sku, const char *oid, long status,
                   book *b)
{
    h_resp r;
    long st = sale_settled(survivor, sku, oid, &r);
    b->replayed++;
    if (st == 200) {
        b->sold++;
        if (h_jbool(r.json, "duplicate") == 1)
            b->replay_had_sold++;
        else
            b->replay_sold_now++;
        const char *o = h_jstr(r.json, "order_id");
        if (o == NULL || strcmp(o, oid) != 0)
            fail_msg("replay of %s: the answer names order %s: %s", oid, o ? o : "(none)", r.body);
    } else if (st == 409) {
        b->replay_not_sold++;
    } else {
        fail_msg("replay of %s (first answer %ld) on %s: expected 200 or 409, got %ld %s %s", oid,
                 status, survivor->base, st, r.body, r.err);
    }
    h_resp_free(&r);
}

/* Book the records of load L (order ids PREFIX-i): every 200 must be a fresh
 * sale echoing its order_id with a stock_remaining matching the order's
 * record in Redis ("qty:stock_remaining"); unanswered and 503 are replayed
 * on SURVIVOR. */
static void book_load(h_load *l, const char *prefix, const h_daemon *survivor, book *b)
{
    redisContext *c = h_redis_connect(redis);
    assert_non_null(c);
    int pending = 0;
    for (int i = 0; i < l->requests; i++) {
        h_sale_rec *rec = &l->recs[i];
        if (!rec->sent || rec->status != 200)
            continue;
        redisAppendCommand(c, "GET " H_PREFIX "{p%d}:order:%s:%s-%d", keys_partition(l->sku, H_PARTITIONS), l->sku, prefix, i);
        pending++;
    }
    for (int i = 0; i < l->requests; i++) {
        h_sale_rec *rec = &l->recs[i];
        if (!rec->sent)
            continue;
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", prefix, i);
        if (rec->status == 200) {
            redisReply *rep = NULL;
            if (redisGetReply(c, (void **)&rep) != REDIS_OK)
                fail_msg("redis: %s", c->errstr);
            pending--;
            long long left = -1;
            const char *o = h_jstr(rec->json, "order_id");
            if (h_jbool(rec->json, "duplicate") == 1 ||
                !h_jll(rec->json, "stock_remaining", &left) || o == NULL || strcmp(o, oid) != 0)
                fail_msg("order %s: a 200 that is not a fresh sale of it: %s", oid, rec->body);
            char want[64];
            snprintf(want, sizeof want, "1:%lld", left);
            if (rep->type != REDIS_REPLY_STRING || strcmp(rep->str, want) != 0)
                fail_msg("order %s answered 200 with stock_remaining %lld, but its record in "
                         "Redis is %s (expected \"%s\")", oid, left,
                         rep->type == REDIS_REPLY_STRING ? rep->str : "(none)", want);
            freeReplyObject(rep);
            b->sold++;
            b->answered_ok++;
        } else if (rec->status == 0 || rec->status == 503) {
            replay(survivor, l->sku, oid, rec->status, b);
        } else if (rec->status != 409) {
            fail_msg("order %s: unexpected answer %ld %s", oid, rec->status, rec->body);
        }
    }
    assert_int_equal(pending, 0);
    redisFree(c);
}

/* Resend up to N orders of L answered 200 (the first and last N/2) to
 * SURVIVOR: each must answer the first result, "duplicate": true. */
static void expect_duplicates(h_load *l, const char *prefix, const h_daemon *survivor, int n)
{
    int oks = 0;
    for (int i = 0; i < l->requests; i++)
        oks += l->recs[i].sent && l->recs[i].status == 200;
    int seen = 0;
    for (int i = 0; i < l->requests; i++) {
        h_sale_rec *rec = &l->recs[i];
        if (!rec->sent || rec->status != 200)
            continue;
        seen++;
        if (seen > n / 2 && seen <= oks - n / 2)
            continue;
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", prefix, i);
        long long was = -1, now = -1;
        h_jll(rec->json, "stock_remaining", &was);
        h_resp r;
        long st = sale_settled(survivor, l->sku, oid, &r);
        if (st != 200 || h_jbool(r.json, "duplicate") != 1 ||
            !h_jll(r.json, "stock_remaining", &now) || now != was)
            fail_msg("order %s (answered 200, stock_remaining %lld) resent to %s: expected 200 "
                     "\"duplicate\": true with the same stock_remaining, got %ld %s", oid, was,
                     survivor->base, st, r.body);
        h_resp_free(&r);
    }
}

/* Add ONE, the books of the replay of ORDER, first answered 503 for a lock
 * wait, to B: a lock wait sells nothing, so the replay must not find it sold. */
static void book_lock_wait_replay(book *b, const book *one, const char *order)
{
    if (one->replay_had_sold)
        fail_msg("order %s answered 503 (lock wait) but had sold", order);
    b->sold += one->sold;
    b->replayed += one->replayed;
    b->replay_sold_now += one->replay_sold_now;
    b->replay_not_sold += one->replay_not_sold;
}

/* The whole books of SKU: what the clients were told sold is exactly what
 * left the stock, and what Redis recorded as orders. */
static void expect_books(const char *sku, long long initial, const book *b)
{
    long long final = H_REDIS_STOCK(redis, sku), orders = order_keys(sku);
    printf("fleet books: %s: initial %lld, final %lld, sold %lld (200s %lld; replayed %lld: had "
           "sold %lld, sold now %lld, not sold %lld), order records %lld\n", sku, initial, final,
           b->sold, b->answered_ok, b->replayed, b->replay_had_sold, b->replay_sold_now,
           b->replay_not_sold, orders);
    if (b->sold != initial - final)
        fail_msg("%s: units the clients were told sold (%lld) != initial - final (%lld - %lld = "
                 "%lld)", sku, b->sold, initial, final, initial - final);
    if (orders != b->sold)
        fail_msg("%s: %lld order records in Redis, %lld units sold", sku, orders, b->sold);
}

/* Sales of SKU with fresh order ids PREFIX-k, round-robin over D[0..N-1],
 * from now until the first 200 (or DEADLINE): every earlier answer must be
 * a 503 (lock wait). The time of the first 200's answer. Then the 503s are
 * resent: a lock-wait 503 sold nothing, so each must sell now, fresh. All
 * of it is booked in B. */
static double first_sale(h_daemon *const *d, int n, const char *sku, const char *prefix,
                         double deadline, book *b)
{
    int k;
    double t = 0;
    bool sold = false;
    for (k = 0; !sold && h_before(deadline); k++) {
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", prefix, k);
        h_resp r;
        long st = h_sale(d[k % n], "/sale", sku, 1, oid, &r);
        t = h_now();
        if (st == 200) {
            if (h_jbool(r.json, "duplicate") == 1)
                fail_msg("a fresh order %s answered as a duplicate: %s", oid, r.body);
            h_resp_free(&r);
            b->sold++;
            b->answered_ok++;
            sold = true;
            break;
        }
        if (st != 503)
            fail_msg("sale %s on %s while the lock is held: expected 503 (lock wait), got %ld "
                     "%s %s", oid, d[k % n]->base, st, r.body, r.err);
        H_ASSERT_ERROR(&r, 503, "unavailable");
        if (!h_header(&r, "Retry-After", NULL, 0))
            fail_msg("503 without Retry-After: %s", r.body);
        h_resp_free(&r);
    }
    if (!sold)
        fail_msg("no sale of %s before the deadline (%d answered 503)", sku, k);
    for (int j = 0; j < k; j++) {
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", prefix, j);
        book one = { 0 };
        replay(d[(j + 1) % n], sku, oid, 503, &one);
        book_lock_wait_replay(b, &one, oid);
    }
    return t;
}

/* The redis-side receive queue of the connection from 127.0.0.1:PEER to our
 * redis (bytes sent by the client and not yet read by the server); -1 when
 * there is no such connection. */
static long redis_rx_queue(int peer)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL)
        return -1;
    char line[512];
    long q = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned lip, lport, rip, rport, st;
        unsigned long txq, rxq;
        if (sscanf(line, " %*u: %8X:%4X %8X:%4X %2X %8lX:%8lX", &lip, &lport, &rip, &rport, &st,
                   &txq, &rxq) == 7 && (int)lport == redis->port && (int)rport == peer)
            q = (long)rxq;
    }
    fclose(f);
    return q;
}

/* A MONITOR line `TS [DB ADDR] "SET" "KEY" "TOKEN" ...` from a TCP client:
 * its port and token. */
static bool monitor_set(const char *line, const char *key, int *port, char *tok, size_t toklen)
{
    const char *br = strchr(line, '['), *end = br ? strchr(br, ']') : NULL;
    const char *sp = br ? strchr(br, ' ') : NULL;
    if (end == NULL || sp == NULL || sp > end || strncasecmp(end, "] \"SET\" \"", 9) != 0)
        return false;
    const char *colon = NULL;
    for (const char *p = sp; p < end; p++)
        if (*p == ':')
            colon = p;
    if (colon == NULL)
        return false;           /* [0 lua]: a script's own command */
    const char *k = end + 9;
    size_t kl = strlen(key);
    if (strncmp(k, key, kl) != 0 || strncmp(k + kl, "\" \"", 3) != 0)
        return false;
    const char *t = k + kl + 3, *te = strchr(t, '"');
    if (te == NULL || (size_t)(te - t) >= toklen)
        return false;
    memcpy(tok, t, (size_t)(te - t));
    tok[te - t] = '\0';
    *port = (int)strtol(colon + 1, NULL, 10);
    return true;
}

static redisContext *monitor;   /* closed by the teardown */
static h_load loads4[FLEET], victim_sale;   /* stopped by the teardown */
static pid_t stopped_pid;       /* an instance left SIGSTOPped: continued by the teardown */

/* Watch MONITOR until some TCP client SETs KEY (a token other than FOREIGN)
 * twice: the instance asked to sell has found the lock busy and is in its
 * retry loop. That client's port, or a failed test after MS. */
static int wait_lock_retry(const char *key, const char *foreign, int ms)
{
    double dl = h_deadline(ms);
    int ports[16] = { 0 }, seen[16] = { 0 }, np = 0;
    while (h_before(dl)) {
        void *reply = NULL;
        if (redisGetReplyFromReader(monitor, &reply) != REDIS_OK)
            fail_msg("monitor: %s", monitor->errstr);
        if (reply) {
            redisReply *rep = reply;
            int port;
            char tok[128];
            if (rep->type == REDIS_REPLY_STATUS &&
                monitor_set(rep->str, key, &port, tok, sizeof tok) && strcmp(tok, foreign) != 0) {
                int i = 0;
                while (i < np && ports[i] != port)
                    i++;
                if (i == np && np < 16)
                    ports[np++] = port;
                if (i < np && ++seen[i] >= 2) {
                    freeReplyObject(rep);
                    return port;
                }
            }
            freeReplyObject(rep);
            continue;
        }
        struct pollfd pf = { monitor->fd, POLLIN, 0 };
        if (poll(&pf, 1, 10) > 0 && redisBufferRead(monitor) != REDIS_OK)
            fail_msg("monitor: %s", monitor->errstr);
    }
    fail_msg("nobody retried SET %s within %d ms while it was held", key, ms);
    return -1;
}

/* Make VICTIM send `SET LOCK_KEY <its token> NX PX ttl` into a paused
 * Redis, so that Redis runs it only when resumed, whatever VICTIM does in
 * between (dies, stalls). We hold LOCK_KEY with a foreign token for
 * FOREIGN_MS and ask VICTIM (through SALE, one sale of the SKU, started
 * here) to sell: MONITOR shows it retrying; Redis is paused until that
 * connection's next SET is seen waiting, unread, in Redis' socket (a pause
 * can land after Redis ran a SET but before it wrote the answer: the victim
 * then waits for it and sends nothing -- resume and pause again; its
 * retries are at most 50 ms apart); then our lock's TTL is waited out.
 * Returns with Redis paused; the victim's port, the pauses it took and the
 * bytes seen waiting into *PAUSES and *RXQ. */
static int pause_with_set_pending(h_load *sale, const char *lock_key, int foreign_ms,
                                  double *t_stop, int *pauses, long *rxq)
{
    monitor = h_redis_connect(redis);
    assert_non_null(monitor);
    redisReply *rep = redisCommand(monitor, "MONITOR");
    assert_non_null(rep);
    freeReplyObject(rep);
    double t_f = h_now();
    rep = h_redis_cmd(redis, "SET %s foreign-holder PX %d", lock_key, foreign_ms);
    assert_non_null(rep);
    freeReplyObject(rep);
    double t_set = h_now();         /* our lock expires before t_set + foreign_ms */
    assert_int_equal(h_load_start(sale), 0);
    int port = wait_lock_retry(lock_key, "foreign-holder", foreign_ms - 500);
    redisFree(monitor);
    monitor = NULL;
    *pauses = 0;
    *rxq = 0;
    for (;;) {
        if (h_now() > t_f + (foreign_ms - 200) / 1000.0)
            fail_msg("setup: no SET of the victim caught waiting in a paused Redis in %d pauses "
                     "before our %d ms lock expired", *pauses, foreign_ms);
        assert_int_equal(h_redis_pause(redis), 0);
        *t_stop = h_now();
        (*pauses)++;
        double dl = h_deadline(100);
        while (h_before(dl) && (*rxq = redis_rx_queue(port)) <= 0)
            h_nap();
        if (*rxq > 0)
            break;
        assert_int_equal(h_redis_resume(redis), 0);
        h_nap();
    }
    while (h_now() < t_set + foreign_ms / 1000.0 + 0.05)    /* our lock's TTL runs out */
        h_nap();
    return port;
}

/* LOCK_KEY's holder (not our foreign token) and PTTL, once Redis ran the
 * victim's SET (polled: just resumed, Redis may answer us before it reads
 * the victim's socket); fails the test (a setup failure) otherwise. */
static long long expect_victim_holds(const char *lock_key, char *holder, size_t len, int port,
                                     long rxq)
{
    double dl = h_deadline(1000);
    long long pttl = -2;
    do {
        redisReply *rep = h_redis_cmd(redis, "GET %s", lock_key);
        assert_non_null(rep);
        holder[0] = '\0';
        if (rep->type == REDIS_REPLY_STRING)
            snprintf(holder, len, "%s", rep->str);
        freeReplyObject(rep);
        pttl = redis_ll(h_redis_cmd(redis, "PTTL %s", lock_key));
        if (holder[0] != '\0' && strcmp(holder, "foreign-holder") != 0 && pttl > 0 &&
            pttl <= LOCK_TTL_MS)
            return pttl;
        h_nap();
    } while (h_before(dl));
    fail_msg("setup: expected %s held by the victim's token with a PTTL of at most %d ms, got "
             "holder '%s' PTTL %lld (bytes seen waiting: %ld, now %ld)", lock_key, LOCK_TTL_MS,
             holder, pttl, rxq, redis_rx_queue(port));
    return -1;
}

/* The fleet of the lock tests: the quiet rule, lock.ttl_ms LOCK_TTL_MS,
 * lock.max_wait_ms LOCK_WAIT_MS, and a long command timeout: Redis is paused
 * for a second and a half, which must not look like a broken connection. */
static void fleet_start_locking(void)
{
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-quiet", "quiet.lua", QUIET_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "bus.channels=[fleet_quiet]", "lock.ttl_ms=" H_STR(LOCK_TTL_MS),
                           "lock.max_wait_ms=" H_STR(LOCK_WAIT_MS),
                           "redis.command_timeout_ms=10000", NULL };
    fleet_start(sets);
}

static void test_dead_lock_holder(void **state)
{
    (void)state;
    fleet_start_locking();

    /* --- A. a holder that died: a foreign token with the lock TTL. Every
     * instance waits it out and none sells before it expires. */
    const char *sku_a = "fleet-held", *lock_a = H_PREFIX "{p5}:lock:fleet-held";
    book ba = { 0 };
    H_SET_STOCK(fleet[0], sku_a, 50);
    double t0 = h_now();
    redisReply *rep = h_redis_cmd(redis, "SET %s dead-holder-a PX %d", lock_a, LOCK_TTL_MS);
    assert_non_null(rep);
    freeReplyObject(rep);
    /* One sale through each instance at once: each waits lock.max_wait_ms
     * (less than the TTL) and answers 503. */
    h_load *held = loads4;
    static const char *const hprefix[FLEET] = { "held-a0", "held-a1", "held-a2" };
    for (int i = 0; i < FLEET; i++) {
        held[i] = (h_load){ .d = fleet[i], .path = "/sale", .sku = sku_a, .qty = 1,
                            .order_prefix = hprefix[i], .clients = 1, .requests = 1,
                            .timeout_ms = 20000 };
        assert_int_equal(h_load_start(&held[i]), 0);
    }
    for (int i = 0; i < FLEET; i++) {
        assert_int_equal(h_load_wait(&held[i]), 0);
        const h_sale_rec *rec = &held[i].recs[0];
        if (rec->status != 503 || h_now() >= t0 + LOCK_TTL_MS / 1000.0)
            fail_msg("instance %d, a sale while another holder has the lock (%d ms): expected "
                     "503 after lock.max_wait_ms (%d ms), got %ld after %.0f ms: %s", i + 1,
                     LOCK_TTL_MS, LOCK_WAIT_MS, rec->status, rec->secs * 1000, rec->body);
    }
    double t_ok = first_sale(fleet, FLEET, sku_a, "held-a", t0 + LOCK_TTL_MS / 1000.0 + 5, &ba);
    printf("fleet lock: a dead holder's lock (TTL %d ms): first sale %.0f ms after it was taken\n",
           LOCK_TTL_MS, (t_ok - t0) * 1000);
    if (t_ok < t0 + LOCK_TTL_MS / 1000.0)
        fail_msg("a sale of %s succeeded %.0f ms after another holder took its lock for %d ms",
                 sku_a, (t_ok - t0) * 1000, LOCK_TTL_MS);
    if (t_ok > t0 + LOCK_TTL_MS / 1000.0 + 1.0)
        fail_msg("the first sale of %s came %.0f ms after a dead holder took its lock: expected "
                 "within the TTL (%d ms) + 1000 ms", sku_a, (t_ok - t0) * 1000, LOCK_TTL_MS);
    for (int i = 0; i < FLEET; i++) {
        char oid[32];
        snprintf(oid, sizeof oid, "held-a-after-%d", i);
        h_resp r;
        if (h_sale(fleet[i], "/sale", sku_a, 1, oid, &r) != 200)
            fail_msg("instance %d after the lock expired: expected 200, got %ld %s", i + 1,
                     r.status, r.body);
        h_resp_free(&r);
        ba.sold++;
        ba.answered_ok++;
    }
    for (int i = 0; i < FLEET; i++) {
        book one = { 0 };
        char oid[32];
        snprintf(oid, sizeof oid, "%s-0", hprefix[i]);
        book_load(&held[i], hprefix[i], fleet[(i + 1) % FLEET], &one);
        book_lock_wait_replay(&ba, &one, oid);
        h_load_free(&held[i]);
    }
    expect_books(sku_a, 50, &ba);

    /* --- B. kill -9 of the first instance under load, while it holds the
     * lock of another SKU. Load on SKU L through all three; the victim is
     * asked to sell SKU S while we hold its lock, and Redis is paused with
     * the victim's next `SET S:lock NX PX` unread in its socket
     * (pause_with_set_pending); the victim is killed -9 and Redis resumed:
     * Redis then runs that SET for a process that is gone. */
    h_daemon *victim = fleet[0];
    h_daemon *survivors[2] = { fleet[1], fleet[2] };
    const char *sku_l = "fleet-load", *sku_s = "fleet-dead";
    const char *lock_s = H_PREFIX "{p4}:lock:fleet-dead";
    const long long stock_l = 1000000, stock_s = 10;
    H_SET_STOCK(fleet[1], sku_l, stock_l);
    H_SET_STOCK(fleet[1], sku_s, stock_s);

    h_load *loads = loads4;
    static const char *const lprefix[FLEET] = { "load-v", "load-a", "load-b" };
    for (int i = 0; i < FLEET; i++) {
        loads[i] = (h_load){ .d = fleet[i], .path = "/sale", .sku = sku_l, .qty = 1,
                             .order_prefix = lprefix[i], .clients = 4, .requests = 100000,
                             .timeout_ms = 20000 };
        assert_int_equal(h_load_start(&loads[i]), 0);
    }
    double dl = h_deadline(10000);
    while (h_before(dl) && (h_load_completed(&loads[0]) < 200 ||
                            h_load_completed(&loads[1]) < 200 || h_load_completed(&loads[2]) < 200))
        h_nap();
    for (int i = 0; i < FLEET; i++)
        if (h_load_completed(&loads[i]) < 200)
            fail_msg("load on instance %d: only %d answers in 10 s", i + 1,
                     h_load_completed(&loads[i]));

    h_load *vs = &victim_sale;
    *vs = (h_load){ .d = victim, .path = "/sale", .sku = sku_s, .qty = 1, .order_id = "dead-v",
                    .clients = 1, .requests = 1, .timeout_ms = 20000 };
    double t_stop;
    int pauses;
    long rxq;
    int port = pause_with_set_pending(vs, lock_s, 1500, &t_stop, &pauses, &rxq);
    h_load_stop(&loads[0]);         /* in flight now, and nothing new for the victim */
    assert_int_equal(kill(victim->pid, SIGKILL), 0);
    dl = h_deadline(10000);
    while (h_before(dl) && h_daemon_alive(victim))
        h_nap();
    if (victim->pid != 0)
        fail_msg("the victim (pid %d) still runs 10 s after SIGKILL", (int)victim->pid);
    double t_kill = h_now();
    assert_int_equal(h_redis_resume(redis), 0);
    printf("fleet lock: victim killed -9 %.0f ms after Redis was paused (pause %d; its pending "
           "bytes on port %d: %ld); Redis resumed\n", (t_kill - t_stop) * 1000, pauses, port, rxq);

    /* The victim's SET ran after its death: S is locked by nobody alive. */
    char holder[128];
    long long pttl = expect_victim_holds(lock_s, holder, sizeof holder, port, rxq);
    double t_check = h_now();
    printf("fleet lock: %s held by the dead instance (token %s), PTTL %lld ms\n", lock_s, holder,
           pttl);

    /* Under load, the survivors sell L at once (its lock, if the victim
     * held it, within the TTL) and S only once the dead holder's lock
     * expired, within the TTL plus a margin. */
    book bl = { 0 }, bs = { 0 };
    double t_l = first_sale(survivors, 2, sku_l, "probe-l", t_kill + LOCK_TTL_MS / 1000.0 + 5, &bl);
    printf("fleet lock: first sale of %s on a survivor %.0f ms after the kill\n", sku_l,
           (t_l - t_kill) * 1000);
    if (t_l - t_kill > LOCK_TTL_MS / 1000.0 + 1.0)
        fail_msg("the survivors sold %s again only %.0f ms after the kill: expected within the "
                 "lock TTL (%d ms) + 1000 ms", sku_l, (t_l - t_kill) * 1000, LOCK_TTL_MS);
    double t_s = first_sale(survivors, 2, sku_s, "probe-s", t_kill + LOCK_TTL_MS / 1000.0 + 5, &bs);
    printf("fleet lock: first sale of %s on a survivor %.0f ms after the kill (the dead holder's "
           "lock had %lld ms left at %.0f ms)\n", sku_s, (t_s - t_kill) * 1000, pttl,
           (t_check - t_kill) * 1000);
    if (t_s < t_check + pttl / 1000.0 - 0.005)
        fail_msg("a survivor sold %s %.0f ms after the kill, while the dead instance's lock still "
                 "had %.0f ms to live", sku_s, (t_s - t_kill) * 1000,
                 (t_check + pttl / 1000.0 - t_s) * 1000);
    if (t_s - t_kill > LOCK_TTL_MS / 1000.0 + 1.0)
        fail_msg("the survivors sold %s again only %.0f ms after the kill: expected within the "
                 "lock TTL (%d ms) + 1000 ms", sku_s, (t_s - t_kill) * 1000, LOCK_TTL_MS);

    /* Stop the load and settle the books. */
    h_load_stop(&loads[1]);
    h_load_stop(&loads[2]);
    for (int i = 0; i < FLEET; i++)
        assert_int_equal(h_load_wait(&loads[i]), 0);
    assert_int_equal(h_load_wait(vs), 0);
    for (int i = 0; i < FLEET; i++)
        printf("fleet lock: load on instance %d: %d sent, %d sold, %d x 503, %d unanswered\n",
               i + 1, loads[i].sent, loads[i].by_status[200], loads[i].by_status[503],
               loads[i].transport_errors);
    if (vs->recs[0].status != 0)
        fail_msg("the victim answered the sale it was killed in: %ld %s", vs->recs[0].status,
                 vs->recs[0].body);
    for (int i = 0; i < FLEET; i++)
        book_load(&loads[i], lprefix[i], survivors[i % 2], &bl);
    expect_duplicates(&loads[0], lprefix[0], survivors[0], 40);
    expect_duplicates(&loads[1], lprefix[1], survivors[1], 10);
    replay(survivors[0], sku_s, "dead-v", 0, &bs);
    if (bs.replay_had_sold)
        fail_msg("the victim died before committing order dead-v, yet its replay says it sold");
    expect_books(sku_l, stock_l, &bl);
    expect_books(sku_s, stock_s, &bs);
    for (int i = 0; i < FLEET; i++)
        h_load_free(&loads[i]);
    h_load_free(vs);

    /* The survivors are healthy and stop cleanly. */
    fleet[0] = NULL;
    printf("fleet lock: the victim was killed -9 on purpose; the harness reports it as exited:\n");
    h_daemon_stop(victim);
    fleet_stop();
    h_pass();
}

/* --- 5. a halting kill reaches the whole fleet ------------------------------- */

/* Poll a sale of SKU through D until it answers WANT (423 with SCOPE, or
 * 200); the seconds it took from T0. Fails after MS. Sales that went
 * through are counted in *SOLD. */
static double wait_sale_answer(const h_daemon *d, const char *sku, long want, const char *scope,
                               double t0, int ms, long long *sold)
{
    double dl = h_deadline(ms);
    long st = 0;
    char last[512] = "";
    while (h_before(dl)) {
        h_resp r;
        st = h_sale(d, "/sale", sku, 1, NULL, &r);
        if (st == 200)
            (*sold)++;
        snprintf(last, sizeof last, "%ld %s", st, r.body);
        bool hit = st == want;
        if (hit && want == 423) {
            H_ASSERT_ERROR(&r, 423, "sales_halted");
            const char *sc = h_jstr(r.json, "scope");
            if (sc == NULL || strcmp(sc, scope) != 0)
                fail_msg("423 from %s: expected \"scope\": \"%s\", got %s", d->base, scope, r.body);
        }
        h_resp_free(&r);
        if (hit)
            return h_now() - t0;
        if (st != 200 && st != 423)
            fail_msg("sale of %s on %s: expected 200 or 423, got %s", sku, d->base, last);
        h_nap();
    }
    fail_msg("%s: a sale of %s still answers %s after %d ms; expected %ld", d->base, sku, last,
             ms, want);
    return -1;
}

static void test_halt_reaches_fleet(void **state)
{
    (void)state;
    const char *sku = "fleet-halt", *scope = "sku:fleet-halt";
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-quiet", "quiet.lua", QUIET_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "bus.channels=[fleet_quiet]", "panic.dry_run=true", NULL };
    fleet_start(sets);
    H_WAIT_SUBSCRIBERS(redis, H_PREFIX "control", FLEET);
    H_SET_STOCK(fleet[0], sku, 1000);
    long long sold = 0;
    for (int i = 0; i < FLEET; i++)
        wait_sale_answer(fleet[i], sku, 200, NULL, h_now(), 1000, &sold);

    /* Engaged by hand on the first instance: every instance halts at once
     * (the control channel), within a second. */
    h_resp r;
    double t0 = h_now();
    h_http(fleet[0], "POST", "/admin/killswitch",
           "{\"scope\":\"sku:fleet-halt\",\"reason\":\"fleet halt\",\"halt_sales\":true}", &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200)
        fail_msg("POST /admin/killswitch: expected 200, got %ld %s", r.status, r.body);
    h_resp_free(&r);
    for (int i = 0; i < FLEET; i++) {
        double took = wait_sale_answer(fleet[i], sku, 423, scope, t0, 1000, &sold);
        printf("fleet halt: instance %d halted %.0f ms after the engagement\n", i + 1, took * 1000);
    }

    /* Reset on the second instance: every instance sells again. */
    t0 = h_now();
    h_http(fleet[1], "DELETE", "/admin/killswitch/sku:fleet-halt", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200)
        fail_msg("DELETE /admin/killswitch/%s: expected 200, got %ld %s", scope, r.status, r.body);
    h_resp_free(&r);
    for (int i = 0; i < FLEET; i++)
        wait_sale_answer(fleet[i], sku, 200, NULL, t0, 1000, &sold);

    /* A record whose announcement was lost (written straight into Redis,
     * as an instance would, without the control message): the periodic
     * refresh (every 2 s) finds it; and its removal likewise. */
    redisReply *rep = h_redis_cmd(redis, "SET " H_PREFIX "kill:%s %s", scope,
                                  "{\"scope\":\"sku:fleet-halt\",\"reason\":\"silent\","
                                  "\"rule\":\"fleet\",\"ts\":1,\"instance\":\"gone:1\","
                                  "\"state\":\"dry_run\",\"halt_sales\":true,\"attempts\":0}");
    assert_non_null(rep);
    freeReplyObject(rep);
    assert_true(redis_ll(h_redis_cmd(redis, "SADD " H_PREFIX "kills %s", scope)) >= 0);
    t0 = h_now();
    for (int i = 0; i < FLEET; i++) {
        double took = wait_sale_answer(fleet[i], sku, 423, scope, t0, 4000, &sold);
        printf("fleet halt: instance %d found the silent record after %.0f ms\n", i + 1,
               took * 1000);
    }
    assert_true(redis_ll(h_redis_cmd(redis, "DEL " H_PREFIX "kill:%s", scope)) == 1);
    assert_true(redis_ll(h_redis_cmd(redis, "SREM " H_PREFIX "kills %s", scope)) == 1);
    t0 = h_now();
    for (int i = 0; i < FLEET; i++)
        wait_sale_answer(fleet[i], sku, 200, NULL, t0, 4000, &sold);

    /* Nothing sold while halted, nothing lost. */
    assert_int_equal(H_REDIS_STOCK(redis, sku), 1000 - sold);
    assert_int_equal(order_keys(sku), sold);
    fleet_stop();
    h_pass();
}

/* --- 6. fencing: a holder stalled past its TTL cannot commit ------------------ */

/* 1 when every thread of PID is stopped (state T in /proc/PID/task/N/stat). */
static int all_threads_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    int all = 1, seen = 0;
    struct dirent *e;
    while (all && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char stat[400], line[512];
        snprintf(stat, sizeof stat, "%.60s/%s/stat", path, e->d_name);
        FILE *f = fopen(stat, "r");
        if (f == NULL)
            continue;               /* a thread that just exited */
        const char *close_paren = NULL;
        if (fgets(line, sizeof line, f))
            close_paren = strrchr(line, ')');
        fclose(f);
        seen++;
        all = close_paren && close_paren[1] == ' ' && close_paren[2] == 'T';
    }
    closedir(d);
    return all && seen > 0;
}

/* SIGSTOP PID and wait until it is stopped for real: a stop reaches the
 * threads of a process one by one, and until the last one stopped, a
 * thread can still read an answer and act on it. */
static void stop_process(pid_t pid)
{
    assert_int_equal(kill(pid, SIGSTOP), 0);
    stopped_pid = pid;
    double dl = h_deadline(5000);
    while (h_before(dl) && !all_threads_stopped(pid))
        h_nap();
    if (!all_threads_stopped(pid))
        fail_msg("pid %d: not every thread stopped within 5 s of SIGSTOP", (int)pid);
}

static void test_fencing_stalled_holder(void **state)
{
    (void)state;
    fleet_start_locking();
    const char *sku = "fleet-fence", *lock = H_PREFIX "{p15}:lock:fleet-fence";
    h_daemon *stalled = fleet[0];
    h_daemon *others[2] = { fleet[1], fleet[2] };
    H_SET_STOCK(fleet[1], sku, 10);

    /* The first instance takes the lock (its SET runs once Redis resumes)
     * but is stopped (SIGSTOP) before it reads the answer: it holds the
     * lock without knowing it, past the TTL. */
    h_load *vs = &victim_sale;
    *vs = (h_load){ .d = stalled, .path = "/sale", .sku = sku, .qty = 1, .order_id = "fence-v",
                    .clients = 1, .requests = 1, .timeout_ms = 30000 };
    double t_stop;
    int pauses;
    long rxq;
    int port = pause_with_set_pending(vs, lock, 1500, &t_stop, &pauses, &rxq);
    stop_process(stalled->pid);
    assert_int_equal(h_redis_resume(redis), 0);
    char holder[128];
    long long pttl = expect_victim_holds(lock, holder, sizeof holder, port, rxq);
    double t_check = h_now();
    printf("fleet fence: %s held by the stopped instance (token %s), PTTL %lld ms\n", lock,
           holder, pttl);

    /* The others wait its TTL out, then sell. */
    book b = { 0 };
    double t_s = first_sale(others, 2, sku, "fence-o", t_check + LOCK_TTL_MS / 1000.0 + 5, &b);
    if (t_s < t_check + pttl / 1000.0 - 0.005)
        fail_msg("another instance sold %s while the stopped instance's lock still had %.0f ms "
                 "to live", sku, (t_check + pttl / 1000.0 - t_s) * 1000);
    long long after = H_REDIS_STOCK(redis, sku);

    /* The stalled holder wakes up, believes it holds the lock and commits:
     * the commit script sees another token (or none) and refuses. */
    assert_int_equal(kill(stalled->pid, SIGCONT), 0);
    stopped_pid = 0;
    assert_int_equal(h_load_wait(vs), 0);
    const h_sale_rec *rec = &vs->recs[0];
    if (rec->status != 503)
        fail_msg("the instance stalled past its lock TTL committed order fence-v: expected 503 "
                 "(lock lost), got %ld %s", rec->status, rec->body);
    const char *code = h_jstr(rec->json, "error"), *msg = h_jstr(rec->json, "message");
    assert_non_null(code);
    assert_string_equal(code, "unavailable");
    assert_non_null(msg);
    assert_string_equal(msg, "lock on SKU fleet-fence expired before the commit; retry");
    assert_true(rec->retry_after);
    assert_int_equal(H_REDIS_STOCK(redis, sku), after);
    assert_int_equal(redis_ll(h_redis_cmd(redis, "EXISTS " H_PREFIX "{p15}:order:fleet-fence:fence-v")),
                     0);

    /* Resent, it sells once, on any instance. */
    replay(stalled, sku, "fence-v", 503, &b);
    if (b.replay_had_sold)
        fail_msg("order fence-v answered 503 (lock lost) but had sold");
    expect_books(sku, 10, &b);
    h_load_free(vs);
    fleet_stop();
    h_pass();
}

/* --- main ------------------------------------------------------------------------ */

/* --- 7. halts hold at any count ---------------------------------------------- */

#define MANY 10000

/* Write (DEL when !ON) the halting records of sku:many-00000..MANY-1 and
 * their index entries straight into Redis, pipelined, as instances that
 * engaged them would have. */
static void many_records(bool on)
{
    redisContext *c = h_redis_connect(redis);
    assert_non_null(c);
    for (int i = 0; i < MANY; i++) {
        char scope[32], rec[256];
        snprintf(scope, sizeof scope, "sku:many-%05d", i);
        snprintf(rec, sizeof rec,
                 "{\"scope\":\"%s\",\"reason\":\"many\",\"rule\":\"fleet\",\"ts\":1,"
                 "\"instance\":\"gone:1\",\"state\":\"dry_run\",\"halt_sales\":true,\"attempts\":0}",
                 scope);
        if (on) {
            redisAppendCommand(c, "SET " H_PREFIX "kill:%s %s", scope, rec);
            redisAppendCommand(c, "SADD " H_PREFIX "kills %s", scope);
        } else {
            redisAppendCommand(c, "DEL " H_PREFIX "kill:%s", scope);
            redisAppendCommand(c, "SREM " H_PREFIX "kills %s", scope);
        }
    }
    for (int i = 0; i < 2 * MANY; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || rep == NULL ||
            rep->type == REDIS_REPLY_ERROR)
            fail_msg("writing the %d records: reply %d failed", MANY, i);
        freeReplyObject(rep);
    }
    redisFree(c);
}

/* Poll sales of SKU (no stock) through D until one answers 423 naming
 * sku:SKU; the seconds it took from T0. Fails after MS. */
static double wait_halted(const h_daemon *d, const char *sku, double t0, int ms)
{
    double dl = h_deadline(ms);
    char scope[64], last[512] = "";
    snprintf(scope, sizeof scope, "sku:%s", sku);
    while (h_before(dl)) {
        h_resp r;
        long st = h_sale(d, "/sale", sku, 1, NULL, &r);
        const char *sc = h_jstr(r.json, "scope");
        bool hit = st == 423 && sc && strcmp(sc, scope) == 0;
        snprintf(last, sizeof last, "%ld %s", st, r.body);
        h_resp_free(&r);
        if (hit)
            return h_now() - t0;
        h_nap();
    }
    fail_msg("%s: a sale of %s still answers %s after %d ms; expected 423 naming %s", d->base,
             sku, last, ms, scope);
    return -1;
}

/* One sale of SKU through D answers 423 naming sku:SKU, now. */
static void expect_halted_now(const h_daemon *d, const char *sku, const char *when)
{
    h_resp r;
    char scope[64];
    snprintf(scope, sizeof scope, "sku:%s", sku);
    h_sale(d, "/sale", sku, 1, NULL, &r);
    const char *sc = h_jstr(r.json, "scope");
    bool ok = r.status == 423 && sc != NULL && strcmp(sc, scope) == 0;
    char last[512];
    snprintf(last, sizeof last, "%ld %s", r.status, r.body);
    h_resp_free(&r);
    if (!ok)
        fail_msg("%s: a sale of %s on %s answered %s; expected 423 naming %s", when, sku, d->base,
                 last, scope);
}

static void test_halts_at_any_count(void **state)
{
    (void)state;
    char rset[PATH_MAX + 16];
    H_RULES_DIR("fleet-quiet", "quiet.lua", QUIET_RULE, NULL, 0, rset, sizeof rset);
    const char *sets[] = { rset, "bus.channels=[fleet_quiet]", "panic.dry_run=true", NULL };
    fleet[0] = h_daemon_startv(redis, true, sets, 3);
    fleet[1] = h_daemon_startv(redis, true, sets, 3);
    if (fleet[0] == NULL || fleet[1] == NULL)
        fail_msg("the two instances did not start");
    H_WAIT_SUBSCRIBERS(redis, H_PREFIX "control", 2);

    /* 10,000 halts engaged elsewhere: the periodic refresh (2 s) brings
     * every one of them into both caches. */
    double t0 = h_now();
    many_records(true);
    long long sold = 0;
    for (int i = 0; i < 2; i++) {
        double took = wait_halted(fleet[i], "many-09999", t0, 8000);
        printf("fleet many: instance %d holds %d halts %.0f ms after they were written\n", i + 1,
               MANY, took * 1000);
    }
    for (int i = 0; i < MANY; i += MANY / 200) {
        char sku[32];
        snprintf(sku, sizeof sku, "many-%05d", i);
        expect_halted_now(fleet[0], sku, "10,000 halts");
        expect_halted_now(fleet[1], sku, "10,000 halts");
    }
    assert_int_equal(sold, 0);

    /* New halts on top: on the instance that engaged them before the admin
     * call returned, on the other within 50 ms. */
    double worst = 0;
    for (int v = 0; v < 3; v++) {
        char sku[32], scope[40], body[160];
        snprintf(sku, sizeof sku, "many-victim-%d", v);
        snprintf(scope, sizeof scope, "sku:%s", sku);
        H_SET_STOCK(fleet[0], sku, 100);
        h_resp r;
        for (int i = 0; i < 2; i++) {
            assert_int_equal(h_sale(fleet[i], "/sale", sku, 1, NULL, &r), 200);
            h_resp_free(&r);
        }
        snprintf(body, sizeof body, "{\"scope\":\"%s\",\"reason\":\"victim\",\"halt_sales\":true}",
                 scope);
        h_http(fleet[0], "POST", "/admin/killswitch", body, &r,
               "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        t0 = h_now();
        if (r.status != 200)
            fail_msg("POST /admin/killswitch %s: %ld %s", scope, r.status, r.body);
        h_resp_free(&r);
        expect_halted_now(fleet[0], sku, "right after the admin call returned");
        double took = wait_sale_answer(fleet[1], sku, 423, scope, t0, 1000, &sold);
        printf("fleet many: halt %d held on the other instance %.1f ms after the admin call "
               "returned (with %d halts cached)\n", v + 1, took * 1000, MANY);
        if (took > worst)
            worst = took;
    }
    if (worst > 0.050)
        fail_msg("a new halt took %.1f ms to reach the other instance; expected within 50 ms",
                 worst * 1000);
    expect_halted_now(fleet[1], "many-00000", "after the new halts");
    assert_int_equal(sold, 0);

    /* Engage and reset by hand for 5 s while the periodic refreshes (each
     * reading 10,000 records) run: a refresh that read Redis before an
     * engagement or a reset must not undo it when it swaps its result in. */
    int rounds = 0;
    double until = h_now() + 5.0;
    while (h_now() < until) {
        char sku[32], body[160], path[96];
        snprintf(sku, sizeof sku, "churn-%d", rounds);
        snprintf(body, sizeof body, "{\"scope\":\"sku:%s\",\"reason\":\"churn\",\"halt_sales\":true}", sku);
        h_resp r;
        h_http(fleet[0], "POST", "/admin/killswitch", body, &r, "Authorization: Bearer " H_ADMIN_TOKEN,
               NULL);
        if (r.status != 200)
            fail_msg("POST /admin/killswitch sku:%s: %ld %s", sku, r.status, r.body);
        h_resp_free(&r);
        expect_halted_now(fleet[0], sku, "right after the engagement (refreshes running)");
        snprintf(path, sizeof path, "/admin/killswitch/sku:%s", sku);
        h_http(fleet[0], "DELETE", path, NULL, &r, "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
        if (r.status != 200)
            fail_msg("DELETE %s: %ld %s", path, r.status, r.body);
        h_resp_free(&r);
        long st = h_sale(fleet[0], "/sale", sku, 1, NULL, &r);     /* no stock: 409 once released */
        char last[512];
        snprintf(last, sizeof last, "%ld %s", st, r.body);
        h_resp_free(&r);
        if (st != 409)
            fail_msg("round %d: a sale of %s right after its reset answered %s; expected 409",
                     rounds, sku, last);
        rounds++;
    }
    printf("fleet many: %d engage/reset rounds held while refreshes ran\n", rounds);

    many_records(false);
    fleet_stop();
    h_pass();
}

static int setup(void **state)
{
    h_hook_reset(hook);
    return h_test_setup(state);
}

static int teardown(void **state)
{
    if (monitor)
        redisFree(monitor);
    monitor = NULL;
    if (stopped_pid > 0)
        kill(stopped_pid, SIGCONT);
    stopped_pid = 0;
    /* A failed test may leave its loads running: send nothing more. */
    for (int i = 0; i < FLEET; i++)
        h_load_stop(&loads4[i]);
    h_load_stop(&victim_sale);
    int rc = h_test_teardown(state);   /* stops the instances, joins the loads */
    for (int i = 0; i < FLEET; i++) {
        fleet[i] = NULL;
        loads4[i].run = NULL;
    }
    victim_sale.run = NULL;
    return rc;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_stress_across_fleet),
        T(test_kill_once_fleet_wide),
        T(test_throttle_fleet_wide),
        T(test_dead_lock_holder),
        T(test_halt_reaches_fleet),
        T(test_fencing_stalled_holder),
        T(test_halts_at_any_count),
    };
    h_group_use(&redis, NULL, NULL);
    h_group_hook(&hook, hook_set, sizeof hook_set);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
