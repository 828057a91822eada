/* test_replica_target.c -- redis.mode standalone pointed at a replica (a
 * URL naming the wrong server, or a VIP that has not flipped yet): writes
 * answer -READONLY, sales answer 503, and nerve keeps its connections
 * instead of opening a new one for every write of every thread. (Sentinel
 * mode replaces a connection that answered -READONLY, since there it means
 * a failover demoted the primary; in standalone mode the same rule made
 * every sale a reconnect: found in review.)
 */
#include "harness.h"

#include "nerve/keys.h"
#include "nerve/rds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long connections_received(h_redis *r)
{
    redisReply *rep = h_redis_cmd(r, "INFO stats");
    assert_non_null(rep);
    const char *p = rep->str ? strstr(rep->str, "total_connections_received:") : NULL;
    long long n = p ? atoll(p + strlen("total_connections_received:")) : -1;
    freeReplyObject(rep);
    assert_true(n >= 0);
    return n;
}

static void test_no_reconnect_storm_on_a_replica(void **state)
{
    (void)state;
    h_redis *primary = h_redis_start(false);
    h_redis *replica = h_redis_start(false);
    assert_non_null(primary);
    assert_non_null(replica);
    redisReply *rep = h_redis_cmd(replica, "REPLICAOF 127.0.0.1 %d", primary->port);
    assert_non_null(rep);
    freeReplyObject(rep);
    /* Stock written on the primary reaches the replica: the sale finds it
     * there and its commit (a write) is refused with -READONLY. */
    char key[RDS_KEY_MAX];
    assert_true(keys_sku(key, H_PREFIX, 16, "stock", "RO-SKU") > 0);
    rep = h_redis_cmd(primary, "SET %s 1000000", key);
    freeReplyObject(rep);
    double dl = h_deadline(10000);
    for (;;) {
        rep = h_redis_cmd(replica, "GET %s", key);
        bool up = rep && rep->type == REDIS_REPLY_STRING;
        freeReplyObject(rep);
        if (up)
            break;
        if (!h_before(dl))
            fail_msg("the replica did not sync within 10 s");
        h_nap();
    }

    char url[96], set[128];
    snprintf(set, sizeof set, "redis.url=%s", h_redis_url(replica, url, sizeof url));
    h_daemon *d = h_daemon_start(replica, set, NULL);
    assert_non_null(d);
    h_resp r;
    /* Warm up: every worker thread that serves has its connection. */
    for (int i = 0; i < 20; i++) {
        char oid[32];
        snprintf(oid, sizeof oid, "warm-%d", i);
        h_sale(d, "/sale", "RO-SKU", 1, oid, &r);
        h_resp_free(&r);
    }
    long long before = connections_received(replica);
    int answered_503 = 0;
    for (int i = 0; i < 200; i++) {
        char oid[32];
        snprintf(oid, sizeof oid, "ro-%d", i);
        long st = h_sale(d, "/sale", "RO-SKU", 1, oid, &r);
        answered_503 += st == 503;
        h_resp_free(&r);
    }
    long long after = connections_received(replica);
    printf("# 200 sales against a replica: %d answered 503, %lld new connections\n",
           answered_503, after - before);
    assert_int_equal(answered_503, 200);
    /* A reconnect per write would be 200 or more. */
    if (after - before > 40)
        fail_msg("%lld new connections for 200 sales against a replica: a reconnect per write",
                 after - before);
    assert_int_equal(h_daemon_stop(d), 0);
    h_redis_free(replica);
    h_redis_free(primary);
    h_pass();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_reconnect_storm_on_a_replica, h_test_setup,
                                        h_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
