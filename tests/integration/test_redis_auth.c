/* test_redis_auth.c -- one Redis connect path (rds_connect) for the sale
 * pool and the bus subscriber: both authenticate with the URL's user and
 * password and select its database.
 *
 * The redis-server gets an ACL user and a password on the default user, so
 * a connection that skipped AUTH would be refused; the database in the URL
 * is 3, so a connection that skipped SELECT would write to 0.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int readyz_bus_connected(const h_daemon *d) {
    h_resp r;
    h_http(d, "GET", "/readyz", NULL, &r, NULL);
    int up = r.json ? h_jbool(r.json, "bus_connected") : -1;
    h_resp_free(&r);
    return up;
}

/* 1 when D's log contains WHAT. */
static int log_has(const h_daemon *d, const char *what) {
    FILE *f = fopen(d->log, "r");
    if (!f) return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

static void lock_down(h_redis *redis) {
    redisReply *rep = h_redis_cmd(redis, "ACL SETUSER nerve on >s3cret ~* &* +@all");
    assert_non_null(rep);
    assert_int_not_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    /* The harness' own connection stays authenticated as default. */
    rep = h_redis_cmd(redis, "CONFIG SET requirepass adminpw");
    assert_non_null(rep);
    assert_int_not_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
}

static void test_pool_and_bus_auth_and_select(void **state) {
    (void)state;
    h_redis *redis = h_redis_start(false);
    assert_non_null(redis);
    lock_down(redis);
    char url[128];
    snprintf(url, sizeof url, "redis.url=redis://nerve:s3cret@127.0.0.1:%d/3", redis->port);
    h_daemon *d = h_daemon_start(redis, url, NULL);
    assert_non_null(d);

    /* The subscriber connected as nerve (else AUTH would have failed). */
    double dl = h_deadline(10000);
    while (readyz_bus_connected(d) != 1 && h_before(dl)) h_nap();
    assert_int_equal(readyz_bus_connected(d), 1);

    /* The pool wrote to database 3, not 0. */
    H_SET_STOCK(d, "auth-1", 7);
    assert_int_equal(H_GET_STOCK(d, "auth-1"), 7);
    assert_int_equal(H_REDIS_STOCK(redis, "auth-1"), -1);
    redisReply *rep = h_redis_cmd(redis, "SELECT 3");
    assert_non_null(rep);
    freeReplyObject(rep);
    assert_int_equal(H_REDIS_STOCK(redis, "auth-1"), 7);
    rep = h_redis_cmd(redis, "SELECT 0");
    freeReplyObject(rep);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* A wrong password: the subscriber says AUTH and why, the same way the
 * sale pool does, and never counts as connected. */
static void test_wrong_password_named(void **state) {
    (void)state;
    h_redis *redis = h_redis_start(false);
    assert_non_null(redis);
    lock_down(redis);
    char url[128];
    snprintf(url, sizeof url, "redis.url=redis://nerve:wrong@127.0.0.1:%d/3", redis->port);
    h_daemon *d = h_daemon_start(redis, url, NULL);
    assert_non_null(d);
    double dl = h_deadline(10000);
    while (!log_has(d, "subscriber down") && h_before(dl)) h_nap();
    assert_true(log_has(d, "error=\"AUTH: WRONGPASS"));
    assert_int_equal(readyz_bus_connected(d), 0);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_pool_and_bus_auth_and_select),
        T(test_wrong_password_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
