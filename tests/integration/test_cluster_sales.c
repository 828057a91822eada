/* test_cluster_sales.c -- nerve with redis.mode cluster on a real Redis
 * Cluster of 3 primaries and 3 replicas (harness_cluster.c, node timeout
 * 1000 ms), over real HTTP:
 *
 *   - `nerve stress` over 1,000 SKUs: every invariant holds, nothing answers
 *     503 or an error (a CROSSSLOT or an unfollowed MOVED would), and every
 *     primary holds sold-out SKUs (the sales used all three nodes);
 *   - the slot of a loaded SKU's partition migrated by hand (CLUSTER SETSLOT
 *     IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) while sales run: ASK and
 *     then MOVED are followed (counted in /metrics), and no sale is lost or
 *     doubled (units sold by 200s, with every 503 settled by replaying its
 *     order_id, equal the stock lost);
 *   - a primary killed (SIGKILL) with its replica taking over: sales answer
 *     503 with Retry-After meanwhile, answer again within a bound, /readyz
 *     is ready again, and the stock lost still equals the units sold.
 *
 *   - the kill switch engaged and reset through the API (its record and its
 *     index live on different nodes);
 *   - and underneath, rds itself (the library, no daemon): single commands
 *     and a pipeline over every node, keys of two slots refused unsent,
 *     scripts loaded on every node (and again on a node that forgot them),
 *     streams routed by the key after STREAMS, commands per node.
 *
 * Every wait polls with a deadline.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "nerve/cluster.h"
#include "nerve/keys.h"
#include "nerve/rds.h"

#define NODE_TIMEOUT_MS 1000
/* A replica replaces a dead primary after about 2 node timeouts plus the
 * election; measured 2-4 s on this machine. Asserted loosely. */
#define RECOVERY_BOUND_MS 20000

static h_cluster *cl;

/* ---- the cluster as the test sees it --------------------------------------- */

/* The slot map as a live node sees it now (the caller frees it). */
static cl_map *map_now(void)
{
    char err[256] = "";
    for (int i = 0; i < cl->n; i++) {
        if (!cl->nodes[i]->pid)
            continue;
        rds_client *c = h_rds_client(cl->nodes[i], false);
        cl_map *m = cl_map_fetch(c, "127.0.0.1", err, sizeof err);
        rds_client_free(c);
        if (m)
            return m;
    }
    fail_msg("no node answered CLUSTER SLOTS: %s", err);
    return NULL;
}

static int sku_slot(const char *sku)
{
    char k[RDS_KEY_MAX];
    assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, "stock", sku) > 0);
    return cl_keyslot(k, strlen(k));
}

/* The primary serving SKU's keys now. */
static h_redis *owner_of(const char *sku)
{
    cl_map *m = map_now();
    const cl_node *n = cl_map_node(m, sku_slot(sku));
    assert_non_null(n);
    h_redis *r = h_cluster_node_at(cl, n->primary.port);
    cl_map_free(m);
    assert_non_null(r);
    return r;
}

/* The primary serving SLOT (*SRC, its node id in SRC_ID) and another
 * primary to move it to (*DST, DST_ID). */
static void migration_ends(int slot, h_redis **src, char *src_id, h_redis **dst, char *dst_id)
{
    cl_map *m = map_now();
    const cl_node *from = cl_map_node(m, slot), *to = NULL;
    assert_non_null(from);
    for (int i = 0; i < cl_map_nnodes(m) && !to; i++)
        if (cl_map_node_at(m, i) != from)
            to = cl_map_node_at(m, i);
    assert_non_null(to);
    *src = h_cluster_node_at(cl, from->primary.port);
    *dst = h_cluster_node_at(cl, to->primary.port);
    snprintf(src_id, CL_ID_MAX, "%s", from->primary.id);
    snprintf(dst_id, CL_ID_MAX, "%s", to->primary.id);
    cl_map_free(m);
    assert_non_null(*src);
    assert_non_null(*dst);
}

/* SKU's stock as Redis holds it, read on its primary. */
static long long stock_of(const char *sku)
{
    char k[RDS_KEY_MAX];
    assert_true(keys_sku(k, H_PREFIX, H_PARTITIONS, "stock", sku) > 0);
    redisReply *r = h_redis_cmd(owner_of(sku), "GET %s", k);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_STRING)
        fail_msg("GET %s: %s", k, r->type == REDIS_REPLY_ERROR ? r->str : "not a string");
    long long v = strtoll(r->str, NULL, 10);
    freeReplyObject(r);
    return v;
}

static h_daemon *start_daemon(void)
{
    h_daemon *d = h_daemon_start(cl->nodes[0], "redis.mode=cluster", "redis.reconnect_max_ms=200",
                                 "redis.command_timeout_ms=1000", NULL);
    assert_non_null(d);
    return d;
}

static double metric(const h_daemon *d, const char *name, const char *label)
{
    char *m = H_METRICS(d);
    double v = h_metric(m, name, label);
    free(m);
    return v;
}

/* Units sold by the load L (order ids PREFIX-i): its 200s, plus every 503
 * settled by replaying its order_id (a 200 then, duplicate or not, means
 * the order is sold exactly once; 503 again after 10 s fails the test). */
static long long settle(const h_daemon *d, const h_load *l, const char *sku, const char *prefix)
{
    long long sold = 0;
    for (int i = 0; i < l->requests; i++) {
        const h_sale_rec *rec = &l->recs[i];
        if (!rec->sent)
            continue;
        if (rec->status == 200) {
            sold++;
            continue;
        }
        if (rec->status != 503)
            fail_msg("sale %s-%d answered %ld: %s", prefix, i, rec->status,
                     rec->body ? rec->body : "");
        char oid[64];
        snprintf(oid, sizeof oid, "%s-%d", prefix, i);
        double dl = h_deadline(10000);
        for (;;) {
            h_resp r;
            long st = h_sale(d, "/sale", sku, 1, oid, &r);
            h_resp_free(&r);
            if (st == 200) {
                sold++;
                break;
            }
            if (st != 503 || !h_before(dl))
                fail_msg("replaying order %s: %ld", oid, st);
            h_nap();
        }
    }
    return sold;
}

static redisReply *cmd_ok(h_redis *r, const char *what, redisReply *rep)
{
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        fail_msg("%s on port %d: %s", what, r->port, rep ? rep->str : "no reply");
    return rep;
}

/* ---- setup ------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    if (!(cl = h_cluster_start_replicas(3, 1, NODE_TIMEOUT_MS)))
        return -1;
    printf("# cluster of 3 primaries + 3 replicas started in %.2f s\n", cl->start_secs);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_cluster_free(cl);
    return 0;
}

/* ---- rds routing, through the library ------------------------------------------ */

static rds_client *router(void)
{
    return h_rds_client(cl->nodes[0], true);
}

static void expect_str(redisReply *r, const char *want, const char *what)
{
    if (!r || r->type != REDIS_REPLY_STRING || strcmp(r->str, want) != 0)
        fail_msg("%s: want \"%s\", got %s", what, want,
                 !r                             ? "NULL"
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "another reply");
    freeReplyObject(r);
}

/* Single commands, pipelines over every node, multi-key commands, scripts
 * (loaded on every node, again after a node forgot them), streams. */
static void test_rds_routes_by_slot(void **state)
{
    (void)state;
    rds_client *c = router();
    char k[64], v[32];
    int per_node[3] = { 0 };
    cl_map *m = map_now();
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof k, "rt:%d", i);
        snprintf(v, sizeof v, "%d", i * 7);
        redisReply *r = rds_command(c, "SET %s %s", k, v);
        if (!r || r->type != REDIS_REPLY_STATUS)
            fail_msg("SET %s: %s", k, r ? r->str : rds_errstr(c));
        freeReplyObject(r);
        per_node[cl_map_node_index(m, cl_keyslot(k, strlen(k)))]++;
    }
    cl_map_free(m);
    for (int i = 0; i < 3; i++)
        assert_true(per_node[i] > 0);
    /* A pipeline over the three nodes: replies in the order appended. */
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof k, "rt:%d", i);
        const char *argv[] = { "GET", k };
        assert_int_equal(rds_appendargv(c, 2, argv, NULL), 0);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(v, sizeof v, "%d", i * 7);
        expect_str(rds_get_reply(c), v, "pipelined GET");
    }
    /* Keys of two slots in one command: refused before sending. */
    redisReply *r = rds_command(c, "MGET rt:1 rt:2");
    assert_null(r);
    assert_int_equal(rds_outcome_unknown(c), 0);
    if (strncmp(rds_errstr(c), "CROSSSLOT", 9) != 0)
        fail_msg("MGET over two slots: \"%s\"", rds_errstr(c));
    r = rds_command(c, "MSET {rt}a 1 {rt}b 2");
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    /* A script on keys of every node; then one node forgets it. */
    static rds_script get = RDS_SCRIPT_INIT("return redis.call('GET', KEYS[1])");
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 300; i += 7) {
            snprintf(k, sizeof k, "rt:%d", i);
            snprintf(v, sizeof v, "%d", i * 7);
            const char *argv[] = { k };
            expect_str(rds_eval(c, &get, 1, 1, argv, NULL), v, "EVALSHA");
        }
        redisReply *f = h_redis_cmd(cl->nodes[1], "SCRIPT FLUSH");
        if (f)
            freeReplyObject(f);
    }
    /* Streams: the key after STREAMS. */
    r = rds_command(c, "XADD {p3}:rt-stream * f v");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    r = rds_command(c, "XGROUP CREATE {p3}:rt-stream g 0");
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = rds_command(c, "XREADGROUP GROUP g c1 COUNT 10 STREAMS {p3}:rt-stream >");
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 1)
        fail_msg("XREADGROUP: %s",
                 r ? (r->type == REDIS_REPLY_ERROR ? r->str : "not 1 stream") : rds_errstr(c));
    freeReplyObject(r);
    /* Per node: every primary answers, and holds some of the keys. */
    assert_int_equal(rds_cluster_nnodes(c), 3);
    long long total = 0;
    for (int i = 0; i < 3; i++) {
        const char *argv[] = { "DBSIZE" };
        r = rds_commandargv_node(c, i, 1, argv, NULL);
        assert_true(r && r->type == REDIS_REPLY_INTEGER && r->integer > 0);
        total += r->integer;
        freeReplyObject(r);
    }
    assert_true(total >= 300);
    char err[256];
    assert_int_equal(rds_cluster_check(c, err, sizeof err), 0);
    rds_client_free(c);
    h_pass();
}

/* CLUSTER SETSLOT SLOT NODE ID on every primary (replicas refuse: they
 * follow their primary), the target first. */
static void setslot_node(int slot, h_redis *dst, const char *dst_id)
{
    redisReply *r = h_redis_cmd(dst, "CLUSTER SETSLOT %d NODE %s", slot, dst_id);
    if (!r || r->type == REDIS_REPLY_ERROR)
        fail_msg("SETSLOT NODE on port %d: %s", dst->port, r ? r->str : "no reply");
    freeReplyObject(r);
    for (int i = 0; i < cl->n; i++) {
        if (cl->nodes[i] == dst || !cl->nodes[i]->pid)
            continue;
        r = h_redis_cmd(cl->nodes[i], "CLUSTER SETSLOT %d NODE %s", slot, dst_id);
        if (r)
            freeReplyObject(r);
    }
}

/* MIGRATE KEY from SRC to DST (the slot set MIGRATING/IMPORTING). */
static void migrate_key(h_redis *src, h_redis *dst, const char *key)
{
    redisReply *r = h_redis_cmd(src, "MIGRATE 127.0.0.1 %d %s 0 5000", dst->port, key);
    if (!r || r->type != REDIS_REPLY_STATUS)
        fail_msg("MIGRATE %s: %s", key, r ? r->str : "no reply");
    freeReplyObject(r);
}

/* A redirect answered inside a pipeline is resolved by sending that one
 * command again: ASK during a migration, then MOVED once the slot moved
 * and the client's map is stale; the replies stay in the order appended. */
static void test_rds_redirects_in_pipeline(void **state)
{
    (void)state;
    rds_client *c = router();
    const char *k1 = "{rtmv}k1", *k2 = "{rtmv}k2", *other = "rt:5";
    redisReply *r = rds_command(c, "MSET %s a %s b", k1, k2);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    int slot = cl_keyslot(k1, strlen(k1));
    h_redis *src, *dst;
    char src_id[CL_ID_MAX], dst_id[CL_ID_MAX];
    migration_ends(slot, &src, src_id, &dst, dst_id);

    redisReply *x = h_redis_cmd(dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, src_id);
    assert_true(x && x->type == REDIS_REPLY_STATUS);
    freeReplyObject(x);
    x = h_redis_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, dst_id);
    assert_true(x && x->type == REDIS_REPLY_STATUS);
    freeReplyObject(x);
    migrate_key(src, dst, k1);

    rds_cluster_stats before, after;
    rds_cluster_get_stats(&before);
    const char *g1[] = { "GET", k1 }, *g2[] = { "GET", k2 }, *g3[] = { "GET", other };
    assert_int_equal(rds_appendargv(c, 2, g1, NULL), 0); /* ASK: moved already */
    assert_int_equal(rds_appendargv(c, 2, g3, NULL), 0);
    assert_int_equal(rds_appendargv(c, 2, g2, NULL), 0); /* still on the source */
    expect_str(rds_get_reply(c), "a", "GET k1 (ASK)");
    expect_str(rds_get_reply(c), "35", "GET rt:5");
    expect_str(rds_get_reply(c), "b", "GET k2");
    rds_cluster_get_stats(&after);
    assert_true(after.ask > before.ask);

    migrate_key(src, dst, k2);
    setslot_node(slot, dst, dst_id);
    before = after;
    assert_int_equal(rds_appendargv(c, 2, g3, NULL), 0);
    assert_int_equal(rds_appendargv(c, 2, g2, NULL), 0); /* MOVED: the map is stale */
    assert_int_equal(rds_appendargv(c, 2, g1, NULL), 0);
    expect_str(rds_get_reply(c), "35", "GET rt:5");
    expect_str(rds_get_reply(c), "b", "GET k2 (MOVED)");
    expect_str(rds_get_reply(c), "a", "GET k1");
    rds_cluster_get_stats(&after);
    assert_true(after.moved > before.moved);
    assert_true(after.refreshes > before.refreshes);
    /* The map was fetched again: no more redirects. */
    before = after;
    expect_str(rds_command(c, "GET %s", k2), "b", "GET k2 after the refresh");
    rds_cluster_get_stats(&after);
    assert_true(after.moved == before.moved && after.ask == before.ask);
    printf("# slot %d moved from port %d to %d under a pipelining client: ASK and MOVED "
           "resolved in order\n",
           slot, src->port, dst->port);
    rds_client_free(c);
    h_pass();
}

/* ---- (a) stress over 1,000 SKUs ---------------------------------------------- */

static void test_stress_1000_skus(void **state)
{
    (void)state;
    h_daemon *d = start_daemon();
    const char *args[] = { "stress", "--url",      d->base,   "--sku",  "cs",
                           "--skus", "1000",       "--stock", "3",      "--clients",
                           "32",     "--requests", "4000",    "--json", NULL };
    const char *env[] = { "NERVE_ADMIN_TOKEN=" H_ADMIN_TOKEN, NULL };
    h_run r;
    h_run_nerve(&r, 180000, env, args);
    if (r.status != 0 || !r.json || h_jbool(r.json, "pass") != 1)
        fail_msg("nerve stress exited %d\nstdout:\n%s\nstderr:\n%s", r.status, r.out, r.err);
    long long ok, sold, unavailable, errors, final;
    assert_true(h_jll(r.json, "ok", &ok) && h_jll(r.json, "sold", &sold));
    assert_true(h_jll(r.json, "unavailable", &unavailable) && h_jll(r.json, "errors", &errors));
    assert_true(h_jll(r.json, "final_stock", &final));
    printf("# stress: ok %lld sold %lld unavailable %lld errors %lld final %lld\n", ok, sold,
           unavailable, errors, final);
    assert_int_equal(sold, 3000);
    assert_int_equal(final, 0);
    assert_int_equal(unavailable, 0);
    assert_int_equal(errors, 0);
    h_run_free(&r);

    /* The SKUs live on every primary, each sold out there. */
    cl_map *m = map_now();
    int per_node[3] = { 0 }, zero = 0;
    for (int i = 0; i < 1000; i++) {
        char sku[32];
        snprintf(sku, sizeof sku, "cs-%d", i);
        int ni = cl_map_node_index(m, sku_slot(sku));
        assert_true(ni >= 0 && ni < 3);
        per_node[ni]++;
        zero += stock_of(sku) == 0;
    }
    cl_map_free(m);
    printf("# SKUs per primary: %d %d %d; sold out: %d\n", per_node[0], per_node[1], per_node[2],
           zero);
    for (int i = 0; i < 3; i++)
        assert_true(per_node[i] > 0);
    assert_int_equal(zero, 1000);

    /* The ledger (SQLite, fed by the consumer groups that read every
     * node's partition streams) agrees with Redis: polled, since it is
     * written behind the sales. */
    char lpath[600], url[96], rurl[64];
    snprintf(lpath, sizeof lpath, "ledger.path=%s/ledger.db", cl->nodes[0]->dir);
    snprintf(url, sizeof url, "redis.url=%s", h_redis_url(cl->nodes[0], rurl, sizeof rurl));
    const char *verify[] = { "ledger", "verify", "-c",    "config/nerve.yaml",  "--set", lpath,
                             "--set",  url,      "--set", "redis.mode=cluster", NULL };
    double dl = h_deadline(60000);
    for (;;) {
        int st = h_run_nerve(&r, 60000, NULL, verify);
        if (st == 0) {
            printf("# ledger verify after 1,000 SKUs on 3 nodes: %s", r.out);
            h_run_free(&r);
            break;
        }
        if (!h_before(dl))
            fail_msg("nerve ledger verify: exit %d after 60 s\n%s%s", st, r.out, r.err);
        h_run_free(&r);
        h_nap();
    }
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* ---- (b) a slot migrated during load ------------------------------------------- */

static void test_slot_migration_under_load(void **state)
{
    (void)state;
    const char *sku = "mig-0";
    const long long initial = 1000000;
    h_daemon *d = start_daemon();
    H_SET_STOCK(d, sku, initial);
    int slot = sku_slot(sku);
    h_redis *src, *dst;
    char src_id[CL_ID_MAX], dst_id[CL_ID_MAX];
    migration_ends(slot, &src, src_id, &dst, dst_id);
    assert_non_null(src);
    assert_non_null(dst);

    h_load l = { .d = d,
                 .path = "/sale",
                 .sku = sku,
                 .qty = 1,
                 .order_prefix = "mig",
                 .clients = 8,
                 .requests = 4000 };
    assert_int_equal(h_load_start(&l), 0);
    double dl = h_deadline(30000);
    while (h_load_completed(&l) < 300 && h_before(dl))
        h_nap();
    assert_true(h_load_completed(&l) >= 300);

    /* The migration, as redis-cli --cluster reshard does it, one slot. */
    freeReplyObject(cmd_ok(dst, "SETSLOT IMPORTING",
                           h_redis_cmd(dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, src_id)));
    freeReplyObject(cmd_ok(src, "SETSLOT MIGRATING",
                           h_redis_cmd(src, "CLUSTER SETSLOT %d MIGRATING %s", slot, dst_id)));
    int moved_keys = 0, batches = 0;
    dl = h_deadline(30000);
    for (;;) {
        redisReply *ks = cmd_ok(src, "GETKEYSINSLOT",
                                h_redis_cmd(src, "CLUSTER GETKEYSINSLOT %d 20", slot));
        size_t n = ks->elements;
        if (n == 0) {
            freeReplyObject(ks);
            break;
        }
        const char *argv[32];
        size_t lens[32];
        char port[16];
        snprintf(port, sizeof port, "%d", dst->port);
        int k = 0;
        argv[k++] = "MIGRATE", argv[k++] = "127.0.0.1", argv[k++] = port, argv[k++] = "";
        argv[k++] = "0", argv[k++] = "5000", argv[k++] = "KEYS";
        for (size_t i = 0; i < n; i++)
            argv[k++] = ks->element[i]->str;
        for (int i = 0; i < k; i++)
            lens[i] = strlen(argv[i]);
        redisContext *c = h_redis_connect(src);
        assert_non_null(c);
        redisReply *mr = redisCommandArgv(c, k, argv, lens);
        if (!mr || (mr->type == REDIS_REPLY_ERROR && !strstr(mr->str, "NOKEY")))
            fail_msg("MIGRATE: %s", mr ? mr->str : c->errstr);
        freeReplyObject(mr);
        redisFree(c);
        moved_keys += (int)n;
        freeReplyObject(ks);
        /* A read of the SKU between batches: once its keys moved, the source
         * answers ASK for them; with some moved and some not, TRYAGAIN (a
         * 503, nothing read). */
        h_resp gr;
        char path[64];
        snprintf(path, sizeof path, "/stock/%s", sku);
        long gs = h_http(d, "GET", path, NULL, &gr, NULL);
        if (gs != 200 && !(gs == 503 && strstr(gr.body, "TRYAGAIN")))
            fail_msg("GET %s during the migration: %ld %s", path, gs, gr.body);
        h_resp_free(&gr);
        batches++;
        if (!h_before(dl))
            fail_msg("slot %d still has keys on port %d after 30 s", slot, src->port);
    }
    /* Slot ownership: the target first, then the source, then the rest. */
    freeReplyObject(
        cmd_ok(dst, "SETSLOT NODE", h_redis_cmd(dst, "CLUSTER SETSLOT %d NODE %s", slot, dst_id)));
    freeReplyObject(
        cmd_ok(src, "SETSLOT NODE", h_redis_cmd(src, "CLUSTER SETSLOT %d NODE %s", slot, dst_id)));
    for (int i = 0; i < cl->n; i++)
        if (cl->nodes[i] != src && cl->nodes[i] != dst) {
            redisReply *r = h_redis_cmd(cl->nodes[i], "CLUSTER SETSLOT %d NODE %s", slot, dst_id);
            if (r)
                freeReplyObject(r); /* a replica refuses: it follows its primary */
        }
    printf("# slot %d: %d keys moved from port %d to %d in %d batches, %d sales answered so far\n",
           slot, moved_keys, src->port, dst->port, batches, h_load_completed(&l));
    /* A sale after the move: its first try goes by the old map (MOVED). */
    h_resp r;
    long st = h_sale(d, "/sale", sku, 1, "mig-after", &r);
    h_resp_free(&r);
    assert_int_equal(st, 200);
    assert_int_equal(h_load_wait(&l), 0);

    long long sold = settle(d, &l, sku, "mig") + 1;
    long long final = stock_of(sku);
    double moved = metric(d, "nerve_redis_cluster_redirects_total", "moved"),
           ask = metric(d, "nerve_redis_cluster_redirects_total", "ask");
    printf("# %d sales: %d answered 200, %d 503 (settled by replay); sold %lld, stock %lld -> "
           "%lld; redirects moved %.0f ask %.0f\n",
           l.requests, l.by_status[200], l.by_status[503], sold, initial, final, moved, ask);
    assert_int_equal(owner_of(sku)->port, dst->port);
    assert_int_equal(initial - final, sold);
    assert_true(moved >= 1);
    assert_true(ask >= 1);
    h_load_free(&l);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* ---- the kill switch on a cluster ---------------------------------------------- */

/* The record (untagged: any node) and the index (PREFIXkills: another node)
 * cannot share a script on a cluster; engaged and reset by hand through the
 * API, both work, and a halted SKU answers 423 until the reset. */
static void test_kill_switch_on_cluster(void **state)
{
    (void)state;
    h_daemon *d = start_daemon();
    const char *sku = "ks-1";
    H_SET_STOCK(d, sku, 100);
    char rec_key[RDS_KEY_MAX], idx_key[RDS_KEY_MAX];
    snprintf(rec_key, sizeof rec_key, "%skill:sku:%s", H_PREFIX, sku);
    snprintf(idx_key, sizeof idx_key, "%skills", H_PREFIX);
    printf("# the record in slot %d, the index in slot %d\n", cl_keyslot(rec_key, strlen(rec_key)),
           cl_keyslot(idx_key, strlen(idx_key)));
    h_resp r;
    h_http(d, "POST", "/admin/killswitch",
           "{\"scope\":\"sku:ks-1\",\"reason\":\"cluster halt\",\"halt_sales\":true}", &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200)
        fail_msg("POST /admin/killswitch: expected 200, got %ld %s", r.status, r.body);
    h_resp_free(&r);
    assert_int_equal(h_sale(d, "/sale", sku, 1, NULL, &r), 423);
    h_resp_free(&r);
    assert_int_equal(h_http(d, "GET", "/killswitch", NULL, &r, NULL), 200);
    if (!strstr(r.body, "\"sku:ks-1\""))
        fail_msg("GET /killswitch does not list sku:ks-1: %s", r.body);
    h_resp_free(&r);
    /* Engaged again: already engaged, not a second record. */
    h_http(d, "POST", "/admin/killswitch",
           "{\"scope\":\"sku:ks-1\",\"reason\":\"again\",\"halt_sales\":true}", &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200 || h_jbool(r.json, "already_engaged") != 1)
        fail_msg("a second engagement: %ld %s", r.status, r.body);
    h_resp_free(&r);
    /* The first record stays, on the node of its slot. */
    cl_map *m = map_now();
    h_redis *node = h_cluster_node_at(cl, cl_map_node(m, cl_keyslot(rec_key, strlen(rec_key)))->primary.port);
    cl_map_free(m);
    assert_non_null(node);
    redisReply *rec = h_redis_cmd(node, "GET %s", rec_key);
    if (!rec || rec->type != REDIS_REPLY_STRING || !strstr(rec->str, "cluster halt"))
        fail_msg("the record %s: %s", rec_key, rec && rec->str ? rec->str : "absent");
    freeReplyObject(rec);
    h_http(d, "DELETE", "/admin/killswitch/sku:ks-1", NULL, &r,
           "Authorization: Bearer " H_ADMIN_TOKEN, NULL);
    if (r.status != 200)
        fail_msg("DELETE /admin/killswitch/sku:ks-1: expected 200, got %ld %s", r.status, r.body);
    h_resp_free(&r);
    assert_int_equal(h_sale(d, "/sale", sku, 1, NULL, &r), 200);
    h_resp_free(&r);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

/* ---- (c) a primary killed, its replica taking over ------------------------------- */

/* The replica of primary P's node entry (the first the map names). */
static h_redis *replica_of(const char *sku)
{
    cl_map *m = map_now();
    const cl_node *n = cl_map_node(m, sku_slot(sku));
    assert_true(n && n->nreplicas >= 1);
    h_redis *r = h_cluster_node_at(cl, n->replicas[0].port);
    cl_map_free(m);
    assert_non_null(r);
    return r;
}

static long long info_ll(h_redis *r, const char *field)
{
    redisReply *rep = h_redis_cmd(r, "INFO replication");
    assert_true(rep && rep->type == REDIS_REPLY_STRING);
    const char *p = strstr(rep->str, field);
    long long v = p ? strtoll(p + strlen(field), NULL, 10) : -1;
    freeReplyObject(rep);
    return v;
}

static void test_primary_killed_replica_takes_over(void **state)
{
    (void)state;
    const char *sku = "fo-0";
    const long long initial = 100000;
    h_daemon *d = start_daemon();
    H_SET_STOCK(d, sku, initial);
    h_redis *primary = owner_of(sku), *replica = replica_of(sku);

    h_load l1 = { .d = d,
                  .path = "/sale",
                  .sku = sku,
                  .qty = 1,
                  .order_prefix = "fo1",
                  .clients = 8,
                  .requests = 500 };
    assert_int_equal(h_load_run(&l1), 0);
    assert_int_equal(l1.by_status[200], 500);

    /* One key on each primary, for a pipeline over all three below. */
    char pkeys[3][32] = { "", "", "" };
    int dead_key = -1;
    {
        cl_map *m = map_now();
        int found = 0;
        for (int i = 0; found < 3 && i < 10000; i++) {
            char key[32];
            snprintf(key, sizeof key, "pl:%d", i);
            int ni = cl_map_node_index(m, cl_keyslot(key, strlen(key)));
            if (ni < 0 || ni > 2 || pkeys[ni][0])
                continue;
            snprintf(pkeys[ni], sizeof pkeys[ni], "%s", key);
            if (cl_map_node_at(m, ni)->primary.port == primary->port)
                dead_key = ni;
            found++;
        }
        cl_map_free(m);
        assert_true(found == 3 && dead_key >= 0);
        rds_client *c = router();
        for (int i = 0; i < 3; i++) {
            redisReply *r = rds_command(c, "SET %s v", pkeys[i]);
            assert_true(r && r->type == REDIS_REPLY_STATUS);
            freeReplyObject(r);
        }
        rds_client_free(c);
    }

    /* Replication is asynchronous: the kill comes once the replica holds
     * every acknowledged sale (what a failover loses otherwise: README). */
    double dl = h_deadline(10000);
    while (info_ll(replica, "slave_repl_offset:") < info_ll(primary, "master_repl_offset:")) {
        if (!h_before(dl))
            fail_msg("the replica on port %d did not catch up within 10 s", replica->port);
        h_nap();
    }
    pid_t pid = primary->pid;
    assert_int_equal(kill(pid, SIGKILL), 0);
    waitpid(pid, NULL, 0);
    primary->pid = 0;
    if (primary->ctx) {
        redisFree(primary->ctx);
        primary->ctx = NULL;
    }
    double t0 = h_now();

    /* A pipeline over the three primaries, one of them dead: the dead one's
     * command is answered by an error of rds' own (not sent), the others by
     * their nodes (the value, or CLUSTERDOWN once the cluster noticed):
     * one dead node does not fail the other nodes' commands. */
    {
        h_redis *seed = replica; /* alive, and knows the map */
        rds_client *c = h_rds_client(seed, true);
        for (int i = 0; i < 3; i++) {
            const char *argv[] = { "GET", pkeys[i] };
            assert_int_equal(rds_appendargv(c, 2, argv, NULL), 0);
        }
        for (int i = 0; i < 3; i++) {
            redisReply *r = rds_get_reply(c);
            if (!r)
                fail_msg("pipelined GET %s: NULL (%s)", pkeys[i], rds_errstr(c));
            int ok = r->type == REDIS_REPLY_STRING ||
                     (r->type == REDIS_REPLY_ERROR && strstr(r->str, "CLUSTERDOWN"));
            if (i == dead_key && r->type == REDIS_REPLY_ERROR && strstr(r->str, "UNREACHABLE"))
                ok = 1;
            if (!ok)
                fail_msg("pipelined GET %s (%s node): %s", pkeys[i],
                         i == dead_key ? "dead" : "live",
                         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            if (i == dead_key)
                printf("# pipelined GET on the dead node: %s\n",
                       r->type == REDIS_REPLY_ERROR ? r->str : r->str);
            freeReplyObject(r);
        }
        rds_client_free(c);
    }

    /* One sale at a time until one is answered 200 again; /readyz asked
     * between them must say not ready at some point. */
    int n503 = 0, retry_after = 0, k = 0, unready = 0, cluster_unready = 0;
    char why[300] = "";
    char oid[64];
    dl = h_deadline(RECOVERY_BOUND_MS);
    for (;; k++) {
        h_resp r;
        snprintf(oid, sizeof oid, "fo2-%d", k);
        long st = h_sale(d, "/sale", sku, 1, oid, &r);
        if (st == 503) {
            n503++;
            char v[32];
            retry_after += h_header(&r, "Retry-After", v, sizeof v);
        }
        h_resp_free(&r);
        if (st == 200)
            break;
        if (st != 503)
            fail_msg("sale %s during the failover answered %ld", oid, st);
        if (h_http(d, "GET", "/readyz", NULL, &r, NULL) == 503) {
            if (!unready++)
                snprintf(why, sizeof why, "%s", r.body);
            cluster_unready += strstr(r.body, "\"redis_cluster_ok\":false") != NULL;
        }
        h_resp_free(&r);
        if (!h_before(dl))
            fail_msg("no sale answered within %d ms of the kill (%d answered 503)",
                     RECOVERY_BOUND_MS, n503);
        h_nap();
    }
    double recovery = h_now() - t0;
    printf("# primary on port %d killed: %d sales answered 503 (%d with Retry-After), the first "
           "200 after %.2f s; the replica on port %d is the primary now\n",
           primary->port, n503, retry_after, recovery, replica->port);
    printf("# /readyz answered 503 %d times meanwhile, first: %.200s\n", unready, why);
    assert_true(n503 >= 1);
    assert_true(unready >= 1);
    assert_true(cluster_unready >= 1);
    assert_int_equal(retry_after, n503);
    /* Every node learns of the promotion by gossip: the one asked may still
     * name the dead primary for a moment after nerve sold through the new. */
    dl = h_deadline(10000);
    while (owner_of(sku)->port != replica->port) {
        if (!h_before(dl))
            fail_msg("the cluster still names port %d for %s 10 s after the failover",
                     owner_of(sku)->port, sku);
        h_nap();
    }

    /* Ready again (every slot served, cluster_state:ok). */
    dl = h_deadline(RECOVERY_BOUND_MS);
    for (;;) {
        h_resp r;
        long st = h_http(d, "GET", "/readyz", NULL, &r, NULL);
        h_resp_free(&r);
        if (st == 200)
            break;
        if (!h_before(dl))
            fail_msg("/readyz still %ld %d ms after the failover", st, RECOVERY_BOUND_MS);
        h_nap();
    }

    h_load l3 = { .d = d,
                  .path = "/sale",
                  .sku = sku,
                  .qty = 1,
                  .order_prefix = "fo3",
                  .clients = 8,
                  .requests = 500 };
    assert_int_equal(h_load_run(&l3), 0);

    /* The 503s of the failover settled: each replayed until answered. */
    long long sold = 500 + 1 + settle(d, &l3, sku, "fo3");
    for (int i = 0; i < k; i++) {
        h_resp r;
        snprintf(oid, sizeof oid, "fo2-%d", i);
        long st = h_sale(d, "/sale", sku, 1, oid, &r);
        h_resp_free(&r);
        assert_int_equal(st, 200);
        sold++;
    }
    long long final = stock_of(sku);
    printf("# sold %lld, stock %lld -> %lld; map refreshes %.0f\n", sold, initial, final,
           metric(d, "nerve_redis_cluster_map_refreshes_total", "ok"));
    assert_int_equal(initial - final, sold);
    h_load_free(&l1);
    h_load_free(&l3);
    assert_int_equal(h_daemon_stop(d), 0);
    h_pass();
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_test_setup, h_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_rds_routes_by_slot),
        T(test_rds_redirects_in_pipeline),
        T(test_stress_1000_skus),
        T(test_slot_migration_under_load),
        T(test_kill_switch_on_cluster),
        T(test_primary_killed_replica_takes_over), /* last: it kills a node */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
