/* test_cluster_events.c -- the event path on a real 3-primary Redis Cluster
 * (harness_cluster.c):
 *
 *   - the consumer-group reader (sgroup.h) in cluster mode reads the 16
 *     partition streams and the ingest stream of two channels, which live
 *     on all three nodes, creates the group of every stream, hands out
 *     every entry once and acknowledges them all (XPENDING empty on every
 *     node at the end); the same reader in standalone mode (one
 *     XREADGROUP naming every stream, what nerve did before) is refused
 *     with CROSSSLOT;
 *   - entries read and not acknowledged come back to the same consumer
 *     after a reconnect (the pending pass, per slot group), and entries
 *     appended while the reader waits are read within the poll bound.
 */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/cluster.h"
#include "nerve/keys.h"
#include "nerve/rds.h"
#include "nerve/sgroup.h"

#define NCHAN   2
#define NSTREAM (NCHAN * (H_PARTITIONS + 1))
#define PER     3 /* entries per stream */

static const char *const CHANS[NCHAN] = { "inventory_events", "sales_events" };

static h_cluster *cl;
static cl_map *map;
static char *streams[NSTREAM];

static void ropts(rds_opts *o, const h_redis *r) {
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = r->port;
    o->connect_timeout_ms = 2000;
    o->command_timeout_ms = 5000;
    o->reconnect_max_ms = 200;
}

/* The harness node that serves KEY, by our map (test_redis_cluster checks
 * the map against the server's CLUSTER KEYSLOT). */
static h_redis *node_of(const char *key) {
    const cl_node *n = cl_map_node(map, cl_keyslot(key, strlen(key)));
    assert_non_null(n);
    for (int i = 0; i < cl->n; i++)
        if (cl->nodes[i]->port == n->primary.port) return cl->nodes[i];
    fail_msg("no harness node on port %d", n->primary.port);
    return NULL;
}

static sg *open_reader(const char *group, const char *consumer, bool cluster, int node) {
    sg_opts o = { .streams = (const char *const *)streams,
                  .n_streams = NSTREAM,
                  .group = group,
                  .consumer = consumer,
                  .claim_idle_ms = 0 };
    ropts(&o.redis, cl->nodes[node]);
    o.redis.cluster = cluster;
    char err[256];
    sg *g = sg_open(&o, err, sizeof err);
    if (!g) fail_msg("sg_open: %s", err);
    return g;
}

static void xadd(const char *stream, int i) {
    redisReply *r = h_redis_cmd(node_of(stream), "XADD %s * event {\"n\":%d}", stream, i);
    if (!r || r->type != REDIS_REPLY_STRING)
        fail_msg("XADD %s: %s", stream, r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
    freeReplyObject(r);
}

/* XPENDING STREAM GROUP's count on the stream's node, -1 when no group. */
static long long pending(const char *stream, const char *group) {
    redisReply *r = h_redis_cmd(node_of(stream), "XPENDING %s %s", stream, group);
    long long n = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

static size_t index_of(const char *stream) {
    for (size_t i = 0; i < NSTREAM; i++)
        if (strcmp(streams[i], stream) == 0) return i;
    fail_msg("entry of an unknown stream %s", stream);
    return 0;
}

/* Read and acknowledge whatever the group has not read yet. */
static void drain(sg *g) {
    sg_msg m[64];
    int k;
    while ((k = sg_read(g, m, 64, 0)) > 0) {
        assert_int_equal(sg_ack(g, m, (size_t)k), 0);
        sg_msgs_free(m, (size_t)k);
    }
    if (k < 0) fail_msg("sg_read: %s", sg_errstr(g));
}

/* Read until WANT entries arrived (10 s at most), acknowledging them when
 * ACK, counting them per stream into SEEN. */
static size_t read_all(sg *g, size_t want, int *seen, bool ack) {
    size_t got = 0;
    sg_msg m[64];
    double dl = h_deadline(10000);
    while (got < want && h_before(dl)) {
        int k = sg_read(g, m, 64, 100);
        if (k < 0) fail_msg("sg_read: %s", sg_errstr(g));
        for (int i = 0; i < k; i++) {
            assert_string_equal(m[i].stream, streams[m[i].stream_idx]);
            seen[index_of(m[i].stream)]++;
        }
        if (ack && k > 0 && sg_ack(g, m, (size_t)k) != 0) fail_msg("sg_ack: %s", sg_errstr(g));
        sg_msgs_free(m, (size_t)k);
        got += (size_t)(k > 0 ? k : 0);
    }
    return got;
}

static void test_reads_every_node(void **state) {
    (void)state;
    /* The streams span the three nodes, and more slots than one. */
    int per_node[H_CLUSTER_MAX] = { 0 };
    for (size_t i = 0; i < NSTREAM; i++)
        per_node[cl_map_node_index(map, cl_keyslot(streams[i], strlen(streams[i])))]++;
    for (int k = 0; k < 3; k++) assert_true(per_node[k] > 0);

    /* The reader as it was (every command to the one configured node, one
     * XREADGROUP naming every stream) is refused: MOVED for the streams of
     * the other nodes, and CROSSSLOT for the read itself. */
    sg *old = open_reader("g1", "c1", false, 0);
    sg_msg m[8];
    assert_int_equal(sg_read(old, m, 8, 0), -1);
    if (!strstr(sg_errstr(old), "MOVED") && !strstr(sg_errstr(old), "CROSSSLOT"))
        fail_msg("standalone reader: %s", sg_errstr(old));
    printf("# as before: %s\n", sg_errstr(old));
    sg_close(old);

    for (size_t i = 0; i < NSTREAM; i++)
        for (int k = 0; k < PER; k++) xadd(streams[i], k);
    /* Asked of the node that serves few of them: the map finds the rest. */
    sg *g = open_reader("g1", "c1", true, 1);
    int seen[NSTREAM] = { 0 };
    size_t got = read_all(g, NSTREAM * PER, seen, true);
    assert_int_equal(got, NSTREAM * PER);
    for (size_t i = 0; i < NSTREAM; i++)
        if (seen[i] != PER) fail_msg("%s: %d entries of %d", streams[i], seen[i], PER);
    /* Nothing more, and nothing left pending anywhere. */
    assert_int_equal(sg_read(g, m, 8, 20), 0);
    for (size_t i = 0; i < NSTREAM; i++) assert_int_equal(pending(streams[i], "g1"), 0);
    sg_stats st;
    sg_get_stats(g, &st);
    assert_int_equal(st.acked, NSTREAM * PER);
    assert_int_equal(st.connected, 1);
    printf("# %d streams on 3 nodes: %llu reads for %d entries\n", NSTREAM,
           (unsigned long long)st.reads, NSTREAM * PER);
    sg_close(g);
    h_pass();
}

/* Entries handed out and never acknowledged come back after a reconnect:
 * a new reader of the same consumer name reads its pending list first. */
static void test_pending_after_restart(void **state) {
    (void)state;
    sg *g = open_reader("g2", "c2", true, 0);
    int seen[NSTREAM] = { 0 };
    drain(g); /* the entries of the other tests */
    for (size_t i = 0; i < NSTREAM; i++) xadd(streams[i], 100);
    assert_int_equal(read_all(g, NSTREAM, seen, false), NSTREAM);
    sg_close(g); /* pending entries stay */
    for (size_t i = 0; i < NSTREAM; i++) assert_int_equal(pending(streams[i], "g2"), 1);

    g = open_reader("g2", "c2", true, 2);
    memset(seen, 0, sizeof seen);
    assert_int_equal(read_all(g, NSTREAM, seen, true), NSTREAM);
    for (size_t i = 0; i < NSTREAM; i++) {
        assert_int_equal(seen[i], 1);
        assert_int_equal(pending(streams[i], "g2"), 0);
    }
    sg_close(g);
    h_pass();
}

/* An entry appended while the reader waits, on a stream of another slot
 * than the one its BLOCK names, is read within about SG_CLUSTER_POLL_MS. */
static void *late_append(void *arg) {
    const char *stream = arg;
    /* Not a synchronisation: the reader must already be waiting for the
     * read to measure anything; whether it is or not, the entry arrives. */
    h_nap();
    xadd(stream, 7);
    return NULL;
}

static void test_idle_wakeup(void **state) {
    (void)state;
    sg *g = open_reader("g3", "c3", true, 0);
    sg_msg m[8];
    drain(g);
    /* Every stream in turn, so the entry is often outside the watched group. */
    double worst = 0;
    for (size_t i = 0; i < NSTREAM; i += 3) {
        pthread_t th;
        double t0 = h_now();
        assert_int_equal(pthread_create(&th, NULL, late_append, streams[i]), 0);
        int got = 0;
        double dl = h_deadline(5000), t1 = 0;
        while (!got && h_before(dl)) {
            got = sg_read(g, m, 8, 200);
            if (got < 0) fail_msg("sg_read: %s", sg_errstr(g));
            t1 = h_now();
        }
        pthread_join(th, NULL);
        assert_int_equal(got, 1);
        assert_string_equal(m[0].stream, streams[i]);
        assert_int_equal(sg_ack(g, m, 1), 0);
        sg_msgs_free(m, 1);
        if (t1 - t0 > worst) worst = t1 - t0;
    }
    printf("# slowest append-to-read, with the 5 ms nap: %.1f ms\n", worst * 1000);
    /* The poll bound with room for a loaded machine; a wait that only a
     * read's full BLOCK_MS (200 ms) ends is the bug this catches. */
    if (worst >= 0.15) fail_msg("an idle reader took %.0f ms to read an entry", worst * 1000);
    sg_close(g);
    h_pass();
}

static int setup(void **state) {
    (void)state;
    char err[256];
    if (!(cl = h_cluster_start(3))) return -1;
    rds_opts o;
    ropts(&o, cl->nodes[0]);
    rds_client *c = rds_client_new(&o);
    map = c ? cl_map_fetch(c, "127.0.0.1", err, sizeof err) : NULL;
    rds_client_free(c);
    if (!map) {
        printf("cl_map_fetch: %s\n", err);
        return -1;
    }
    size_t n = 0;
    for (int ch = 0; ch < NCHAN; ch++) {
        char **v = NULL;
        size_t nv = 0;
        if (keys_streams_of(H_PREFIX, H_PARTITIONS, CHANS[ch], &v, &nv) != 0) return -1;
        for (size_t i = 0; i < nv; i++) streams[n++] = v[i];
        free(v);
    }
    return n == NSTREAM ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    for (size_t i = 0; i < NSTREAM; i++) free(streams[i]);
    cl_map_free(map);
    h_cluster_free(cl);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_reads_every_node),
        T(test_pending_after_restart),
        T(test_idle_wakeup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
