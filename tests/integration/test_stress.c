/* test_stress.c -- `nerve stress` end to end (SPEC §9): the real binary
 * ($NERVE_BIN) run as a child against the real daemon and a throwaway
 * redis-server, its JSON report checked against Redis' own records; against
 * a deliberately broken server that sells twice its stock, which it must
 * catch; and its setup errors, compared exactly.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One translation unit with the test: the Makefile does not link tests/lib. */
#include "../lib/bad_server.c"

#define STRESS_TIMEOUT_MS 120000

static h_redis *redis;
static h_daemon *daemon_;

/* --- running `nerve stress` ------------------------------------------- */

/* Run `nerve stress ARGS...` (NULL-terminated) with NERVE_ADMIN_TOKEN set to
 * TOKEN, or unset when TOKEN is NULL; wait for it with a deadline. Fills R
 * (free with h_run_free); fails at FILE:LINE when it did not finish. */
static void stress_at(h_run *r, const char *token, const char *file, int line, ...)
{
    const char *args[64];
    int argc = 0;
    args[argc++] = "stress";
    va_list ap;
    va_start(ap, line);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 63;)
        args[argc++] = a;
    va_end(ap);
    args[argc] = NULL;
    char tok[256];
    snprintf(tok, sizeof tok, "NERVE_ADMIN_TOKEN=%s", token ? token : "");
    const char *env[] = { tok, NULL };
    h_run_nerve(r, STRESS_TIMEOUT_MS, token ? env : NULL, args);
    if (r->timed_out)
        h_fail_at(file, line, "nerve stress did not finish within %d ms; stderr:\n%s",
                  STRESS_TIMEOUT_MS, r->err);
}
#define STRESS(r, token, ...) stress_at((r), (token), __FILE__, __LINE__, __VA_ARGS__, NULL)

/* A number of the JSON report (fails the test when absent). */
static long long jnum_at(const h_run *r, const cJSON *o, const char *key, const char *file,
                         int line)
{
    long long v;
    if (!h_jll(o, key, &v))
        h_fail_at(file, line, "report has no integer \"%s\": %s", key, r->out);
    return v;
}
#define JNUM(r, key) jnum_at((r), (r)->json, (key), __FILE__, __LINE__)

static void expect_rc_at(const h_run *r, int rc, const char *file, int line)
{
    if (r->status != rc)
        h_fail_at(file, line, "nerve stress exited %d, expected %d\nstdout:\n%s\nstderr:\n%s",
                  r->status, rc, r->out, r->err);
}
#define EXPECT_RC(r, rc) expect_rc_at((r), (rc), __FILE__, __LINE__)

/* Every invariant of the report PASS (or skipped when KILL is false). */
static void expect_all_pass_at(const h_run *r, bool kill, const char *file, int line)
{
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(r->json, "invariants"), *c;
    if (!cJSON_IsArray(inv) || cJSON_GetArraySize(inv) != 5)
        h_fail_at(file, line, "report without 5 invariants: %s", r->out);
    cJSON_ArrayForEach(c, inv) {
        const char *name = h_jstr(c, "name"), *res = h_jstr(c, "result");
        bool want_skip = !kill && name && strcmp(name, "kill_switch") == 0;
        if (!res || strcmp(res, want_skip ? "skipped" : "PASS") != 0)
            h_fail_at(file, line, "invariant %s: %s (%s)", name ? name : "?", res ? res : "?",
                      h_jstr(c, "detail") ? h_jstr(c, "detail") : "");
    }
    if (h_jbool(r->json, "pass") != 1)
        h_fail_at(file, line, "report says pass != true: %s", r->out);
}
#define EXPECT_ALL_PASS(r, kill) expect_all_pass_at((r), (kill), __FILE__, __LINE__)

/* KEYS PREFIX{pN}:order:SKU:* counted (a test-sized keyspace). */
static long long redis_orders(const char *sku)
{
    char pat[RDS_KEY_MAX];
    redisReply *rep = h_redis_cmd(redis, "KEYS %s", h_order_key(pat, sku, "*"));
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    long long n = (long long)rep->elements;
    freeReplyObject(rep);
    return n;
}

static const cJSON *sku_entry(const h_run *r, int i)
{
    const cJSON *skus = cJSON_GetObjectItemCaseSensitive(r->json, "skus");
    assert_true(cJSON_IsArray(skus));
    const cJSON *e = cJSON_GetArrayItem(skus, i);
    assert_non_null(e);
    return e;
}

/* --- against nerve ------------------------------------------------------- */

/* 500 units, 32 clients, 2000 requests: exactly 500 sold, stock 0, and the
 * report agrees with Redis to the unit and to the order. */
static void test_stress_sells_exactly_the_stock(void **state)
{
    (void)state;
    const char *sku = "stress-a";
    h_run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", sku, "--stock", "500",
           "--clients", "32", "--requests", "2000", "--kill-check", "--json");
    EXPECT_RC(&r, 0);
    assert_non_null(r.json);
    long long ok = JNUM(&r, "ok"), qty = JNUM(&r, "qty");
    assert_int_equal(JNUM(&r, "requests"), 2000);
    assert_int_equal(qty, 1);
    assert_int_equal(ok * qty, 500);
    assert_int_equal(JNUM(&r, "out_of_stock"), 2000 - ok);
    assert_int_equal(JNUM(&r, "errors"), 0);
    assert_int_equal(JNUM(&r, "sold"), 500);
    assert_int_equal(JNUM(&r, "initial_stock"), 500);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    EXPECT_ALL_PASS(&r, true);
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(r.json, "latency_ms");
    assert_int_equal(jnum_at(&r, lat, "samples", __FILE__, __LINE__), 2000);

    /* Redis' own records: the stock key, one order record per 200, and the
     * kill switch the inventory rule engaged at the critical threshold. */
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), ok);
    redisReply *k = h_redis_cmd(redis, "EXISTS %skill:sku:%s", H_PREFIX, sku);
    assert_non_null(k);
    assert_int_equal(k->integer, 1);
    freeReplyObject(k);
    h_run_free(&r);

    /* Again: the kill switch left engaged is reset first, the stock set
     * anew, and the order ids of the first run do not collide. */
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", sku, "--stock", "300",
           "--clients", "8", "--requests", "400", "--kill-check", "--json", "--quiet");
    EXPECT_RC(&r, 0);
    assert_int_equal(JNUM(&r, "ok"), 300);
    assert_int_equal(JNUM(&r, "duplicates"), 0);
    EXPECT_ALL_PASS(&r, true);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), 500 + 300);
    h_run_free(&r);
    h_pass();
}

/* --skus, --qty and --duration: every SKU sold out, qty units at a time. */
static void test_stress_many_skus_for_a_duration(void **state)
{
    (void)state;
    h_run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "stress-m", "--skus", "4",
           "--qty", "2", "--stock", "100", "--clients", "16", "--duration", "1", "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ALL_PASS(&r, false);
    assert_int_equal(JNUM(&r, "ok"), 4 * 50);
    assert_int_equal(JNUM(&r, "sold"), 400);
    assert_int_equal(JNUM(&r, "initial_stock"), 400);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    assert_true(JNUM(&r, "requests") > 200);
    for (int i = 0; i < 4; i++) {
        char sku[32];
        snprintf(sku, sizeof sku, "stress-m-%d", i);
        const cJSON *e = sku_entry(&r, i);
        assert_string_equal(h_jstr(e, "sku"), sku);
        assert_int_equal(jnum_at(&r, e, "sold", __FILE__, __LINE__), 100);
        assert_int_equal(jnum_at(&r, e, "final_stock", __FILE__, __LINE__), 0);
        assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
        assert_int_equal(redis_orders(sku), 50);
    }
    h_run_free(&r);
    h_pass();
}

/* Two instances on one Redis: both serve, and together they sell exactly. */
static void test_stress_fleet(void **state)
{
    (void)state;
    h_daemon *second = h_daemon_start(redis, NULL);
    assert_non_null(second);
    const char *sku = "stress-f";
    h_run r;
    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--url", second->base, "--sku", sku,
           "--stock", "700", "--clients", "24", "--requests", "3000", "--json");
    EXPECT_RC(&r, 0);
    EXPECT_ALL_PASS(&r, false);
    assert_int_equal(JNUM(&r, "ok"), 700);
    const cJSON *urls = cJSON_GetObjectItemCaseSensitive(r.json, "urls"), *u;
    assert_int_equal(cJSON_GetArraySize(urls), 2);
    long long total = 0;
    cJSON_ArrayForEach(u, urls) {
        long long n = jnum_at(&r, u, "requests", __FILE__, __LINE__);
        assert_true(n > 0);
        total += n;
    }
    assert_int_equal(total, 3000);
    assert_int_equal(H_REDIS_STOCK(redis, sku), 0);
    assert_int_equal(redis_orders(sku), 700);
    h_run_free(&r);
    assert_int_equal(h_daemon_stop(second), 0);
    h_pass();
}

/* --- against a server that oversells -------------------------------------- */

static void test_stress_catches_an_oversell(void **state)
{
    (void)state;
    int port;
    assert_int_equal(bad_server_start(&port), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    h_run r;
    STRESS(&r, "any", "--url", url, "--sku", "bad", "--stock", "100", "--clients", "8",
           "--requests", "500", "--json");
    bad_server_stop();
    EXPECT_RC(&r, 1);
    assert_string_equal(r.err, "INVARIANT FAILED: sold (200) != initial - final (100)\n");
    assert_int_equal(JNUM(&r, "ok"), 200);
    assert_int_equal(JNUM(&r, "final_stock"), 0);
    assert_int_equal(h_jbool(r.json, "pass"), 0);
    h_run_free(&r);

    /* The table says it too. */
    assert_int_equal(bad_server_start(&port), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    STRESS(&r, "any", "--url", url, "--sku", "bad", "--stock", "10", "--clients", "2",
           "--requests", "50");
    bad_server_stop();
    EXPECT_RC(&r, 1);
    assert_non_null(strstr(r.out, "FAIL  sold == initial - final"));
    assert_string_equal(r.err, "INVARIANT FAILED: sold (20) != initial - final (10)\n");
    h_run_free(&r);
    h_pass();
}

/* --- setup errors ------------------------------------------------------------ */

static void expect_setup_error_at(h_run *r, const char *want, bool prefix, const char *file,
                                  int line)
{
    expect_rc_at(r, 2, file, line);
    if (prefix ? strncmp(r->err, want, strlen(want)) != 0 : strcmp(r->err, want) != 0)
        h_fail_at(file, line, "stderr:\n%s\nexpected%s:\n%s", r->err, prefix ? " to start with" : "",
                  want);
    if (r->out[0])
        h_fail_at(file, line, "a setup error printed a report: %s", r->out);
    h_run_free(r);
}
#define EXPECT_SETUP_ERROR(r, want) expect_setup_error_at((r), (want), false, __FILE__, __LINE__)
#define EXPECT_SETUP_ERROR_PREFIX(r, want) expect_setup_error_at((r), (want), true, __FILE__, __LINE__)

static void test_stress_setup_errors(void **state)
{
    (void)state;
    h_run r;
    char url[64], want[256];

    STRESS(&r, H_ADMIN_TOKEN, "--url", "localhost:8011", "--sku", "e", "--stock", "5",
           "--clients", "2", "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: --url: expected http://HOST:PORT, got 'localhost:8011'\n");

    int port = h_free_port();              /* nothing listens on it */
    assert_true(port > 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    STRESS(&r, H_ADMIN_TOKEN, "--url", url, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10");
    snprintf(want, sizeof want,
             "nerve stress: cannot connect to %s: connection refused — is nerve running?\n", url);
    EXPECT_SETUP_ERROR(&r, want);

    STRESS(&r, NULL, "--url", daemon_->base, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: no admin token: set NERVE_ADMIN_TOKEN or pass --token\n");

    STRESS(&r, NULL, "--url", daemon_->base, "--sku", "e", "--stock", "5", "--clients", "2",
           "--requests", "10", "--token", "wrong-token");
    snprintf(want, sizeof want, "nerve stress: admin token rejected by %s (HTTP 401", daemon_->base);
    EXPECT_SETUP_ERROR_PREFIX(&r, want);

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "3x", "--requests", "10");
    EXPECT_SETUP_ERROR(&r, "nerve stress: --clients: expected an integer in 1..10000, got '3x'\n");

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "2", "--requests", "10", "--frobnicate");
    EXPECT_SETUP_ERROR(&r, "nerve stress: unknown option --frobnicate (see nerve stress --help)\n");

    STRESS(&r, H_ADMIN_TOKEN, "--url", daemon_->base, "--sku", "e", "--stock", "5",
           "--clients", "2");
    EXPECT_SETUP_ERROR(&r, "nerve stress: give either --requests R or --duration SECONDS\n");

    STRESS(&r, H_ADMIN_TOKEN, "--help");
    EXPECT_RC(&r, 0);
    assert_int_equal(strncmp(r.out, "usage: nerve stress --url URL", 29), 0);
    assert_string_equal(r.err, "");
    h_run_free(&r);

    /* None of these sold anything or set a stock. */
    assert_int_equal(H_REDIS_STOCK(redis, "e"), -1);
    h_pass();
}

/* --- main ------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_stress_sells_exactly_the_stock),
        T(test_stress_many_skus_for_a_duration),
        T(test_stress_fleet),
        T(test_stress_catches_an_oversell),
        T(test_stress_setup_errors),
    };
    h_group_use(&redis, &daemon_, NULL);
    return cmocka_run_group_tests(tests, h_group_setup, h_group_teardown);
}
