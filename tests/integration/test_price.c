/* test_price.c -- the catalog price and the price floor, end to end: the
 * real daemon with the shipped rules over real HTTP against a throwaway
 * redis-server (issue 9, "no client input halts sales").
 *
 * The claims: PUT /admin/stock keeps a catalog price next to the stock; a
 * client unit_price under it, or under the floor of rules/financial.lua, is
 * refused with 422 and sells nothing; the sale event carries the catalog
 * price; a halting kill for a pricing error comes only from a catalog price
 * under the floor; and no sequence of anonymous /sale requests engages a kill
 * with halt_sales. The default config's floor is
 * rules.params.financial.min_unit_price = 1.0.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "nerve/lock.h"
#include "nerve/rds.h"
#include "nerve/sale.h"

static h_redis *redis;
static h_daemon *daemon_;

#define AUTH "Authorization: Bearer " H_ADMIN_TOKEN

/* PUT /admin/stock/SKU BODY with the token. */
static long put_item(const char *sku, const char *body, h_resp *r)
{
    char path[256];
    snprintf(path, sizeof path, "/admin/stock/%s", sku);
    return h_http(daemon_, "PUT", path, body, r, AUTH, NULL);
}

#define PUT_OK(sku, body) put_ok_at((sku), (body), __FILE__, __LINE__)
static void put_ok_at(const char *sku, const char *body, const char *file, int line)
{
    h_resp r;
    if (put_item(sku, body, &r) != 200)
        h_fail_at(file, line, "PUT /admin/stock/%s %s: expected 200, got %ld %s", sku, body,
                  r.status, r.body);
    h_resp_free(&r);
}

/* GET /stock/SKU must answer 200 with exactly {"sku","stock"[,"price"]}:
 * PRICE < 0 means no price key. */
#define EXPECT_ITEM(sku, stock, price) expect_item_at((sku), (stock), (price), __FILE__, __LINE__)
static void expect_item_at(const char *sku, long long stock, double price, const char *file,
                           int line)
{
    char path[256];
    snprintf(path, sizeof path, "/stock/%s", sku);
    h_resp r;
    h_http(daemon_, "GET", path, NULL, &r, NULL);
    long long st = -1;
    const cJSON *p = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "price") : NULL;
    bool keys = price < 0 ? h_jkeys(r.json, "sku", "stock", NULL)
                          : h_jkeys(r.json, "sku", "stock", "price", NULL);
    if (r.status != 200 || !keys || !h_jll(r.json, "stock", &st) || st != stock ||
        (price >= 0 && (!cJSON_IsNumber(p) || p->valuedouble != price)))
        h_fail_at(file, line, "GET %s: expected stock %lld%s%g, got %ld %s", path, stock,
                  price < 0 ? " and no price" : " and price ", price < 0 ? 0 : price, r.status,
                  r.body);
    h_resp_free(&r);
}

/* POST /sale with the raw BODY. */
static long sale_raw(const char *body, h_resp *r)
{
    return h_http(daemon_, "POST", "/sale", body, r, NULL);
}

/* A 422 policy_rejected by RULE; its reason contains REASON when not NULL. */
#define EXPECT_REJECTED(r, rule, reason) expect_rejected_at((r), (rule), (reason), __FILE__, __LINE__)
static void expect_rejected_at(const h_resp *r, const char *rule, const char *reason,
                               const char *file, int line)
{
    h_assert_error_at(r, 422, "policy_rejected", file, line);
    const char *ru = h_jstr(r->json, "rule"), *re = h_jstr(r->json, "reason");
    if (!ru || strcmp(ru, rule) != 0 || !re || (reason && !strstr(re, reason)))
        h_fail_at(file, line, "expected a 422 by rule %s with reason \"%s\", got %s", rule,
                  reason ? reason : "...", r->body);
}

/* nerve_events_total of CHANNEL in /metrics (0 before the first event). */
static double events_seen(const char *channel)
{
    char label[96];
    snprintf(label, sizeof label, "channel=\"%s\"", channel);
    char *m = H_METRICS(daemon_);
    double v = h_metric(m, "nerve_events_total", label);
    free(m);
    return v < 0 ? 0 : v;
}

/* Wait until the evaluator has taken N more sales_events than BEFORE: the
 * rules have seen every sale event the test caused (one evaluator thread,
 * decisions applied before the next event). */
#define WAIT_SALE_EVENTS(before, n) wait_sale_events_at((before), (n), __FILE__, __LINE__)
static void wait_sale_events_at(double before, int n, const char *file, int line)
{
    double dl = h_deadline(10000), seen = 0;
    while (h_before(dl)) {
        seen = events_seen("sales_events");
        if (seen >= before + n)
            return;
        h_nap();
    }
    h_fail_at(file, line, "the evaluator saw %.0f of %d sale events within 10 s", seen - before, n);
}

/* Every record in GET /killswitch; fails the test on one with halt_sales
 * true. Returns how many records there are. */
#define EXPECT_NO_HALT() expect_no_halt_at(__FILE__, __LINE__)
static int expect_no_halt_at(const char *file, int line)
{
    h_resp r;
    h_http(daemon_, "GET", "/killswitch", NULL, &r, NULL);
    const cJSON *arr = r.json ? cJSON_GetObjectItemCaseSensitive(r.json, "engaged") : NULL;
    if (r.status != 200 || !cJSON_IsArray(arr))
        h_fail_at(file, line, "GET /killswitch: %ld %s", r.status, r.body);
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        n++;
        if (h_jbool(it, "halt_sales") == 1)
            h_fail_at(file, line, "a kill with halt_sales is engaged: %s", r.body);
    }
    h_resp_free(&r);
    return n;
}

/* A subscriber of the test's own to sales_events (raw: the events have no
 * "kind" for h_sub). */
static redisContext *sales_sub(void)
{
    redisContext *c = h_redis_connect(redis);
    assert_non_null(c);
    struct timeval tv = { 10, 0 };
    redisSetTimeout(c, tv);
    redisReply *rep = redisCommand(c, "SUBSCRIBE sales_events");
    assert_non_null(rep);
    freeReplyObject(rep);
    return c;
}

/* The next sale event on C, parsed (the caller deletes it). */
static cJSON *next_sale_event(redisContext *c)
{
    redisReply *rep = NULL;
    assert_int_equal(redisGetReply(c, (void **)&rep), REDIS_OK);
    assert_true(rep->type == REDIS_REPLY_ARRAY && rep->elements == 3);
    cJSON *o = cJSON_Parse(rep->element[2]->str);
    freeReplyObject(rep);
    assert_non_null(o);
    return o;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("%s is not a number in %s", key, cJSON_PrintUnformatted(o));
    return v->valuedouble;
}

/* --- the catalog record --------------------------------------------------- */

static void test_put_price(void **state)
{
    (void)state;
    h_resp r;
    const char *sku = "pr-put";

    /* Stock and price together; the answer is the record. */
    put_item(sku, "{\"stock\":10,\"price\":19.99}", &r);
    assert_int_equal(r.status, 200);
    assert_true(h_jkeys(r.json, "sku", "stock", "price", NULL));
    assert_true(jnum(r.json, "price") == 19.99);
    h_resp_free(&r);
    EXPECT_ITEM(sku, 10, 19.99);

    /* The price alone keeps the stock; the stock alone keeps the price. */
    put_item(sku, "{\"price\":25}", &r);
    assert_int_equal(r.status, 200);
    long long st = -1;
    assert_true(h_jll(r.json, "stock", &st));
    assert_int_equal(st, 10);
    h_resp_free(&r);
    PUT_OK(sku, "{\"stock\":7}");
    EXPECT_ITEM(sku, 7, 25);
    char pk[RDS_KEY_MAX];
    redisReply *rep = h_redis_cmd(redis, "GET %s", h_key(pk, "price", sku));
    assert_true(rep && rep->type == REDIS_REPLY_STRING && strtod(rep->str, NULL) == 25);
    freeReplyObject(rep);

    /* A bad price (or stock) changes nothing, with a message saying what. */
    static const char *const bad[] = {
        "{\"price\":-1}", "{\"price\":\"5\"}", "{\"price\":1e16}", "{\"price\":true}",
        "{\"price\":[]}", "{\"price\":{}}", "{\"stock\":3,\"price\":-0.01}",
        "{\"stock\":-3,\"price\":4}", "{\"stock\":null,\"price\":4}", "{\"price\":1e400}",
        "{}", "[]", "null",
    };
    int failures = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_item(sku, bad[i], &r);
        const char *e = h_jstr(r.json, "error"), *m = h_jstr(r.json, "message");
        if (r.status != 400 || !e || strcmp(e, "bad_request") != 0 || !m ||
            (strstr(bad[i], "price\":") && !strstr(bad[i], "stock\":-") &&
             !strstr(bad[i], "stock\":null") && !strstr(m, "price"))) {
            failures++;
            print_error("PUT %s: expected 400 bad_request naming the price, got %ld %s\n", bad[i],
                        r.status, r.body);
        }
        h_resp_free(&r);
    }
    assert_int_equal(failures, 0);
    EXPECT_ITEM(sku, 7, 25);

    /* null removes the catalog price. */
    put_item(sku, "{\"price\":null}", &r);
    assert_int_equal(r.status, 200);
    assert_true(h_jkeys(r.json, "sku", "stock", NULL));
    h_resp_free(&r);
    EXPECT_ITEM(sku, 7, -1);

    /* A price for a SKU nerve has no stock of: 404, nothing stored. */
    put_item("pr-unknown", "{\"price\":3}", &r);
    H_ASSERT_ERROR(&r, 404, "not_found");
    h_resp_free(&r);
    assert_int_equal(H_GET_STOCK(daemon_, "pr-unknown"), -1);
    rep = h_redis_cmd(redis, "EXISTS " H_PREFIX "{p4}:price:pr-unknown");
    assert_true(rep && rep->integer == 0);
    freeReplyObject(rep);

    /* Without the token: 401, nothing changed. */
    h_http(daemon_, "PUT", "/admin/stock/pr-put", "{\"price\":0}", &r, NULL);
    H_ASSERT_ERROR(&r, 401, "unauthorized");
    h_resp_free(&r);
    EXPECT_ITEM(sku, 7, -1);
    h_pass();
}

/* --- a client price under the catalog price ------------------------------ */

static void test_under_catalog_price(void **state)
{
    (void)state;
    h_resp r;
    const char *sku = "pr-cat";
    double before = events_seen("sales_events");
    redisContext *sub = sales_sub();
    PUT_OK(sku, "{\"stock\":100,\"price\":20}");

    /* Over the floor (1.0) but under the catalog price: the commit script. */
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":1,\"unit_price\":5,\"order_id\":\"cat-1\"}", &r);
    EXPECT_REJECTED(&r, "catalog_price", "unit_price 5 is under the catalog price 20");
    assert_true(jnum(r.json, "catalog_price") == 20);
    h_resp_free(&r);
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":1,\"unit_price\":19.99}", &r);
    EXPECT_REJECTED(&r, "catalog_price", "unit_price 19.99 is under the catalog price 20");
    h_resp_free(&r);
    /* Price 0: under the floor too, refused at sale time by financial.lua. */
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":1,\"unit_price\":0}", &r);
    EXPECT_REJECTED(&r, "financial_risk", "unit_price 0.00 is under the minimum price 1.00");
    h_resp_free(&r);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 100);
    /* Nothing recorded: the same order at the right price sells. */
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":1,\"unit_price\":20,\"order_id\":\"cat-1\"}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);

    /* At or over the catalog price, or no price at all: sold. */
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":2,\"unit_price\":25.5}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    sale_raw("{\"sku\":\"pr-cat\",\"qty\":1}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 96);

    /* The events: catalog_price, and unit_price = what the client paid or,
     * without one, the catalog price. */
    static const double paid[] = { 20, 25.5, 20 };
    for (int i = 0; i < 3; i++) {
        cJSON *ev = next_sale_event(sub);
        assert_string_equal(h_jstr(ev, "sku"), sku);
        assert_true(jnum(ev, "catalog_price") == 20);
        assert_true(jnum(ev, "unit_price") == paid[i]);
        cJSON_Delete(ev);
    }
    redisFree(sub);

    WAIT_SALE_EVENTS(before, 3);
    cJSON *rec = h_kill_record(redis, "sku:pr-cat");
    assert_null(rec);
    EXPECT_NO_HALT();
    h_pass();
}

/* --- a client price under the floor, no catalog price ---------------------- */

static void test_under_floor_rejected(void **state)
{
    (void)state;
    h_resp r;
    const char *sku = "pr-floor";
    double before = events_seen("sales_events");
    PUT_OK(sku, "{\"stock\":50}");
    static const char *const low[] = { "0", "0.5", "0.999999", "1e-300", "-0" };
    for (size_t i = 0; i < sizeof low / sizeof low[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"sku\":\"pr-floor\",\"qty\":1,\"unit_price\":%s}", low[i]);
        sale_raw(body, &r);
        EXPECT_REJECTED(&r, "financial_risk", "under the minimum price 1.00 of SKU pr-floor");
        h_resp_free(&r);
    }
    assert_int_equal(H_REDIS_STOCK(redis, sku), 50);
    /* At the floor it sells, and a sale without a price has nothing to judge. */
    sale_raw("{\"sku\":\"pr-floor\",\"qty\":1,\"unit_price\":1}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    sale_raw("{\"sku\":\"pr-floor\",\"qty\":1}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    WAIT_SALE_EVENTS(before, 2);
    assert_null(h_kill_record(redis, "sku:pr-floor"));
    EXPECT_NO_HALT();
    h_pass();
}

/* --- each sale of a batch is judged on its own ------------------------------ */

static void test_batch_each_checked(void **state)
{
    (void)state;
    rds_opts ro;
    memset(&ro, 0, sizeof ro);
    snprintf(ro.host, sizeof ro.host, "127.0.0.1");
    ro.port = redis->port;
    ro.connect_timeout_ms = 2000;
    ro.command_timeout_ms = 5000;
    ro.reconnect_max_ms = 100;
    rds_client *c = rds_client_new(&ro);
    assert_non_null(c);
    const char *sku = "pr-batch";
    const char *key = H_PREFIX "{p10}:lock:pr-batch";
    sale_opts o;
    memset(&o, 0, sizeof o);
    o.prefix = H_PREFIX;
    o.partitions = H_PARTITIONS;
    o.inventory_channel = "pr-inv";         /* not fed to the daemon's rules */
    o.sales_channel = "pr-sales";
    o.lock_ttl_ms = 2000;
    o.idempotency_ttl_s = 600;
    o.max_batch = 16;
    o.max_qty = 1000;
    /* client price: 25 sells, 5 refused, none sells at 20, 19.99 refused,
     * 20 sells. */
    static const double price[] = { 25, 5, -1, 19.99, 20 };
    static const sale_status want[] = { SALE_OK, SALE_REJECTED, SALE_OK, SALE_REJECTED, SALE_OK };
    sale_req reqs[5];
    sale_res res[5];
    for (int i = 0; i < 5; i++) {
        memset(&reqs[i], 0, sizeof reqs[i]);
        snprintf(reqs[i].sku, sizeof reqs[i].sku, "%s", sku);
        snprintf(reqs[i].order_id, sizeof reqs[i].order_id, "batch-%d", i);
        reqs[i].qty = 1;
        reqs[i].has_price = price[i] >= 0;
        reqs[i].unit_price = price[i] >= 0 ? price[i] : 0;
    }
    sale_put p = { .has_stock = true, .stock = 10, .price_op = SALE_PRICE_SET, .price = 20 };
    sale_item now;
    assert_int_equal(sale_item_put(c, &o, sku, &p, &now), 0);
    assert_true(now.has_price && now.price == 20 && now.stock == 10);

    char t[LOCK_TOKEN_LEN + 1], err[256] = "";
    assert_int_equal(lock_acquire(c, key, 10000, 0, t, err, sizeof err), LOCK_OK);
    memset(res, 0, sizeof res);
    assert_int_equal(sale_commit(c, &o, sku, t, reqs, res, 5, err, sizeof err), 0);
    long long left = 10;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(res[i].status, want[i]);
        if (want[i] == SALE_OK) {
            assert_int_equal(res[i].stock_remaining, --left);
        } else {
            assert_string_equal(res[i].rule, SALE_RULE_CATALOG_PRICE);
            assert_true(res[i].has_catalog_price && res[i].catalog_price == 20);
        }
    }
    assert_int_equal(H_REDIS_STOCK(redis, sku), 7);
    redisReply *rep = h_redis_cmd(redis, "EXISTS " H_PREFIX "{p10}:order:pr-batch:batch-1");
    assert_true(rep && rep->integer == 0);
    freeReplyObject(rep);
    lock_release(c, key, t);
    rds_client_free(c);
    h_pass();
}

/* --- no anonymous client halts sales ---------------------------------------- */

static void test_no_anonymous_halt(void **state)
{
    (void)state;
    static const char *const skus[] = { "pr-h1", "pr-h2", "pr-h3" };
    PUT_OK("pr-h1", "{\"stock\":100000}");                    /* no catalog price */
    PUT_OK("pr-h2", "{\"stock\":100000,\"price\":10}");
    PUT_OK("pr-h3", "{\"stock\":100000,\"price\":1}");        /* at the floor */
    /* What a client controls: the price (any JSON), fields the event has
     * (catalog_price, type, ts...), quantities, order ids and repeats. */
    static const char *const tails[] = {
        "\"unit_price\":0", "\"unit_price\":-0", "\"unit_price\":-1", "\"unit_price\":1e-300",
        "\"unit_price\":0.99", "\"unit_price\":0.999999999999", "\"unit_price\":1",
        "\"unit_price\":9.99", "\"unit_price\":10", "\"unit_price\":1e15", "\"unit_price\":1e16",
        "\"unit_price\":1e400", "\"unit_price\":-1e400", "\"unit_price\":\"0\"",
        "\"unit_price\":\"abc\"", "\"unit_price\":true", "\"unit_price\":[0]",
        "\"unit_price\":{\"x\":0}", "\"unit_price\":null", "\"unit_price\":NaN",
        "\"catalog_price\":0", "\"catalog_price\":0,\"unit_price\":0",
        "\"catalog_price\":-5,\"unit_price\":50", "\"type\":\"sale\",\"catalog_price\":0",
        "\"unit_price\":0,\"unit_price\":50", "\"unit_price\":50,\"unit_price\":0",
        "\"unit_price\":0.5,\"order_id\":\"h-dup\"", "\"unit_price\":50,\"order_id\":\"h-dup\"",
        "\"unit_price\":0.5,\"order_id\":\"h-dup\"", "\"qty\":5,\"unit_price\":0",
        "\"min_unit_price\":0,\"unit_price\":0.5", "\"sku\":\"pr-h9\",\"unit_price\":0",
        "\"unit_price\":0.01,\"qty\":1000", "",
    };
    double before = events_seen("sales_events");
    int by[600] = { 0 }, ok = 0, n = 0;
    for (int round = 0; round < 3; round++) {
        for (size_t s = 0; s < sizeof skus / sizeof skus[0]; s++) {
            for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
                char body[256];
                snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1%s%s}", skus[s],
                         tails[i][0] ? "," : "", tails[i]);
                h_resp r;
                long st = sale_raw(body, &r);
                if (st == 200 && h_jbool(r.json, "duplicate") != 1)
                    ok++;
                if (st != 200 && st != 400 && st != 409 && st != 422)
                    fail_msg("POST /sale %s: unexpected %ld %s", body, st, r.body);
                if (st == 423)
                    fail_msg("POST /sale %s: halted: %s", body, r.body);
                by[st]++;
                n++;
                h_resp_free(&r);
            }
        }
    }
    printf("# %d hostile sales: %d sold, %d 400, %d 409, %d 422\n", n, ok, by[400], by[409],
           by[422]);
    assert_true(ok > 0 && by[422] > 0);
    /* Let the rules see every sale event those caused, then look. */
    WAIT_SALE_EVENTS(before, ok);
    EXPECT_NO_HALT();
    for (size_t s = 0; s < sizeof skus / sizeof skus[0]; s++) {
        h_resp r;
        char body[128];
        snprintf(body, sizeof body, "{\"sku\":\"%s\",\"qty\":1,\"unit_price\":10}", skus[s]);
        sale_raw(body, &r);
        if (r.status != 200)
            fail_msg("after the hostile sales, POST /sale %s answered %ld %s", body, r.status,
                     r.body);
        h_resp_free(&r);
    }
    h_pass();
}

/* --- an operator's catalog price under the floor halts the SKU ------------- */

static void test_catalog_under_floor_halts(void **state)
{
    (void)state;
    h_resp r;
    const char *sku = "pr-typo";
    PUT_OK(sku, "{\"stock\":100,\"price\":0.5}");    /* meant 5.00 */
    sale_raw("{\"sku\":\"pr-typo\",\"qty\":1}", &r);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    cJSON *rec = H_WAIT_KILL(redis, "sku:pr-typo", NULL, 5000);
    assert_int_equal(h_jbool(rec, "halt_sales"), 1);
    assert_string_equal(h_jstr(rec, "rule"), "financial_risk");
    const char *why = h_jstr(rec, "reason");
    assert_non_null(why);
    assert_non_null(strstr(why, "catalog price of pr-typo is 0.50, under the minimum 1.00"));
    cJSON_Delete(rec);
    /* From now on the SKU does not sell, whatever the client sends. */
    double dl = h_deadline(2000);
    long st = 0;
    while (h_before(dl)) {
        st = sale_raw("{\"sku\":\"pr-typo\",\"qty\":1,\"unit_price\":5}", &r);
        h_resp_free(&r);
        if (st == 423)
            break;
        h_nap();
    }
    assert_int_equal(st, 423);
    sale_raw("{\"sku\":\"pr-typo\",\"qty\":1}", &r);
    H_ASSERT_ERROR(&r, 423, "sales_halted");
    assert_string_equal(h_jstr(r.json, "scope"), "sku:pr-typo");
    h_resp_free(&r);
    /* Fixed and reset by the operator: it sells again. */
    PUT_OK(sku, "{\"price\":5}");
    h_http(daemon_, "DELETE", "/admin/killswitch/sku:pr-typo", NULL, &r, AUTH, NULL);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    dl = h_deadline(2000);
    while (h_before(dl)) {
        st = sale_raw("{\"sku\":\"pr-typo\",\"qty\":1}", &r);
        h_resp_free(&r);
        if (st == 200)
            break;
        h_nap();
    }
    assert_int_equal(st, 200);
    h_pass();
}

/* --- main --------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_put_price),
        T(test_under_catalog_price),
        T(test_under_floor_rejected),
        T(test_batch_each_checked),
        T(test_no_anonymous_halt),
        T(test_catalog_under_floor_halts),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
