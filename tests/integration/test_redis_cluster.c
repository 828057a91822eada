/* test_redis_cluster.c -- the routing of engine/cluster.c against a real
 * 3-primary Redis Cluster (harness_cluster.c), and the daemon's refusals:
 *
 *   - the slot map built from the cluster's own CLUSTER SLOTS covers all
 *     16384 slots on the 3 nodes;
 *   - for nerve's real key names (keys.h: stock, price, lock and order keys
 *     of 300 SKUs, and every partition's streams) our slot is the server's
 *     CLUSTER KEYSLOT, and a SET sent to the node our map names succeeds (no
 *     MOVED); the 16 partition tags spread over all three nodes;
 *   - a command sent to another node answers MOVED, and a slot being
 *     migrated answers ASK, both read back exactly by cl_parse_redirect;
 *   - `nerve serve` in standalone mode pointed at a cluster node exits 1
 *     naming the node (also as an ACL user without INFO, and when the node
 *     only answers after the daemon started); with redis.mode cluster it
 *     refuses a server that is not a cluster node (sentinel mode:
 *     test_sentinel.c).
 *
 * (Named test_redis_cluster, not test_cluster: the unit test
 * tests/unit/test_cluster.c already builds as build/tests/test_cluster.)
 */
#include "harness.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nerve/cluster.h"
#include "nerve/keys.h"
#include "nerve/rds.h"

#define NSKUS 300

static h_cluster *cl;
static cl_map *map;

static int setup(void **state)
{
    (void)state;
    char err[256];
    if (!(cl = h_cluster_start(3)))
        return -1;
    printf("# cluster of 3 primaries started in %.2f s\n", cl->start_secs);
    rds_client *c = h_rds_client(cl->nodes[0], false);
    map = cl_map_fetch(c, "127.0.0.1", err, sizeof err);
    rds_client_free(c);
    if (!map)
        printf("cl_map_fetch: %s\n", err);
    return map ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cl_map_free(map);
    h_cluster_free(cl);
    return 0;
}

static void test_map_covers_every_slot(void **state)
{
    (void)state;
    assert_int_equal(cl_map_covered(map), CL_SLOTS);
    assert_int_equal(cl_map_nnodes(map), 3);
    for (int i = 0; i < 3; i++) {
        const cl_node *n = cl_map_node_at(map, i);
        assert_string_equal(n->primary.host, "127.0.0.1");
        if (!h_cluster_node_at(cl, n->primary.port))
            fail_msg("the map names port %d, not a node of the cluster", n->primary.port);
        assert_int_equal(strlen(n->primary.id), 40);
        assert_int_equal(n->nreplicas, 0);
    }
    /* Every node's own view gives the same map. */
    for (int i = 1; i < 3; i++) {
        char err[256];
        rds_client *c = h_rds_client(cl->nodes[i], false);
        cl_map *m = cl_map_fetch(c, "127.0.0.1", err, sizeof err);
        rds_client_free(c);
        if (!m)
            fail_msg("%s", err);
        for (int s = 0; s < CL_SLOTS; s++)
            if (cl_map_node(m, s)->primary.port != cl_map_node(map, s)->primary.port)
                fail_msg("node %d: slot %d on port %d, node 0 says %d", i, s,
                         cl_map_node(m, s)->primary.port, cl_map_node(map, s)->primary.port);
        cl_map_free(m);
    }
    h_pass();
}

/* KEY's slot by cl_keyslot and by the server; then SET on the node our map
 * names, which must take it. */
static void route_key(const char *key, int *nodes_seen)
{
    int slot = cl_keyslot(key, strlen(key));
    redisReply *r = h_redis_cmd(cl->nodes[0], "CLUSTER KEYSLOT %s", key);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER || r->integer != slot)
        fail_msg("%s: cl_keyslot %d, CLUSTER KEYSLOT %lld", key, slot,
                 r->type == REDIS_REPLY_INTEGER ? r->integer : -1LL);
    freeReplyObject(r);
    const cl_node *n = cl_map_node(map, slot);
    assert_non_null(n);
    h_redis *node = h_cluster_node_at(cl, n->primary.port);
    assert_non_null(node);
    r = h_redis_cmd(node, "SET %s 1", key);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_STATUS || strcmp(r->str, "OK") != 0)
        fail_msg("SET %s on port %d (slot %d): %s", key, node->port, slot,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not OK");
    freeReplyObject(r);
    nodes_seen[cl_map_node_index(map, slot)]++;
}

static void test_nerve_keys_route(void **state)
{
    (void)state;
    static const char *const kinds[] = { "stock", "price", "lock" };
    int seen[3] = { 0 }, part_node[H_PARTITIONS], keys = 0;
    char k[RDS_KEY_MAX], sku[32], s[RDS_KEY_MAX];

    for (int i = 0; i < NSKUS; i++) {
        snprintf(sku, sizeof sku, "sku-%d", i);
        for (size_t j = 0; j < 3; j++) {
            assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, kinds[j], sku) > 0);
            route_key(k, seen);
            keys++;
        }
        assert_true(keys_order(k, H_PREFIX, H_PARTITIONS, sku, "order-1") > 0);
        route_key(k, seen);
        keys++;
        /* The SKU's keys and its partition's stream share one slot. */
        int p = keys_partition(sku, H_PARTITIONS);
        assert_true(keys_stream(s, H_PREFIX, p, "sales_events") > 0);
        assert_int_equal(cl_keyslot(k, strlen(k)), cl_keyslot(s, strlen(s)));
    }
    for (int p = 0; p < H_PARTITIONS; p++) {
        int before[3] = { seen[0], seen[1], seen[2] };
        assert_true(keys_stream(s, H_PREFIX, p, "inventory_events") > 0);
        route_key(s, seen);
        keys++;
        part_node[p] = seen[0] != before[0] ? 0 : seen[1] != before[1] ? 1 : 2;
    }
    int part_nodes[3] = { 0 };
    for (int p = 0; p < H_PARTITIONS; p++)
        part_nodes[part_node[p]]++;
    printf("# %d keys routed; per node: %d %d %d keys, %d %d %d of the %d partitions\n", keys,
           seen[0], seen[1], seen[2], part_nodes[0], part_nodes[1], part_nodes[2], H_PARTITIONS);
    /* Every node serves some partitions: sales would use all three. */
    for (int i = 0; i < 3; i++)
        assert_true(part_nodes[i] > 0);
    h_pass();
}

static void test_moved_and_ask(void **state)
{
    (void)state;
    char k[RDS_KEY_MAX], err[256];
    cl_redirect rd;
    assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, "stock", "sku-moved") > 0);
    int slot = cl_keyslot(k, strlen(k));
    const cl_node *owner = cl_map_node(map, slot);
    h_redis *src = h_cluster_node_at(cl, owner->primary.port), *other = NULL;
    for (int i = 0; i < 3 && !other; i++)
        if (cl->nodes[i] != src)
            other = cl->nodes[i];

    /* MOVED: the key sent to a node that does not serve its slot. */
    redisReply *r = h_redis_cmd(other, "SET %s 1", k);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    if (cl_parse_redirect(r->str, r->len, &rd, err, sizeof err) != 0)
        fail_msg("\"%s\": not read as a redirect: %s", r->str, err);
    assert_int_equal(rd.kind, CL_MOVED);
    assert_int_equal(rd.slot, slot);
    assert_string_equal(rd.host, owner->primary.host);
    assert_int_equal(rd.port, owner->primary.port);
    freeReplyObject(r);

    /* ASK: the slot migrating from SRC to OTHER, the key not on SRC (yet). */
    const cl_node *dst = NULL;
    for (int i = 0; i < 3; i++)
        if (cl_map_node_at(map, i)->primary.port == other->port)
            dst = cl_map_node_at(map, i);
    assert_non_null(dst);
    r = h_redis_cmd(other, "CLUSTER SETSLOT %d IMPORTING %s", slot, owner->primary.id);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = h_redis_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, dst->primary.id);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = h_redis_cmd(src, "GET %s", k);
    assert_non_null(r);
    int type = r->type;
    int prc = type == REDIS_REPLY_ERROR ? cl_parse_redirect(r->str, r->len, &rd, err, sizeof err) : 9;
    char text[256];
    snprintf(text, sizeof text, "%s", type == REDIS_REPLY_ERROR ? r->str : "(not an error)");
    freeReplyObject(r);
    /* Back to stable before asserting, so a failure leaves a sane cluster. */
    for (int i = 0; i < 2; i++) {
        r = h_redis_cmd(i ? other : src, "CLUSTER SETSLOT %d STABLE", slot);
        assert_true(r && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
    }
    if (prc != 0)
        fail_msg("GET during migration answered \"%s\" (parse %d: %s)", text, prc, err);
    assert_int_equal(rd.kind, CL_ASK);
    assert_int_equal(rd.slot, slot);
    assert_string_equal(rd.host, "127.0.0.1");
    assert_int_equal(rd.port, other->port);
    h_pass();
}

/* `nerve serve` with the overrides SETS (NULL-terminated) against the node
 * at URL: it must exit 1 (polled with a deadline) with WANT on stderr. */
static void serve_refuses(const char *url, const char *const *sets, const char *want)
{
    char listen[64], redis[160], ledger[PATH_MAX + 32];
    const char *args[32];
    int n = 0;
    snprintf(listen, sizeof listen, "server.listen=127.0.0.1:%d", h_free_port());
    snprintf(redis, sizeof redis, "redis.url=%s", url);
    snprintf(ledger, sizeof ledger, "ledger.path=%s/cluster-ledger.db", h_tmpdir());
    args[n++] = "serve";
    args[n++] = "-c";
    args[n++] = "config/nerve.yaml";
    args[n++] = "--set";
    args[n++] = listen;
    args[n++] = "--set";
    args[n++] = redis;
    args[n++] = "--set";
    args[n++] = "server.pidfile=";
    args[n++] = "--set";
    args[n++] = ledger;
    for (int i = 0; sets && sets[i]; i++) {
        args[n++] = "--set";
        args[n++] = sets[i];
    }
    args[n] = NULL;
    h_run r;
    double t0 = h_now();
    h_run_nerve(&r, 15000, NULL, args);
    if (r.timed_out || r.status != 1 || !strstr(r.err, want))
        fail_msg("nerve serve against %s: %s status %d after %.1f s (want exit 1 saying \"%s\")\n"
                 "stderr:\n%s",
                 url, r.timed_out ? "still running (killed at the deadline)," : "", r.status,
                 h_now() - t0, want, r.err);
    h_run_free(&r);
}

static void test_standalone_refuses_cluster_node(void **state)
{
    (void)state;
    char url[64], want[256];
    h_redis *node = cl->nodes[1];
    snprintf(want, sizeof want,
             "redis at 127.0.0.1:%d is a Redis Cluster node (cluster_enabled:1) but redis.mode is "
             "standalone: most keys would answer MOVED. Set redis.mode: cluster",
             node->port);
    serve_refuses(h_redis_url(node, url, sizeof url), NULL, want);

    /* An ACL user without @dangerous may not run INFO: CLUSTER INFO tells. */
    redisReply *r = h_redis_cmd(node, "ACL SETUSER nerve on >pw ~* &* +@all -@admin -@dangerous");
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    snprintf(url, sizeof url, "redis://nerve:pw@127.0.0.1:%d/0", node->port);
    serve_refuses(url, NULL, want);
    r = h_redis_cmd(node, "ACL DELUSER nerve");
    freeReplyObject(r);
    h_pass();
}

static void test_other_modes_refused(void **state)
{
    (void)state;
    char url[64], want[256];
    /* redis.mode cluster against a server without cluster support. */
    h_redis *plain = h_redis_start(false);
    assert_non_null(plain);
    snprintf(want, sizeof want,
             "redis at 127.0.0.1:%d is not a Redis Cluster node (cluster_enabled:0) but "
             "redis.mode is cluster",
             plain->port);
    serve_refuses(h_redis_url(plain, url, sizeof url),
                  (const char *const[]){ "redis.mode=cluster", NULL }, want);
    h_pass();
}

/* Redis not answering at start: the daemon starts (healthz), and the check
 * runs on the first connection, stopping it once the node is back. Last: it
 * restarts a node of the cluster. */
static void test_cluster_node_found_on_connect(void **state)
{
    (void)state;
    h_redis *node = cl->nodes[2];
    char want[256];
    snprintf(want, sizeof want, "redis at 127.0.0.1:%d is a Redis Cluster node", node->port);
    assert_int_equal(h_redis_stop(node), 0);
    h_daemon *d = h_daemon_start(node, "redis.reconnect_max_ms=100", NULL);
    assert_non_null(d);
    assert_int_equal(h_redis_restart(node), 0);
    double dl = h_deadline(15000);
    while (h_daemon_alive(d) && h_before(dl))
        h_nap();
    if (d->pid)
        fail_msg("the daemon still runs 15 s after its Redis came back as a cluster node");
    char *log = h_read_file(d->log);
    assert_non_null(log);
    if (!strstr(log, want))
        fail_msg("the daemon exited without saying \"%s\"", want);
    free(log);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_map_covers_every_slot),
        T(test_nerve_keys_route),
        T(test_moved_and_ask),
        T(test_standalone_refuses_cluster_node),
        T(test_other_modes_refused),
        T(test_cluster_node_found_on_connect),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
